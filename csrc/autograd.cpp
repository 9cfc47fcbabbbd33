// The derivatives of every torchext operator, registered for the Autograd dispatch key as
// PyTorch's own ops have theirs: `torch.ops.torchext.<op>` is differentiable by itself, from
// Python or C++, with no Python on its autograd path. torchext.cubic & co. call the operators
// directly for that reason: at the tutorial's 2000 elements a call is nearly all overhead, and a
// Python autograd.Function costs ~20 µs more per forward+backward (benchmarks/NOTES.md §4).
//
// First order: an operator's backward is its fused `<op>_backward` operator. Second order: each
// `<op>_backward` operator is differentiable too, with the formulas below written in plain ATen
// ops (second order is rare and need not be fast). A backward calls the backward operator through
// the dispatcher from the top, so that with create_graph=True it records its own graph; double
// backward then works however the first order was reached (here or from the Python Functions).
#include <ATen/TensorOperators.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace torchext {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Grads5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using UnaryOp = Tensor(const Tensor&);
using UnaryBackwardOp = Tensor(const Tensor&, const Tensor&);
using CoefOp = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&);
using CoefBackwardOp = Grads5(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&, const Tensor&);

constexpr char kCubic[] = "torchext::cubic";
constexpr char kCubicBackward[] = "torchext::cubic_backward";
constexpr char kLegendreP3[] = "torchext::legendre_p3";
constexpr char kLegendreP3Backward[] = "torchext::legendre_p3_backward";
constexpr char kAffineLegendreP3[] = "torchext::affine_legendre_p3";
constexpr char kAffineLegendreP3Backward[] = "torchext::affine_legendre_p3_backward";
constexpr char kReLU[] = "torchext::relu";
constexpr char kReLUBackward[] = "torchext::relu_backward";

// An operator of ops.cpp, looked up once.
template <class Signature, const char* Name>
const c10::TypedOperatorHandle<Signature>& op() {
  static const auto handle =
      c10::Dispatcher::singleton().findSchemaOrThrow(Name, "").template typed<Signature>();
  return handle;
}

// In a forward: the backend kernel, below autograd (the Function records the graph).
template <class Signature, const char* Name, class... Args>
auto call_below_autograd(const Args&... args) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op<Signature, Name>().call(args...);
}

variable_list as_list(const Grads5& t) {
  return {std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t), std::get<4>(t)};
}

Grads5 as_tuple(const variable_list& v) { return {v[0], v[1], v[2], v[3], v[4]}; }

// The gradient of a one-element coefficient: t summed, in the coefficient's shape (the engine
// casts it to the coefficient's dtype).
Tensor sum_to(const Tensor& t, const Tensor& like) { return t.sum().reshape(like.sizes()); }

// ---- first order ------------------------------------------------------------------------------

// y = op(x, a, b, c, d). Saves the inputs; one backward call gives all five gradients.
template <const char* Name, const char* Backward>
struct CoefFunction : torch::autograd::Function<CoefFunction<Name, Backward>> {
  static constexpr const char* kName = Name;
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& a, const Tensor& b,
                        const Tensor& c, const Tensor& d) {
    ctx->save_for_backward({x, a, b, c, d});
    return call_below_autograd<CoefOp, Name>(x, a, b, c, d);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    return as_list(op<CoefBackwardOp, Backward>().call(grads[0], s[0], s[1], s[2], s[3], s[4]));
  }
};

// y = op(x). The backward operator takes what the forward saved: x, or (ReLU) the result.
template <const char* Name, const char* Backward, bool kSavesResult>
struct UnaryFunction : torch::autograd::Function<UnaryFunction<Name, Backward, kSavesResult>> {
  static constexpr const char* kName = Name;
  static Tensor forward(AutogradContext* ctx, const Tensor& x) {
    Tensor y = call_below_autograd<UnaryOp, Name>(x);
    ctx->save_for_backward({kSavesResult ? y : x});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {op<UnaryBackwardOp, Backward>().call(grads[0], ctx->get_saved_variables()[0])};
  }
};

// ---- second order: the backward operators' own backward -----------------------------------------

// (dx, da, db, dc, dd) = op_backward(g, x, a, b, c, d); Formula::grad maps the saved inputs and
// the five incoming gradients to the six gradients of (g, x, a, b, c, d).
template <const char* Name, class Formula>
struct CoefBackwardFunction : torch::autograd::Function<CoefBackwardFunction<Name, Formula>> {
  static constexpr const char* kName = Name;
  static variable_list forward(AutogradContext* ctx, const Tensor& g, const Tensor& x,
                               const Tensor& a, const Tensor& b, const Tensor& c, const Tensor& d) {
    ctx->save_for_backward({g, x, a, b, c, d});
    return as_list(call_below_autograd<CoefBackwardOp, Name>(g, x, a, b, c, d));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return Formula::grad(ctx->get_saved_variables(), grads);
  }
};

struct CubicSecondOrder {
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

struct AffineLegendreP3SecondOrder {
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

// dx = op_backward(g, v). Formula::grad maps (g, v, gdx) to the gradients of (g, v).
template <const char* Name, class Formula>
struct UnaryBackwardFunction : torch::autograd::Function<UnaryBackwardFunction<Name, Formula>> {
  static constexpr const char* kName = Name;
  static Tensor forward(AutogradContext* ctx, const Tensor& g, const Tensor& v) {
    ctx->save_for_backward({g, v});
    return call_below_autograd<UnaryBackwardOp, Name>(g, v);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    return Formula::grad(s[0], s[1], grads[0]);
  }
};

struct LegendreP3SecondOrder {
  // dx = g·P3'(x): d/dg = P3'(x)·gdx (the fused operator again), d/dx = g·P3''(x)·gdx = 15·g·x·gdx.
  static variable_list grad(const Tensor& g, const Tensor& x, const Tensor& gdx) {
    return {op<UnaryBackwardOp, kLegendreP3Backward>().call(gdx, x), 15 * g * x * gdx};
  }
};

struct ReLUSecondOrder {
  // dx = mask(y)·g is linear in g, and its derivative in y is zero almost everywhere.
  static variable_list grad(const Tensor&, const Tensor& y, const Tensor& gdx) {
    return {op<UnaryBackwardOp, kReLUBackward>().call(gdx, y), Tensor()};
  }
};

// ---- the Autograd kernels ---------------------------------------------------------------------

bool has_tangent(const Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }

// Whether a Function would record nothing: autograd is off or no input requires grad, and no
// input carries a forward-mode tangent (a Function rejects those: we have no jvp formulas). Then
// the kernels below call the backend directly: building a Function's node only to drop it costs
// several µs, paid on every backward (which runs with autograd off) and in inference.
template <class... Args>
bool records_nothing(const Args&... inputs) {
  const bool recording = at::GradMode::is_enabled() && (inputs.requires_grad() || ...);
  return !recording && !(has_tangent(inputs) || ...);
}

template <class F>
Tensor coef_kernel(const Tensor& x, const Tensor& a, const Tensor& b, const Tensor& c,
                   const Tensor& d) {
  if (records_nothing(x, a, b, c, d)) {
    return call_below_autograd<CoefOp, F::kName>(x, a, b, c, d);
  }
  return F::apply(x, a, b, c, d);
}

template <class F>
Grads5 coef_backward_kernel(const Tensor& g, const Tensor& x, const Tensor& a, const Tensor& b,
                            const Tensor& c, const Tensor& d) {
  if (records_nothing(g, x, a, b, c, d)) {
    return call_below_autograd<CoefBackwardOp, F::kName>(g, x, a, b, c, d);
  }
  return as_tuple(F::apply(g, x, a, b, c, d));
}

template <class F>
Tensor unary_kernel(const Tensor& x) {
  if (records_nothing(x)) return call_below_autograd<UnaryOp, F::kName>(x);
  return F::apply(x);
}

template <class F>
Tensor unary_backward_kernel(const Tensor& g, const Tensor& v) {
  if (records_nothing(g, v)) return call_below_autograd<UnaryBackwardOp, F::kName>(g, v);
  return F::apply(g, v);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, Autograd, m) {
  m.impl("cubic", &coef_kernel<CoefFunction<kCubic, kCubicBackward>>);
  m.impl("cubic_backward",
         &coef_backward_kernel<CoefBackwardFunction<kCubicBackward, CubicSecondOrder>>);
  m.impl("affine_legendre_p3",
         &coef_kernel<CoefFunction<kAffineLegendreP3, kAffineLegendreP3Backward>>);
  m.impl("affine_legendre_p3_backward",
         &coef_backward_kernel<
             CoefBackwardFunction<kAffineLegendreP3Backward, AffineLegendreP3SecondOrder>>);
  m.impl("legendre_p3",
         &unary_kernel<UnaryFunction<kLegendreP3, kLegendreP3Backward, /*kSavesResult=*/false>>);
  m.impl("legendre_p3_backward",
         &unary_backward_kernel<UnaryBackwardFunction<kLegendreP3Backward, LegendreP3SecondOrder>>);
  m.impl("relu", &unary_kernel<UnaryFunction<kReLU, kReLUBackward, /*kSavesResult=*/true>>);
  m.impl("relu_backward",
         &unary_backward_kernel<UnaryBackwardFunction<kReLUBackward, ReLUSecondOrder>>);
}

}  // namespace torchext
