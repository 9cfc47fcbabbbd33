// cubic on the CPU: y = a + b·x + c·x² + d·x³ (math in math.h::CubicOp).
#include <torch/library.h>

#include "loops.h"

namespace torchext {
namespace {

constexpr const char* kOp = "torchext.cubic";

at::Tensor cubic(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                 const at::Tensor& d) {
  return cpu::coef_forward<math::CubicOp>(kOp, x, a, b, c, d);
}

cpu::Grads5 cubic_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& a,
                           const at::Tensor& b, const at::Tensor& c, const at::Tensor& d) {
  return cpu::coef_backward<math::CubicOp>(kOp, grad, x, a, b, c, d);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
  m.impl("cubic", &cubic);
  m.impl("cubic_backward", &cubic_backward);
}

}  // namespace torchext
