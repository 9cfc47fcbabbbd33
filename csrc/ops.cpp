// Every torchext operator's schema, defined once from the op table (ops.h): <name> and
// <name>_backward, and <name>_second_order (the backward's own backward, from ATen ops). The
// backends register their kernels in cpu/kernels.cpp and cuda/kernels.cu, the derivatives and
// the second-order operator are registered in autograd.cpp, and the Meta kernels (shapes only, for
// torch.compile, export and meta tensors) in meta.cpp. Loading the library (torch.ops.load_library,
// dlopen, or linking it) runs the registrations below.
//
// The library needs no Python: no Python symbol is referenced here and setup.py does not link
// libtorch_python, so a C++ program with libtorch alone can load it (examples/cpp/). torchext's
// Python package loads it with torch.ops.load_library, as torchvision loads its own.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <string>

#include "cpu/isa.h"
#include "layout.h"
#include "ops.h"

#ifndef TORCHEXT_CUDA_ARCHS
#define TORCHEXT_CUDA_ARCHS ""
#endif

namespace torchext {
namespace {

// What this binary was built with, for `python -m torchext info` and the tests.
std::string build_info() {
  std::string info = "cuda_archs=" TORCHEXT_CUDA_ARCHS;
#ifdef _OPENMP
  info += ";openmp=1";
#else
  info += ";openmp=0";
#endif
  info += ";cpu_isa=";
  info += cpu::isa_name();
  return info;
}

// The number of distinct threads that ran the tasks of one at::parallel_for here: proves that
// this extension's parallel_for really is parallel (it silently runs serially when compiled
// without OpenMP).
int64_t parallel_threads() {
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, 64 * at::get_num_threads(), 1,
                   [&](int64_t, int64_t) { seen |= uint64_t{1} << (at::get_thread_num() % 64); });
  return __builtin_popcountll(seen.load());
}

}  // namespace

// Tensors that are not dense (sparse, quantized, strided nested) dispatch to keys of their own: a
// kernel there runs the real kernels' checks, which name the op and the argument that is wrong.
template <class Op>
struct Refuse {
  static constexpr int N = kNumCoefs<Op>;
  static at::Tensor forward(const at::Tensor& x, const std::array<at::Tensor, N>& coefs) {
    prepare_forward(OpName<Op>::kQualified, x, {coefs.data(), Op::kCoefs.data(), N}, kIntegral<Op>);
    TORCH_CHECK(false, OpName<Op>::kQualified, ": unsupported tensor type");
  }
  static std::array<at::Tensor, N + 1> backward(const at::Tensor& grad, const at::Tensor& v,
                                                const std::array<at::Tensor, N>& coefs,
                                                const std::array<bool, N + 1>&) {
    prepare_backward(OpName<Op>::kQualified, grad, v, kSavedName<Op>,
                     {coefs.data(), Op::kCoefs.data(), N}, kBackwardReads<Op>);
    TORCH_CHECK(false, OpName<Op>::kQualified, ": unsupported tensor type");
  }
  static void inplace(const at::Tensor& x, const std::array<at::Tensor, N>& coefs) {
    forward(x, coefs);
  }
};

constexpr c10::DispatchKey kNotDense[] = {
    c10::DispatchKey::SparseCPU,       c10::DispatchKey::SparseCUDA,
    c10::DispatchKey::SparseCsrCPU,    c10::DispatchKey::SparseCsrCUDA,
    c10::DispatchKey::QuantizedCPU,    c10::DispatchKey::QuantizedCUDA,
    c10::DispatchKey::NestedTensorCPU, c10::DispatchKey::NestedTensorCUDA};

template <class Op>
void define_op(torch::Library& m) {
  using S = Signature<Op>;
  const std::string name = OpName<Op>::kName, backward = name + "_backward";
  m.def(forward_schema<Op>(name).c_str());
  m.def(backward_schema<Op>(name).c_str());
  m.def(second_order_schema<Op>(name).c_str());
  if constexpr (kInplace<Op>) m.def(inplace_schema<Op>(name).c_str());
  for (const auto key : kNotDense) {
    m.impl(name.c_str(), torch::dispatch(key, &S::template forward<Refuse<Op>>));
    m.impl(backward.c_str(), torch::dispatch(key, S::template backward_kernel<Refuse<Op>>()));
    if constexpr (kInplace<Op>) {
      m.impl((name + "_").c_str(), torch::dispatch(key, &S::template inplace<Refuse<Op>>));
    }
  }
}

TORCH_LIBRARY(torchext, m) {
#define TORCHEXT_DEFINE(name, Op) define_op<math::Op>(m);
  TORCHEXT_OPS(TORCHEXT_DEFINE)
#undef TORCHEXT_DEFINE
  m.def("_build_info() -> str", &build_info);
  m.def("_parallel_threads() -> int", &parallel_threads);
}

}  // namespace torchext
