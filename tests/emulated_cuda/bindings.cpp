// Python bindings of csrc/cuda/loops.cuh's Kernels<Op>, emulated on the CPU (shim.h): the
// same host driver and kernels the CUDA build compiles, called with CPU tensors. build.py puts the
// transformed loops.cuh above this file.
#include <torch/extension.h>

namespace {

using torchext::cuda::Kernels;

template <class Op, size_t N = torchext::kNumCoefs<Op>>
std::array<at::Tensor, N> coef_array(const std::vector<at::Tensor>& coefs) {
  TORCH_CHECK(coefs.size() == N, "expected ", N, " coefficients");
  std::array<at::Tensor, N> a;
  std::copy(coefs.begin(), coefs.end(), a.begin());
  return a;
}

template <class Op>
at::Tensor forward(const at::Tensor& x, const std::vector<at::Tensor>& coefs, bool inplace) {
  if (!inplace) return Kernels<Op>::forward(x, coef_array<Op>(coefs));
  Kernels<Op>::inplace(x, coef_array<Op>(coefs));
  return x;
}

template <class Op>
std::vector<at::Tensor> backward(const at::Tensor& grad, const at::Tensor& v,
                                 const std::vector<at::Tensor>& coefs,
                                 const std::vector<bool>& wanted) {
  constexpr int N = torchext::kNumCoefs<Op>;
  std::array<bool, N + 1> mask;
  TORCH_CHECK(wanted.size() == mask.size(), "expected ", mask.size(), " mask entries");
  std::copy(wanted.begin(), wanted.end(), mask.begin());
  const auto out = Kernels<Op>::backward(grad, v, coef_array<Op>(coefs), mask);
  return {out.begin(), out.end()};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", [](const std::string& op, const at::Tensor& x,
                      const std::vector<at::Tensor>& coefs, bool inplace) {
#define TORCHEXT_EMULATED(name, Op) \
  if (op == #name) return forward<torchext::math::Op>(x, coefs, inplace);
    TORCHEXT_OPS(TORCHEXT_EMULATED)
#undef TORCHEXT_EMULATED
    TORCH_CHECK(false, "no op ", op);
  });
  m.def("backward", [](const std::string& op, const at::Tensor& grad, const at::Tensor& v,
                       const std::vector<at::Tensor>& coefs, const std::vector<bool>& wanted) {
#define TORCHEXT_EMULATED(name, Op) \
  if (op == #name) return backward<torchext::math::Op>(grad, v, coefs, wanted);
    TORCHEXT_OPS(TORCHEXT_EMULATED)
#undef TORCHEXT_EMULATED
    TORCH_CHECK(false, "no op ", op);
  });
}
