// affine_legendre_p3 on CUDA: y = a + b·P3(c + d·x) (math in math.h::AffineLegendreP3Op).
#include <torch/library.h>

#include "loops.cuh"

namespace torchext {
namespace {

constexpr const char* kOp = "torchext.affine_legendre_p3";

at::Tensor affine_legendre_p3(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b,
                              const at::Tensor& c, const at::Tensor& d) {
  return cuda::coef_forward<math::AffineLegendreP3Op>(kOp, x, a, b, c, d);
}

cuda::Grads5 affine_legendre_p3_backward(const at::Tensor& grad, const at::Tensor& x,
                                         const at::Tensor& a, const at::Tensor& b,
                                         const at::Tensor& c, const at::Tensor& d) {
  return cuda::coef_backward<math::AffineLegendreP3Op>(kOp, grad, x, a, b, c, d);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, CUDA, m) {
  m.impl("affine_legendre_p3", &affine_legendre_p3);
  m.impl("affine_legendre_p3_backward", &affine_legendre_p3_backward);
}

}  // namespace torchext
