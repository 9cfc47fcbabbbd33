// The derivatives of every torchext operator, registered for the Autograd dispatch key by walking
// the op table, as PyTorch's own ops have theirs: `torch.ops.torchext.<op>` is differentiable by
// itself, from Python or C++, with no Python on its autograd path. torchext.cubic & co. call the
// operators directly for that reason: at the tutorial's 2000 elements a call is nearly all
// overhead, and a Python autograd.Function costs ~20 µs more per forward+backward
// (benchmarks/NOTES.md §4).
//
// First order: an operator's backward is its fused `<op>_backward` operator. Second order: each
// `<op>_backward` operator is differentiable too, with the op's SecondOrder formula below written
// in plain ATen ops (second order is rare and need not be fast). A backward calls the backward
// operator through the dispatcher from the top, so that with create_graph=True it records its own
// graph; double backward then works however the first order was reached (here or from the Python
// Functions).
#include <ATen/ExpandUtils.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>
#include <torch/version.h>

#include <array>
#include <string>
#include <tuple>

#include "ops.h"

namespace torchext {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A coefficient's gradient from terms shaped like x: summed over the dims it broadcasts along.
Tensor sum_to(const Tensor& t, const Tensor& like) { return at::sum_to(t, like.sizes()); }

// ---- the operators, looked up once ------------------------------------------------------------

template <class Op>
struct Operators {
  using S = Signature<Op>;
  static const c10::TypedOperatorHandle<typename S::Forward>& forward() {
    static const auto handle = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow(name().c_str(), "")
                                   .template typed<typename S::Forward>();
    return handle;
  }
  static const c10::TypedOperatorHandle<typename S::Inplace>& inplace() {
    static const auto handle = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow((name() + "_").c_str(), "")
                                   .template typed<typename S::Inplace>();
    return handle;
  }
  static const c10::TypedOperatorHandle<typename S::Backward>& backward() {
    static const auto handle = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow((name() + "_backward").c_str(), "")
                                   .template typed<typename S::Backward>();
    return handle;
  }
  static std::string name() { return std::string("torchext::") + OpName<Op>::kName; }
};

// ---- second order: the backward operators' own backward -----------------------------------------
// grad(s, gs): s are the backward operator's inputs (g, v, coefficients...), gs the incoming
// gradients of its outputs (dx, dcoefficients...); returns the gradients of its inputs.

template <class Op>
struct SecondOrder;

template <>
struct SecondOrder<math::Cubic> {
  // The first order was dx = g·p'(x) with p'(x) = b + 2c·x + 3d·x², and
  // (da, db, dc, dd) = Σ g·(1, x, x², x³). Differentiate gdx·dx + gda·da + ... .
  static variable_list grad(const variable_list& s, const variable_list& gs) {
    const Tensor &g = s[0], &x = s[1], &b = s[3], &c = s[4], &d = s[5];
    const Tensor &gdx = gs[0], &gda = gs[1], &gdb = gs[2], &gdc = gs[3], &gdd = gs[4];
    const Tensor dp = b + x * (2 * c + 3 * d * x);
    const Tensor gg = gdx * dp + gda + x * (gdb + x * (gdc + x * gdd));
    const Tensor gx = g * (gdx * (2 * c + 6 * d * x) + gdb + x * (2 * gdc + 3 * gdd * x));
    const Tensor gdxg = gdx * g;
    return {gg,
            gx,
            Tensor(),  // nothing in the first order depends on a
            sum_to(gdxg, b),
            sum_to(2 * gdxg * x, c),
            sum_to(3 * gdxg * x * x, d)};
  }
};

template <>
struct SecondOrder<math::AffineLegendreP3> {
  // The first order: with u = c + d·x, P = P3(u), P' = P3'(u): dx, dc, dd = g·b·P'·(d, 1, x) and
  // da, db = Σg, Σg·P. With w = gdx·d + gdc + gdd·x the sum of all terms is
  // Σ g·b·P'·w + gda·Σg + gdb·Σg·P; differentiate it (P'' = 15u).
  static variable_list grad(const variable_list& s, const variable_list& gs) {
    const Tensor &g = s[0], &x = s[1], &b = s[3], &c = s[4], &d = s[5];
    const Tensor &gdx = gs[0], &gda = gs[1], &gdb = gs[2], &gdc = gs[3], &gdd = gs[4];
    const Tensor u = c + d * x;
    const Tensor p = 0.5 * u * (5 * u * u - 3);
    const Tensor dp = 1.5 * (5 * u * u - 1);
    const Tensor ddp = 15 * u;
    const Tensor w = gdx * d + gdc + gdd * x;
    const Tensor gbddp_w = g * b * ddp * w;
    const Tensor gpd = g * dp;  // ∂(g·P)/∂u
    const Tensor gg = b * dp * w + gda + gdb * p;
    const Tensor gx = gbddp_w * d + g * b * dp * gdd + gdb * gpd * d;
    return {gg,
            gx,
            Tensor(),  // nothing in the first order depends on a
            sum_to(gpd * w, b),
            sum_to(gbddp_w + gdb * gpd, c),
            sum_to(gbddp_w * x + g * b * dp * gdx + gdb * gpd * x, d)};
  }
};

template <>
struct SecondOrder<math::LegendreP3> {
  // dx = g·P3'(x): d/dg = P3'(x)·gdx (the fused operator again), d/dx = g·P3''(x)·gdx = 15·g·x·gdx.
  static variable_list grad(const variable_list& s, const variable_list& gs) {
    const Tensor &g = s[0], &x = s[1], &gdx = gs[0];
    return {Operators<math::LegendreP3>::backward().call(gdx, x), 15 * g * x * gdx};
  }
};

template <>
struct SecondOrder<math::ReLU> {
  // dx = mask(y)·g is linear in g, and its derivative in y is zero almost everywhere.
  static variable_list grad(const variable_list& s, const variable_list& gs) {
    return {Operators<math::ReLU>::backward().call(gs[0], s[1]), Tensor()};
  }
};

// In a forward: the backend kernel, below autograd (the Function records the graph).
template <class Handle, class... Args>
auto call_below_autograd(const Handle& handle, const Args&... args) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return handle.call(args...);
}

// The backward operator's arguments after the coefficients: output_mask, for ops with
// coefficients (ops.h); wanted[0] for dx, wanted[i + 1] for coefficient i's gradient.
template <class Op>
auto mask_args(const typename Signature<Op>::Mask& wanted) {
  if constexpr (kNumCoefs<Op> == 0) {
    return std::tuple<>();
  } else {
    return std::make_tuple(typename Signature<Op>::OptionalMask(Signature<Op>::to_list(wanted)));
  }
}

// (dx, dcoefficients...) = the backward operator (g, v, coefficients, and the mask where the op
// has coefficients), through the dispatcher from where the caller stands.
template <class Op, class Coefs>
std::array<Tensor, kNumCoefs<Op> + 1> call_backward(const Tensor& g, const Tensor& v,
                                                    const Coefs& coefs,
                                                    const typename Signature<Op>::Mask& wanted) {
  return std::apply(
      [&](const auto&... args) {
        return Signature<Op>::unpack(Operators<Op>::backward().call(g, v, args...));
      },
      std::tuple_cat(coefs, mask_args<Op>(wanted)));
}

// ---- first order ------------------------------------------------------------------------------

// y = op(x, coefficients...). Saves what the backward reads: x (or y), and the coefficients whose
// values it reads. Of the others the backward needs only the shape, dtype and device (for their
// gradients): it gets a shallow copy with a version counter of its own (variable_data), so that
// changing one in place after the forward is as fine as in eager; an inference-mode one, which
// cannot be saved at all, leaves its metadata instead.
template <class Op, class Node>
struct OpFunction : torch::autograd::Function<Node> {
  static constexpr int N = kNumCoefs<Op>;

  template <class... C>
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const C&... coefs) {
    Tensor y = call_below_autograd(Operators<Op>::forward(), x, coefs...);
    variable_list saved{kSavesResult<Op> ? y : x};
    const std::array<const Tensor*, sizeof...(C)> all{&coefs...};
    for (int i = 0; i < N; ++i) {
      const Tensor& c = *all[i];
      if (kBackwardReads<Op> >> i & 1u) {
        saved.push_back(c);
      } else if (!c.is_inference()) {
        saved.push_back(c.variable_data());
      } else {
        saved.emplace_back();
        const std::string key = std::to_string(i);
        ctx->saved_data["sizes" + key] = c.sizes();
        ctx->saved_data["dtype" + key] = c.scalar_type();
        ctx->saved_data["device" + key] = c.device();
      }
    }
    ctx->save_for_backward(saved);
    return y;
  }

  // Only the gradients autograd wants are computed (output_mask): none for x when x needs none
  // (the tutorial's), no sums when no coefficient needs one (numbers, frozen parameters).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    typename Signature<Op>::Mask wanted;
    for (int i = 0; i <= N; ++i) wanted[i] = ctx->needs_input_grad(i);
    std::array<Tensor, N> coefs;
    for (int i = 0; i < N; ++i) {
      coefs[i] = s[i + 1];
      if (!coefs[i].defined()) {  // its gradient's shape and dtype; its values are never read
        const std::string key = std::to_string(i);
        coefs[i] = at::empty({}, at::TensorOptions()
                                     .dtype(ctx->saved_data["dtype" + key].toScalarType())
                                     .device(ctx->saved_data["device" + key].toDevice()))
                       .expand(ctx->saved_data["sizes" + key].toIntVector());
      }
    }
    auto out = call_backward<Op>(grads[0], s[0], coefs, wanted);
    for (int i = 0; i <= N; ++i)
      if (!wanted[i]) out[i] = Tensor();
    return variable_list(out.begin(), out.end());
  }
};

// (dx, dcoefficients...) = op_backward(g, v, coefficients...), differentiable by SecondOrder<Op>.
// The results not wanted (output_mask) are zeros, whatever the inputs: their gradients add
// nothing. The mask itself, not a tensor, gets an undefined gradient.
template <class Op, class Node>
struct BackwardFunction : torch::autograd::Function<Node> {
  static constexpr int N = kNumCoefs<Op>;
  template <class... Args>
  static variable_list forward(AutogradContext* ctx, const Tensor& g, const Tensor& v,
                               const typename Signature<Op>::Mask& wanted, const Args&... coefs) {
    ctx->save_for_backward({g, v, coefs...});
    ctx->saved_data["wanted"] = Signature<Op>::to_list(wanted);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto out = call_backward<Op>(g, v, std::tie(coefs...), wanted);
    return variable_list(out.begin(), out.end());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto wanted = Signature<Op>::to_mask(ctx->saved_data["wanted"].toBoolList());
    for (int i = 0; i <= N; ++i)
      if (!wanted[i]) grads[i] = at::zeros_like(grads[i]);
    variable_list out = SecondOrder<Op>::grad(ctx->get_saved_variables(), grads);
    // Function::apply's inputs are (g, v, wanted, coefficients...): one gradient each.
    out.insert(out.begin() + 2, Tensor());
    return out;
  }
};

// Each op's autograd nodes (Forward, Backward, Inplace): the Functions above under names of their
// own, defined below the in-place section.
template <class Op>
struct Nodes;

// ---- the Autograd kernels ---------------------------------------------------------------------

bool has_tangent(const Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }

// Whether a Function would record nothing: autograd is off or no input requires grad, and no
// input carries a forward-mode tangent (a Function rejects those: we have no jvp formulas). Then
// the kernels below call the backend directly: building a Function's node only to drop it costs
// several µs, paid on every backward (which runs with autograd off) and in inference.
// (Also when an input is not a dense tensor: the backend kernels then refuse it, naming the op
// and the argument, where a Function would fail on it first with a message of its own.)
template <size_t N>
bool records_nothing(std::initializer_list<const Tensor*> first,
                     const std::array<Tensor, N>& coefs) {
  bool recording = false, tangent = false, dense = true;
  auto look = [&](const Tensor& t) {
    recording |= t.requires_grad();
    tangent |= has_tangent(t);
    dense &= !t.defined() || (t.layout() == at::kStrided && !t.is_nested() && !t.is_quantized());
  };
  for (const Tensor* t : first) look(*t);
  for (const Tensor& t : coefs) look(t);
  return !dense || (!(recording && at::GradMode::is_enabled()) && !tangent);
}

template <class Op>
void inplace_autograd(const Tensor& x);  // <op>_: with the in-place Function, below

template <class Op>
struct AutogradKernels {
  static constexpr int N = kNumCoefs<Op>;
  using Coefs = std::array<Tensor, N>;

  static void inplace(const Tensor& x, const Coefs&) { inplace_autograd<Op>(x); }

  static Tensor forward(const Tensor& x, const Coefs& coefs) {
    return std::apply(
        [&](const auto&... c) {
          if (records_nothing({&x}, coefs)) {
            return call_below_autograd(Operators<Op>::forward(), x, c...);
          }
          return Nodes<Op>::Forward::apply(x, c...);
        },
        coefs);
  }

  static std::array<Tensor, N + 1> backward(const Tensor& g, const Tensor& v, const Coefs& coefs,
                                            const typename Signature<Op>::Mask& wanted) {
    return std::apply(
        [&](const auto&... c) {
          if (records_nothing({&g, &v}, coefs)) {
            at::AutoDispatchBelowADInplaceOrView below_autograd;
            return call_backward<Op>(g, v, coefs, wanted);
          }
          const variable_list out = Nodes<Op>::Backward::apply(g, v, wanted, c...);
          std::array<Tensor, N + 1> result;
          std::copy(out.begin(), out.end(), result.begin());
          return result;
        },
        coefs);
  }
};

// ---- in place: <op>_(x) -------------------------------------------------------------------------
// As torch's own in-place ops: the Autograd kernel refuses (check_inplace) before anything is
// written wherever torch.relu_ would (a leaf that requires grad, a view of one, a view made under
// no_grad, an output of unbind ...), then records a node whose backward reads the result x now
// holds; x's version is bumped once (by mark_dirty when recording, else by the ADInplaceOrView
// kernel). Only for ops whose backward reads
// their result: an overwritten x could not be read.

template <class Op, class Node>
struct InplaceFunction : torch::autograd::Function<Node> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x) {
    static_assert(kSavesResult<Op> && kNumCoefs<Op> == 0,
                  "in place: ops without coefficients whose backward reads the result");
    {
      // Below the ADInplaceOrView kernel too: mark_dirty bumps x's version.
      at::AutoDispatchBelowADInplaceOrView below;
      Operators<Op>::inplace().call(x);
    }
    ctx->mark_dirty({x});
    ctx->save_for_backward({x});
    return x;
  }
  // Compiled for every op (its node is, below the nodes' names), made only for in-place ones.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if constexpr (kInplace<Op>) {
      return {Operators<Op>::backward().call(grads[0], ctx->get_saved_variables()[0])};
    } else {
      TORCH_INTERNAL_ASSERT(false, OpName<Op>::kQualified, " has no in-place form");
      return {};
    }
  }
};

template <class Op>
void inplace_autograd(const Tensor& x) {
  const bool requires_grad = at::GradMode::is_enabled() && x.requires_grad();
  torch::autograd::check_inplace(x, requires_grad);
  if (!requires_grad) {
    at::AutoDispatchBelowAutograd below_autograd;
    Operators<Op>::inplace().call(x);
    return;
  }
  Nodes<Op>::Inplace::apply(x);
}

template <class Op>
void inplace_version(const Tensor& x) {
  {
    at::AutoDispatchBelowADInplaceOrView below;
    Operators<Op>::inplace().call(x);
  }
  torch::autograd::increment_version(x);
}

}  // namespace

// ---- the nodes' names ---------------------------------------------------------------------------
// Named as torch names its own nodes (MulBackward0) in grad_fn.name(), anomaly mode's messages and
// the profiler's "autograd::engine::evaluate_function: ...": CubicBackward0, CubicBackwardBackward0
// (its double backward) and ReLU_Backward0 (relu_). A C++ Function's node is a CppNode<Function>,
// whose Node::name() is its C++ type ("torch::autograd::CppNode<torchext::CubicBackward0>");
// ours is a Named<Function>: that CppNode, everything else inherited (compiled autograd's
// methods included), with name() overridden. Function<F>::apply makes its node with
// c10::make_intrusive<CppNode<F>>(); that call is specialized for our Functions below to make a
// Named<F>. A torch release that made its nodes otherwise would leave the specialization unused
// and the long names back (tests/test_ops.py::test_autograd_nodes_are_named_after_the_op fails).
// torch before 2.13 made them with `new CppNode<F>()` into a std::shared_ptr (Node was no
// intrusive_ptr_target, and the specialization does not compile): there the nodes keep the long
// names, and everything else works the same.
#define TORCHEXT_NAMED_NODES_SUPPORTED \
  (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13))
#define TORCHEXT_NODES(name, Op)                                                     \
  struct Op##Backward0 : OpFunction<math::Op, Op##Backward0> {                       \
    static constexpr const char* kNodeName = #Op "Backward0";                        \
  };                                                                                 \
  struct Op##BackwardBackward0 : BackwardFunction<math::Op, Op##BackwardBackward0> { \
    static constexpr const char* kNodeName = #Op "BackwardBackward0";                \
  };                                                                                 \
  struct Op##_Backward0 : InplaceFunction<math::Op, Op##_Backward0> {                \
    static constexpr const char* kNodeName = #Op "_Backward0";                       \
  };
TORCHEXT_OPS(TORCHEXT_NODES)
#undef TORCHEXT_NODES

#if TORCHEXT_NAMED_NODES_SUPPORTED
template <class F>
struct Named : torch::autograd::CppNode<F> {
  std::string name() const override { return F::kNodeName; }
};
#endif

}  // namespace torchext

#if TORCHEXT_NAMED_NODES_SUPPORTED
namespace c10 {
#define TORCHEXT_NAMED(F)                                   \
  template <>                                               \
  intrusive_ptr<torch::autograd::CppNode<torchext::F>>      \
  make_intrusive<torch::autograd::CppNode<torchext::F>>() { \
    return make_intrusive<torchext::Named<torchext::F>>();  \
  }
#define TORCHEXT_NAMED_NODES(name, Op) \
  TORCHEXT_NAMED(Op##Backward0) TORCHEXT_NAMED(Op##BackwardBackward0) TORCHEXT_NAMED(Op##_Backward0)
TORCHEXT_OPS(TORCHEXT_NAMED_NODES)
#undef TORCHEXT_NAMED_NODES
#undef TORCHEXT_NAMED
}  // namespace c10
#endif  // TORCHEXT_NAMED_NODES_SUPPORTED

namespace torchext {
namespace {

#define TORCHEXT_NODES(name, Op)                      \
  template <>                                         \
  struct Nodes<math::Op> {                            \
    using Forward = torchext::Op##Backward0;          \
    using Backward = torchext::Op##BackwardBackward0; \
    using Inplace = torchext::Op##_Backward0;         \
  };
TORCHEXT_OPS(TORCHEXT_NODES)
#undef TORCHEXT_NODES

template <class Op>
void register_version_bump(torch::Library& m) {
  if constexpr (kInplace<Op>) {
    m.impl((std::string(OpName<Op>::kName) + "_").c_str(), &inplace_version<Op>);
  }
}

// <op>_second_order: SecondOrder<Op> as an operator of ATen ops, for the Python Functions that
// torch.func transforms (functorch cannot go through the C++ Functions above). Gradients that
// the formula leaves undefined (nothing depends on them) are zeros.
template <class Op>
struct SecondOrderOperator {
  static constexpr int N = kNumCoefs<Op>;
  static std::array<Tensor, N + 2> second_order(const std::array<Tensor, N + 2>& inputs,
                                                const std::array<Tensor, N + 1>& grads) {
    const variable_list s(inputs.begin(), inputs.end()), gs(grads.begin(), grads.end());
    const variable_list out = SecondOrder<Op>::grad(s, gs);
    std::array<Tensor, N + 2> result;
    for (int i = 0; i < N + 2; ++i)
      result[i] = out[i].defined() ? out[i] : at::zeros_like(inputs[i]);
    return result;
  }
};

template <class Op>
void register_second_order(torch::Library& m) {
  m.impl((std::string(OpName<Op>::kName) + "_second_order").c_str(),
         &Signature<Op>::template second_order<SecondOrderOperator<Op>>);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, Autograd, m) {
#define TORCHEXT_REGISTER(name, Op) register_kernels<AutogradKernels, math::Op>(m);
  TORCHEXT_OPS(TORCHEXT_REGISTER)
#undef TORCHEXT_REGISTER
}

TORCH_LIBRARY_IMPL(torchext, ADInplaceOrView, m) {
#define TORCHEXT_REGISTER(name, Op) register_version_bump<math::Op>(m);
  TORCHEXT_OPS(TORCHEXT_REGISTER)
#undef TORCHEXT_REGISTER
}

TORCH_LIBRARY_IMPL(torchext, CompositeImplicitAutograd, m) {
#define TORCHEXT_REGISTER(name, Op) register_second_order<math::Op>(m);
  TORCHEXT_OPS(TORCHEXT_REGISTER)
#undef TORCHEXT_REGISTER
}

}  // namespace torchext
