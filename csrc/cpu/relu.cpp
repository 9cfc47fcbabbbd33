// relu on the CPU, bit for bit as torch.relu (math in math.h::ReLUOp). The backward reads the
// saved result, not x: the same bytes, and it lets autograd free x when nothing else needs it.
#include <torch/library.h>

#include "loops.h"

namespace torchext {
namespace {

constexpr const char* kOp = "torchext.relu";

at::Tensor relu(const at::Tensor& x) { return cpu::unary_forward<math::ReLUOp>(kOp, x); }

at::Tensor relu_backward(const at::Tensor& grad, const at::Tensor& result) {
  return cpu::unary_backward<math::ReLUOp>(kOp, grad, result, "result");
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
  m.impl("relu", &relu);
  m.impl("relu_backward", &relu_backward);
}

}  // namespace torchext
