// Every operator's Meta kernel (TORCH_LIBRARY_IMPL ... Meta), walking the op table: what the
// operators return for tensors without data, with the real kernels' checks and result layouts
// (layout.cpp, in SymInts). torch.compile, torch.export and FakeTensor run them, symbolic shapes
// included; they are in the library, so a process that only loads it (torch.ops.load_library,
// or a C++ program) has them too.
#include <torch/library.h>

#include <array>

#include "layout.h"
#include "ops.h"

namespace torchext {
namespace {

template <class Op>
struct MetaKernels {
  static constexpr int N = kNumCoefs<Op>;
  using Coefs = std::array<at::Tensor, N>;

  static CoefArgs args(const Coefs& coefs) { return {coefs.data(), Op::kCoefs.data(), N}; }

  static at::Tensor forward(const at::Tensor& x, const Coefs& coefs) {
    return meta_forward(OpName<Op>::kQualified, x, args(coefs), kIntegral<Op>);
  }
  static void inplace(const at::Tensor& x, const Coefs& coefs) {
    meta_forward(OpName<Op>::kQualified, x, args(coefs), kIntegral<Op>, /*inplace=*/true);
  }
  static std::array<at::Tensor, N + 1> backward(const at::Tensor& grad, const at::Tensor& v,
                                                const Coefs& coefs,
                                                const std::array<bool, N + 1>& wanted) {
    std::array<at::Tensor, N + 1> out;
    meta_backward(OpName<Op>::kQualified, grad, v, kSavedName<Op>, args(coefs), wanted.data(),
                  out.data());
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torchext, Meta, m) {
#define TORCHEXT_REGISTER(name, Op) register_kernels<MetaKernels, math::Op>(m);
  TORCHEXT_OPS(TORCHEXT_REGISTER)
#undef TORCHEXT_REGISTER
}

}  // namespace torchext
