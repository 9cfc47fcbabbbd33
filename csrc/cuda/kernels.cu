// Every op's CUDA kernels (TORCH_LIBRARY_IMPL ... CUDA), registered by walking the op table.
#include <torch/library.h>

#include "loops.cuh"

namespace torchext {
namespace cuda {
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
}  // namespace cuda

TORCH_LIBRARY_IMPL(torchext, CUDA, m) {
#define TORCHEXT_REGISTER(name, Op) cuda::register_kernels<math::Op>(m);
  TORCHEXT_OPS(TORCHEXT_REGISTER)
#undef TORCHEXT_REGISTER
}

}  // namespace torchext
