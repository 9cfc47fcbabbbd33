// Every op's CPU kernels (TORCH_LIBRARY_IMPL ... CPU), registered by walking the op table.
#include <torch/library.h>

#include "loops.h"

namespace torchext {

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
#define TORCHEXT_REGISTER(name, Op) register_kernels<cpu::Kernels, math::Op>(m);
  TORCHEXT_OPS(TORCHEXT_REGISTER)
#undef TORCHEXT_REGISTER
}

}  // namespace torchext
