// An AOTInductor package of a model that uses torchext ops, run from C++ with libtorch alone (no
// Python): load torchext's library first (its operators, which the compiled model calls), then
// the package.
//
//   g++ -std=c++20 run_aoti.cpp -o run_aoti (the include and library flags of run_ops.cpp)
//   ./run_aoti LIBRARY PACKAGE.pt2 N
//
// Runs the model on x = linspace(-2, 2, N) and prints the sum of its output.
// tests/test_deploy.py makes the package (torch._inductor.aoti_compile_and_package), builds this
// and compares with the model run in Python.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s LIBRARY PACKAGE.pt2 N\n", argv[0]);
    return 2;
  }
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 1;
  }
  torch::inductor::AOTIModelPackageLoader loader(argv[2]);
  const std::vector<at::Tensor> inputs{at::linspace(-2, 2, std::atoll(argv[3]))};
  const std::vector<at::Tensor> outputs = loader.run(inputs);
  std::printf("%.9g\n", outputs.at(0).sum().item<double>());
  return 0;
}
