// Every op's CUDA kernels (TORCH_LIBRARY_IMPL ... CUDA), registered by walking the op table.
#include <torch/library.h>

#include "loops.cuh"

namespace torchext {

TORCH_LIBRARY_IMPL(torchext, CUDA, m) {
#define TORCHEXT_REGISTER(name, Op) register_kernels<cuda::Kernels, math::Op>(m);
  TORCHEXT_OPS(TORCHEXT_REGISTER)
#undef TORCHEXT_REGISTER
}

}  // namespace torchext
