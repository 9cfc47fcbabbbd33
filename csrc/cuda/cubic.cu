// cubic on CUDA: y = a + b·x + c·x² + d·x³ (math in math.h::CubicOp).
#include <torch/library.h>

#include "loops.cuh"

namespace torchext {
namespace {

constexpr const char* kOp = "torchext.cubic";

at::Tensor cubic(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                 const at::Tensor& d) {
  return cuda::coef_forward<math::CubicOp>(kOp, x, a, b, c, d);
}

cuda::Grads5 cubic_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& a,
                            const at::Tensor& b, const at::Tensor& c, const at::Tensor& d) {
  return cuda::coef_backward<math::CubicOp>(kOp, grad, x, a, b, c, d);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, CUDA, m) {
  m.impl("cubic", &cubic);
  m.impl("cubic_backward", &cubic_backward);
}

}  // namespace torchext
