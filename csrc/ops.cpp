// Every torchext operator's schema, defined once. Each backend registers its kernels in
// cpu/<op>.cpp and cuda/<op>.cu, the derivatives are registered in autograd.cpp, and the fake
// (meta) kernels are in torchext/functional.py. Importing torchext._C runs the registrations below.
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <atomic>
#include <string>

#include "cpu/isa.h"

#ifndef TORCHEXT_CUDA_ARCHS
#define TORCHEXT_CUDA_ARCHS ""
#endif

extern "C" {
// The _C module has no Python functions of its own: its import loads the library, which
// registers the operators with the dispatcher (as pytorch/extension-cpp does).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

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

TORCH_LIBRARY(torchext, m) {
  m.def("cubic(Tensor x, Tensor a, Tensor b, Tensor c, Tensor d) -> Tensor");
  m.def(
      "cubic_backward(Tensor grad, Tensor x, Tensor a, Tensor b, Tensor c, Tensor d)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("legendre_p3(Tensor x) -> Tensor");
  m.def("legendre_p3_backward(Tensor grad, Tensor x) -> Tensor");
  m.def("affine_legendre_p3(Tensor x, Tensor a, Tensor b, Tensor c, Tensor d) -> Tensor");
  m.def(
      "affine_legendre_p3_backward(Tensor grad, Tensor x, Tensor a, Tensor b, Tensor c, Tensor d)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("relu(Tensor x) -> Tensor");
  m.def("relu_backward(Tensor grad, Tensor result) -> Tensor");
  m.def("_build_info() -> str", &build_info);
  m.def("_parallel_threads() -> int", &parallel_threads);
}

}  // namespace torchext
