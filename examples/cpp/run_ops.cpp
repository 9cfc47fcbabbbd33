// Every torchext operator, forward and backward, from C++ with libtorch alone (no Python): the
// library is loaded at run time, its static initializers register the operators with the
// dispatcher, and each is found by name and called; autograd differentiates it as any op.
//
//   g++ -std=c++20 run_ops.cpp -o run_ops -I$TORCH/include \
//       -I$TORCH/include/torch/csrc/api/include -L$TORCH/lib -Wl,-rpath,$TORCH/lib \
//       -Wl,--no-as-needed -ltorch -ltorch_cpu -lc10 -ldl
//   ./run_ops "$(python -c 'import torchext; print(torchext.library_path())')"
//
// ($TORCH: python -c 'import torch, os; print(os.path.dirname(torch.__file__))'; --no-as-needed
// keeps libtorch.so loaded, which libraries opened later, such as an AOTInductor model, look
// for by name.) It prints, per op: the sums of y and of each gradient, for
// x = linspace(-1, 1, 11) and coefficients of 0.5.
// tests/test_cpp.py builds and runs it, and compares with the same calls from Python.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>

#include <dlfcn.h>

#include <cstdio>
#include <string>
#include <vector>

namespace {

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The operators that are ops (torchext::<name>, with a torchext::<name>_backward), not their
// backward and second-order operators or the in-place forms.
std::vector<c10::OperatorHandle> forward_operators() {
  auto& dispatcher = c10::Dispatcher::singleton();
  std::vector<c10::OperatorHandle> ops;
  for (const c10::OperatorName& name : dispatcher.getAllOpNames()) {
    if (name.name.rfind("torchext::", 0) != 0 || ends_with(name.name, "_backward")) continue;
    if (dispatcher.findOp({name.name + "_backward", ""}).has_value()) {
      ops.push_back(*dispatcher.findOp(name));
    }
  }
  return ops;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s PATH_OF_TORCHEXT_LIBRARY\n", argv[0]);
    return 2;
  }
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 1;
  }
  const std::vector<c10::OperatorHandle> ops = forward_operators();
  if (ops.empty()) {
    std::fprintf(stderr, "no torchext operators registered by %s\n", argv[1]);
    return 1;
  }
  for (const c10::OperatorHandle& op : ops) {
    // x, then one coefficient per further argument of the schema.
    std::vector<at::Tensor> inputs{at::linspace(-1, 1, 11, at::kDouble).requires_grad_()};
    for (size_t i = 1; i < op.schema().arguments().size(); ++i) {
      inputs.push_back(at::full({}, 0.5, at::kDouble).requires_grad_());
    }
    std::vector<c10::IValue> stack(inputs.begin(), inputs.end());
    op.callBoxed(&stack);
    const at::Tensor y = stack.at(0).toTensor();
    const auto grads = torch::autograd::grad({y.sum()}, inputs);
    std::printf("%s %.12g", op.schema().name().c_str(), y.sum().item<double>());
    for (const at::Tensor& g : grads) std::printf(" %.12g", g.sum().item<double>());
    std::printf("\n");
  }
  return 0;
}
