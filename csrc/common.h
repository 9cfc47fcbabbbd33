// Host-side set-up shared by every kernel, CPU and CUDA: the input checks (one place, so every op
// and backend reports bad input in the same words) and the allocation of the outputs. A kernel
// calls prepare_*, then only dispatches on dtype and runs its loop.
//
// Layout: the kernels work on dense row-major memory (x itself when it already is, else a
// copy) and every result is contiguous; the fake kernels in functional.py say the same.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>

#include "math.h"

namespace torchext {

// A forward: y = f(x [; a, b, c, d]).
struct Forward {
  at::Tensor x, y;
  math::Coefs coefs{};
};

// A backward: dx = f'(g, v [; a, b, c, d]) where v is what the forward saved (x, or the result),
// plus, for the ops with coefficients, their four gradients (shaped and typed like them).
struct Backward {
  at::Tensor g, v, dx;
  math::Coefs coefs{};
  math::CoefGrads coef_out{};
  std::array<at::Tensor, 4> coef_grads;
};

Forward prepare_forward(const char* op, const at::Tensor& x);
Forward prepare_forward(const char* op, const at::Tensor& x, const at::Tensor& a,
                        const at::Tensor& b, const at::Tensor& c, const at::Tensor& d);
Backward prepare_backward(const char* op, const at::Tensor& grad, const at::Tensor& v,
                          const char* v_name);
Backward prepare_backward(const char* op, const at::Tensor& grad, const at::Tensor& x,
                          const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                          const at::Tensor& d);

}  // namespace torchext
