// Every op's CPU kernels (TORCH_LIBRARY_IMPL ... CPU), registered by walking the op table.
#include <torch/library.h>

#include "loops.h"

namespace torchext {
namespace cpu {
namespace {

template <class Op>
void register_kernels(torch::Library& m) {
  using S = Signature<Op>;
  m.impl(OpName<Op>::kName, &S::template forward<Kernels<Op>>);
  m.impl((std::string(OpName<Op>::kName) + "_backward").c_str(),
         &S::template backward<Kernels<Op>>);
  if constexpr (kInplace<Op>) {
    m.impl((std::string(OpName<Op>::kName) + "_").c_str(), &S::template inplace<Kernels<Op>>);
  }
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
#define TORCHEXT_REGISTER(name, Op) cpu::register_kernels<math::Op>(m);
  TORCHEXT_OPS(TORCHEXT_REGISTER)
#undef TORCHEXT_REGISTER
}

}  // namespace torchext
