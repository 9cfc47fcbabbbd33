// The op table: the one list of torchext's C++ ops. The schemas (ops.cpp), the CPU kernels
// (cpu/kernels.cpp), the CUDA kernels (cuda/kernels.cu) and the derivatives (autograd.cpp) are
// each registered by walking it, so adding an op is its struct in math.h, its row here, and its
// second-order formula in autograd.cpp. X(name, Op): torch.ops.torchext.<name> and
// <name>_backward, with the math of math::Op.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "math.h"

#define TORCHEXT_OPS(X)                   \
  X(cubic, Cubic)                         \
  X(legendre_p3, LegendreP3)              \
  X(affine_legendre_p3, AffineLegendreP3) \
  X(relu, ReLU)

namespace torchext {

// ---- what an op declares, with the defaults of the optional members ---------------------------

// Its names, from its row: OpName<math::Cubic>::kName is "cubic"; kQualified ("torchext.cubic")
// is how error messages name it.
template <class Op>
struct OpName;
#define TORCHEXT_OP_NAME(name, Op)                               \
  template <>                                                    \
  struct OpName<math::Op> {                                      \
    static constexpr const char* kName = #name;                  \
    static constexpr const char* kQualified = "torchext." #name; \
  };
TORCHEXT_OPS(TORCHEXT_OP_NAME)
#undef TORCHEXT_OP_NAME

template <class Op>
constexpr int kNumCoefs = static_cast<int>(Op::kCoefs.size());

#define TORCHEXT_TRAIT(TRAIT, TYPE, DEFAULT) \
  template <class Op, typename = void>       \
  constexpr TYPE TRAIT = DEFAULT;            \
  template <class Op>                        \
  constexpr TYPE TRAIT<Op, std::void_t<decltype(Op::TRAIT)>> = Op::TRAIT;

TORCHEXT_TRAIT(kSavesResult, bool, false)
TORCHEXT_TRAIT(kOnStoredType, bool, false)
TORCHEXT_TRAIT(kIntegral, bool, false)
TORCHEXT_TRAIT(kInplace, bool, false)
TORCHEXT_TRAIT(kBackwardReads, unsigned, ~0u)
#undef TORCHEXT_TRAIT

// The name of what the backward reads besides the gradient.
template <class Op>
constexpr const char* kSavedName = kSavesResult<Op> ? "result" : "x";

// ---- the operators' C++ signatures, from the number of coefficients ---------------------------
// Forward:  Tensor (const Tensor& x, const Tensor& c0, ...)
// Backward: Tensor (const Tensor& grad, const Tensor& v) without coefficients, else
//           tuple<Tensor dx, Tensor dc0, ...> (const Tensor& grad, const Tensor& v, const Tensor&
//           c0, ..., const optional<List<bool>>& output_mask)
//
// output_mask says which results are wanted (all when absent), as torch's own backward operators
// take one (convolution_backward): a result not wanted comes back as zeros (expanded from one
// element: no memory), and is not computed (neither the CPU nor the CUDA kernels write or sum it).
// Autograd passes which inputs need a gradient, so that with x not requiring one (the tutorial's)
// no dx is written, and with coefficients that do not (numbers, or frozen) no sums are taken.

// (Struct members rather than alias templates: nvcc's front end drops an alias template's unused
// parameter, and the packs below would then expand nothing.)
template <size_t>
struct Each {
  using Arg = const at::Tensor&;
  using Out = at::Tensor;
};

template <class Op, class Seq = std::make_index_sequence<kNumCoefs<Op>>>
struct Signature;

template <class Op, size_t... I>
struct Signature<Op, std::index_sequence<I...>> {
  static constexpr int N = sizeof...(I);
  using Coefs = std::array<at::Tensor, N>;
  using BackwardResult =
      std::conditional_t<N == 0, at::Tensor, std::tuple<at::Tensor, typename Each<I>::Out...>>;
  using Forward = at::Tensor(const at::Tensor&, typename Each<I>::Arg...);
  using Mask = std::array<bool, N + 1>;  // dx, then each coefficient's gradient
  // As the operator takes it: any length, so that a wrong one is an error naming the op.
  using OptionalMask = std::optional<c10::List<bool>>;
  using Backward =
      std::conditional_t<N == 0, BackwardResult(const at::Tensor&, const at::Tensor&),
                         BackwardResult(const at::Tensor&, const at::Tensor&,
                                        typename Each<I>::Arg..., const OptionalMask&)>;
  // (g, v, coefficients..., grad_dx, grad_dcoefficients...) -> their N + 2 gradients
  using SecondOrderResult = std::tuple<at::Tensor, at::Tensor, typename Each<I>::Out...>;

  template <class Impl>
  static SecondOrderResult second_order(const at::Tensor& grad, const at::Tensor& v,
                                        typename Each<I>::Arg... c, const at::Tensor& grad_dx,
                                        typename Each<I>::Arg... grad_dc) {
    const std::array<at::Tensor, N + 2> out =
        Impl::second_order({grad, v, c...}, {grad_dx, grad_dc...});
    return {out[0], out[1], out[I + 2]...};
  }

  // The operator kernels of a backend: Impl::forward(x, coefs) and Impl::backward(grad, v, coefs,
  // wanted) -> std::array<Tensor, N + 1>, bound to the schema's signature.
  template <class Impl>
  static at::Tensor forward(const at::Tensor& x, typename Each<I>::Arg... c) {
    return Impl::forward(x, Coefs{c...});
  }
  // <name>_: x overwritten with the result; returns nothing (as torch.compile's functionalization
  // wants of a mutating custom op; the Python function returns x).
  using Inplace = void(const at::Tensor&, typename Each<I>::Arg...);
  template <class Impl>
  static void inplace(const at::Tensor& x, typename Each<I>::Arg... c) {
    Impl::inplace(x, Coefs{c...});
  }
  // Impl::backward(grad, v, coefs, wanted) bound to the backward operator's signature: with no
  // coefficients there is no output_mask (the only result is wanted, or autograd would not ask).
  template <class Impl>
  static constexpr auto backward_kernel() {
    if constexpr (N == 0) {
      return &backward<Impl>;
    } else {
      return &backward_masked<Impl>;
    }
  }
  template <class Impl>
  static BackwardResult backward(const at::Tensor& grad, const at::Tensor& v,
                                 typename Each<I>::Arg... c) {
    return pack(Impl::backward(grad, v, Coefs{c...}, all_wanted()));
  }
  template <class Impl>
  static BackwardResult backward_masked(const at::Tensor& grad, const at::Tensor& v,
                                        typename Each<I>::Arg... c, const OptionalMask& mask) {
    return pack(Impl::backward(grad, v, Coefs{c...}, mask ? to_mask(*mask) : all_wanted()));
  }
  static Mask to_mask(const c10::List<bool>& list) {
    TORCH_CHECK(list.size() == N + 1, OpName<Op>::kQualified, "_backward: 'output_mask' must have ",
                N + 1, " entries (dx, then each coefficient's gradient), got ", list.size());
    Mask m{};
    for (int i = 0; i <= N; ++i) m[i] = list.get(i);
    return m;
  }
  static c10::List<bool> to_list(const Mask& m) {
    c10::List<bool> list;
    list.reserve(N + 1);
    for (bool b : m) list.push_back(b);
    return list;
  }
  static constexpr Mask all_wanted() {
    Mask m{};
    for (bool& b : m) b = true;
    return m;
  }
  static BackwardResult pack(std::array<at::Tensor, N + 1> out) {
    if constexpr (N == 0) {
      return std::move(out[0]);
    } else {
      return {std::move(out[0]), std::move(out[I + 1])...};
    }
  }
  static std::array<at::Tensor, N + 1> unpack(BackwardResult r) {
    if constexpr (N == 0) {
      return {std::move(r)};
    } else {
      return {std::move(std::get<0>(r)), std::move(std::get<I + 1>(r))...};
    }
  }
};

// A backend's kernels for every op of the table: Kernels<Op>::forward, ::backward and, where
// kInplace, ::inplace, bound to the operators' signatures (cpu/kernels.cpp, cuda/kernels.cu,
// meta.cpp, and autograd.cpp's Autograd kernels).
template <template <class> class Kernels, class Op>
void register_kernels(torch::Library& m) {
  using S = Signature<Op>;
  const std::string name = OpName<Op>::kName;
  m.impl(name.c_str(), &S::template forward<Kernels<Op>>);
  m.impl((name + "_backward").c_str(), S::template backward_kernel<Kernels<Op>>());
  if constexpr (kInplace<Op>) m.impl((name + "_").c_str(), &S::template inplace<Kernels<Op>>);
}

// The dtypes an op's kernels take: floating, or every type for the ops that take integers too.
#define TORCHEXT_DISPATCH(OP, TYPE, NAME, ...)                                            \
  [&] {                                                                                   \
    if constexpr (kIntegral<OP>) {                                                        \
      AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__);      \
    } else {                                                                              \
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__); \
    }                                                                                     \
  }()

// "cubic(Tensor x, Tensor a, Tensor b, Tensor c, Tensor d) -> Tensor"
template <class Op>
std::string forward_schema(const std::string& name) {
  std::string s = name + "(Tensor x";
  for (const char* c : Op::kCoefs) s += std::string(", Tensor ") + c;
  return s + ") -> Tensor";
}

// "cubic_backward(Tensor grad, Tensor x, Tensor a, ..., bool[]? output_mask=None)
//  -> (Tensor, Tensor, ...)"
template <class Op>
std::string backward_schema(const std::string& name) {
  std::string s = name + "_backward(Tensor grad, Tensor " + kSavedName<Op>;
  for (const char* c : Op::kCoefs) s += std::string(", Tensor ") + c;
  if (kNumCoefs<Op> == 0) return s + ") -> Tensor";
  s += ", bool[]? output_mask=None) -> (Tensor";
  for (int i = 0; i < kNumCoefs<Op>; ++i) s += ", Tensor";
  return s + ")";
}

// "relu_(Tensor(a!) x) -> ()"
template <class Op>
std::string inplace_schema(const std::string& name) {
  std::string s = name + "_(Tensor(a!) x";
  for (const char* c : Op::kCoefs) s += std::string(", Tensor ") + c;
  return s + ") -> ()";
}

// "cubic_second_order(Tensor grad, Tensor x, Tensor a, ..., Tensor grad_dx, Tensor grad_da, ...)
//  -> (Tensor, Tensor, Tensor, ...)": the gradients of cubic_backward's inputs (grad, x, a, ...)
// given those of its outputs (dx, da, ...). Built from ATen ops (CompositeImplicitAutograd), so
// differentiable to any order, by torch.func too.
template <class Op>
std::string second_order_schema(const std::string& name) {
  std::string s = name + "_second_order(Tensor grad, Tensor " + kSavedName<Op>;
  for (const char* c : Op::kCoefs) s += std::string(", Tensor ") + c;
  s += ", Tensor grad_dx";
  for (const char* c : Op::kCoefs) s += std::string(", Tensor grad_d") + c;
  s += ") -> (Tensor, Tensor";
  for (int i = 0; i < kNumCoefs<Op>; ++i) s += ", Tensor";
  return s + ")";
}

}  // namespace torchext
