// legendre_p3 on CUDA: P3(x) = ½(5x³ − 3x) (math in math.h::LegendreP3Op).
#include <torch/library.h>

#include "loops.cuh"

namespace torchext {
namespace {

constexpr const char* kOp = "torchext.legendre_p3";

at::Tensor legendre_p3(const at::Tensor& x) {
  return cuda::unary_forward<math::LegendreP3Op>(kOp, x);
}

at::Tensor legendre_p3_backward(const at::Tensor& grad, const at::Tensor& x) {
  return cuda::unary_backward<math::LegendreP3Op>(kOp, grad, x, "x");
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, CUDA, m) {
  m.impl("legendre_p3", &legendre_p3);
  m.impl("legendre_p3_backward", &legendre_p3_backward);
}

}  // namespace torchext
