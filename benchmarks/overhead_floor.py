"""How fast can any op be at the tutorial's size? The floor of autograd's own work, measured.

    python benchmarks/overhead_floor.py [--n 2000] [--rounds 9] [--min-run-time 2]

At n = 2000 a forward + ``torch.autograd.grad`` is nearly all overhead, paid by every contender:
the Python of ``torch.autograd.grad``, the engine, one node and its edges, a gradient per input.
This script builds (``load_inline``, ~30 s) *null* operators, with cubic's signature (x, a, b, c, d)
and legendre_p3's (x), whose kernels only allocate their outputs, and differentiates each in two
ways:

- ``Function``: a ``torch::autograd::Function``, the public C++ API, as ``csrc/autograd.cpp`` uses;
- ``Node``: a hand-written ``torch::autograd::Node`` saved into the graph with ``set_history``, as
  torch's generated code does. Internal API: its pointer type changed (``shared_ptr`` to
  ``intrusive_ptr``) between torch releases, and compiled autograd needs more internals
  (``compiled_args``, ``apply_with_saved``) that this null node does not have.

It times them beside torchext's and the tutorial's versions, the contenders taking turns
(``torchext.bench._time_rounds``), and prints a markdown table. tutorial / null is the best speedup
over the tutorial that an op differentiated that way could reach with free kernels.
benchmarks/NOTES.md §6 has a run and what it means.
"""

import argparse
import statistics

import torch
from torch.utils.cpp_extension import load_inline

import torchext
from torchext.bench import _time_rounds
from torchext.reference import TUTORIAL

SOURCE = r"""
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <type_traits>

namespace {
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using G5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using F5 = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&);
using B5 = G5(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
              const Tensor&);
using F1 = Tensor(const Tensor&);
using B1 = Tensor(const Tensor&, const Tensor&);

// The null kernels: allocate the outputs, compute nothing.
Tensor fwd5(const Tensor& x, const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  return at::empty_like(x);
}
G5 bwd5(const Tensor&, const Tensor& x, const Tensor& a, const Tensor& b, const Tensor& c,
        const Tensor& d) {
  return {at::empty_like(x), at::empty_like(a), at::empty_like(b), at::empty_like(c),
          at::empty_like(d)};
}
Tensor fwd1(const Tensor& x) { return at::empty_like(x); }
Tensor bwd1(const Tensor&, const Tensor& x) { return at::empty_like(x); }

template <class S, const char* Name>
const c10::TypedOperatorHandle<S>& op() {
  static const auto h =
      c10::Dispatcher::singleton().findSchemaOrThrow(Name, "").template typed<S>();
  return h;
}
template <class S, const char* Name, class... A>
auto below(const A&... a) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op<S, Name>().call(a...);
}
variable_list list(const G5& t) {
  return {std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t), std::get<4>(t)};
}

constexpr char kF5[] = "null_ops::f5", kN5[] = "null_ops::n5", kB5[] = "null_ops::b5";
constexpr char kF1[] = "null_ops::f1", kN1[] = "null_ops::n1", kB1[] = "null_ops::b1";

// ---- torch::autograd::Function (public API) ----
struct Function5 : torch::autograd::Function<Function5> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& a, const Tensor& b,
                        const Tensor& c, const Tensor& d) {
    ctx->save_for_backward({x, a, b, c, d});
    return below<F5, kF5>(x, a, b, c, d);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const auto s = ctx->get_saved_variables();
    return list(op<B5, kB5>().call(g[0], s[0], s[1], s[2], s[3], s[4]));
  }
};
struct Function1 : torch::autograd::Function<Function1> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x) {
    ctx->save_for_backward({x});
    return below<F1, kF1>(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {op<B1, kB1>().call(g[0], ctx->get_saved_variables()[0])};
  }
};
Tensor function5(const Tensor& x, const Tensor& a, const Tensor& b, const Tensor& c,
                 const Tensor& d) {
  return Function5::apply(x, a, b, c, d);
}
Tensor function1(const Tensor& x) { return Function1::apply(x); }

// ---- hand-written Node (internal API) ----
template <class T>
auto make_node() {  // the graph's pointer type: std::shared_ptr in older torch, intrusive after
  using Ptr = decltype(torch::autograd::Edge::function);
  if constexpr (std::is_same_v<Ptr, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<T>();
  } else {
    return c10::make_intrusive<T>();
  }
}
struct Node5 : torch::autograd::Node {
  SavedVariable x, a, b, c, d;
  variable_list apply(variable_list&& g) override {
    return list(op<B5, kB5>().call(g[0], x.unpack(), a.unpack(), b.unpack(), c.unpack(),
                                   d.unpack()));
  }
  void release_variables() override {
    for (auto* v : {&x, &a, &b, &c, &d}) v->reset_data();
  }
};
struct Node1 : torch::autograd::Node {
  SavedVariable x;
  variable_list apply(variable_list&& g) override {
    return {op<B1, kB1>().call(g[0], x.unpack())};
  }
  void release_variables() override { x.reset_data(); }
};
Tensor node5(const Tensor& x, const Tensor& a, const Tensor& b, const Tensor& c,
             const Tensor& d) {
  Tensor y = below<F5, kN5>(x, a, b, c, d);
  if (torch::autograd::compute_requires_grad(x, a, b, c, d)) {
    auto node = make_node<Node5>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, a, b, c, d));
    node->x = SavedVariable(x, false);
    node->a = SavedVariable(a, false);
    node->b = SavedVariable(b, false);
    node->c = SavedVariable(c, false);
    node->d = SavedVariable(d, false);
    torch::autograd::set_history(y, node);
  }
  return y;
}
Tensor node1(const Tensor& x) {
  Tensor y = below<F1, kN1>(x);
  if (torch::autograd::compute_requires_grad(x)) {
    auto node = make_node<Node1>();
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    node->x = SavedVariable(x, false);
    torch::autograd::set_history(y, node);
  }
  return y;
}
}  // namespace

TORCH_LIBRARY(null_ops, m) {
  m.def("f5(Tensor x, Tensor a, Tensor b, Tensor c, Tensor d) -> Tensor");
  m.def("n5(Tensor x, Tensor a, Tensor b, Tensor c, Tensor d) -> Tensor");
  m.def("b5(Tensor g, Tensor x, Tensor a, Tensor b, Tensor c, Tensor d)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("f1(Tensor x) -> Tensor");
  m.def("n1(Tensor x) -> Tensor");
  m.def("b1(Tensor g, Tensor x) -> Tensor");
}
TORCH_LIBRARY_IMPL(null_ops, CPU, m) {
  m.impl("f5", &fwd5);
  m.impl("n5", &fwd5);
  m.impl("b5", &bwd5);
  m.impl("f1", &fwd1);
  m.impl("n1", &fwd1);
  m.impl("b1", &bwd1);
}
TORCH_LIBRARY_IMPL(null_ops, Autograd, m) {
  m.impl("f5", &function5);
  m.impl("n5", &node5);
  m.impl("f1", &function1);
  m.impl("n1", &node1);
}
"""


def contenders(n: int) -> dict:
    """{(group, name): forward + autograd.grad}, groups by signature, on the inputs of the bench."""
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=gen).requires_grad_()
    g = torch.randn(n, generator=gen)
    coefs = [torch.randn((), generator=gen).requires_grad_() for _ in range(4)]
    ops = torch.ops.null_ops
    five, one = (x, *coefs), (x,)
    fns = {
        ("floor", "torch.neg"): (torch.neg, one),
        ("x, a, b, c, d", "null, Function"): (ops.f5.default, five),
        ("x, a, b, c, d", "null, Node"): (ops.n5.default, five),
        ("x, a, b, c, d", "torchext.cubic"): (torchext.cubic, five),
        ("x, a, b, c, d", "tutorial cubic"): (TUTORIAL["cubic"], five),
        ("x, a, b, c, d", "torchext.affine_legendre_p3"): (torchext.affine_legendre_p3, five),
        ("x, a, b, c, d", "tutorial affine_legendre_p3"): (TUTORIAL["affine_legendre_p3"], five),
        ("x", "null, Function"): (ops.f1.default, one),
        ("x", "null, Node"): (ops.n1.default, one),
        ("x", "torchext.legendre_p3"): (torchext.legendre_p3, one),
        ("x", "tutorial legendre_p3"): (TUTORIAL["legendre_p3"], one),
        ("x", "torchext.relu"): (torchext.relu, one),
        ("x", "tutorial relu"): (TUTORIAL["relu"], one),
    }
    return {key: (lambda f=f, i=i: torch.autograd.grad(f(*i), i, g)) for key, (f, i) in fns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--min-run-time", type=float, default=2.0,
                        help="seconds per contender, over all rounds")
    args = parser.parse_args()
    load_inline("torchext_null_ops", SOURCE, is_python_module=False, extra_cflags=["-O2"])
    times = _time_rounds(contenders(args.n), args.min_run_time, args.rounds)
    med = {key: statistics.median(t) * 1e6 for key, t in times.items()}
    print(f"n = {args.n}, forward + torch.autograd.grad, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds\n")
    print("| inputs | contender | µs | tutorial / this |\n|---|---|---:|---|")
    for (group, name), us in med.items():
        tutorials = [v for (gr, nm), v in med.items() if gr == group and "tutorial" in nm]
        ratios = " ".join(f"{t / us:.2f}×" for t in tutorials)
        print(f"| {group} | {name} | {us:.1f} | {ratios} |")


if __name__ == "__main__":
    main()
