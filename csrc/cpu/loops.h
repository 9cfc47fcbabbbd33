// The CPU loops every op shares: an elementwise map, a two-input map, and the fused one-pass
// "map and reduce four sums" of the backward of the ops with coefficients. The op's math comes in
// as a functor from math.h.
//
// Parallelism: at::parallel_for (OpenMP; setup.py compiles and links with -fopenmp, without which
// parallel_for silently runs serially). Determinism: the reduction splits x into fixed chunks of
// kChunk elements whatever the thread count, sums each chunk in a fixed lane order and adds the
// chunks in index order, so the gradients are bitwise the same on every run and with any number
// of threads.
#pragma once

// Every torch header first: nothing of torch's may be compiled under the AVX2 pragma below.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common.h"
#include "isa.h"

namespace torchext {
namespace cpu {

// Elements per parallel task: big enough to amortize waking a thread (~µs), small enough to
// split 2^20 elements over many cores.
constexpr int64_t kGrain = 1 << 15;
// Chunk of the deterministic reduction, and its lanes: independent accumulators the compiler
// keeps in vector registers (a lane-wise loop vectorizes without -ffast-math reassociation).
constexpr int64_t kChunk = 1 << 14;
constexpr int kLanes = 16;

}  // namespace cpu
}  // namespace torchext

// The loops, for baseline x86-64 and for AVX2 with F16C (picked at run time by isa() below;
// TORCHEXT_AVX2 tells loops_impl.h which copy it compiles). PyTorch wheels are built for the
// baseline too, so without this the compiler may use SSE2 only: half the width, and measured twice
// as slow (benchmarks/NOTES.md).
#define TORCHEXT_ISA base
#define TORCHEXT_AVX2 0
#include "loops_impl.h"
#undef TORCHEXT_AVX2
#undef TORCHEXT_ISA

#if defined(__x86_64__) && defined(__GNUC__)
#define TORCHEXT_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#define TORCHEXT_ISA avx2
#define TORCHEXT_AVX2 1
#include "loops_impl.h"
#undef TORCHEXT_AVX2
#undef TORCHEXT_ISA
#pragma GCC pop_options
#else
#define TORCHEXT_HAVE_AVX2 0
#endif

namespace torchext {
namespace cpu {

// Runs the loop `NAME` of the chosen instruction set.
#if TORCHEXT_HAVE_AVX2
#define TORCHEXT_CPU_LOOP(NAME, ...)                                              \
  (::torchext::cpu::isa() == ::torchext::cpu::Isa::Avx2 ? avx2::NAME(__VA_ARGS__) \
                                                        : base::NAME(__VA_ARGS__))
#else
#define TORCHEXT_CPU_LOOP(NAME, ...) base::NAME(__VA_ARGS__)
#endif

}  // namespace cpu
}  // namespace torchext

// ---- drivers: dispatch on dtype and run a loop over what common.h prepared -------------------
// Every op's CPU kernel is one of these four; cpu/<op>.cpp only names its functor.

namespace torchext {
namespace cpu {

#define TORCHEXT_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

using Grads5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The type the loops run an op's functor in: op-math (they convert the 16-bit types in blocks),
// or the stored type for functors that declare kOnStoredType (ReLU), except half, whose
// comparisons c10 makes through a software conversion (measured 36x slower than F16C blocks;
// bfloat16's are a shift, and the blocks' round trip would double ReLU's time).
template <typename Functor, typename = void>
constexpr bool kOnStoredType = false;
template <typename Functor>
constexpr bool kOnStoredType<Functor, std::void_t<decltype(Functor::kOnStoredType)>> =
    Functor::kOnStoredType;

template <template <typename> class Op, typename scalar_t>
using compute_t =
    std::conditional_t<kOnStoredType<Op<scalar_t>> && !std::is_same_v<scalar_t, c10::Half>,
                       scalar_t, at::opmath_type<scalar_t>>;

// y = f(x)
template <template <typename> class Op>
at::Tensor unary_forward(const char* op, const at::Tensor& x) {
  Forward f = prepare_forward(op, x);
  TORCHEXT_DISPATCH_FLOATING(f.x.scalar_type(), "torchext", [&] {
    using T = compute_t<Op, scalar_t>;
    TORCHEXT_CPU_LOOP(map, f.x.const_data_ptr<scalar_t>(), f.y.mutable_data_ptr<scalar_t>(),
                      f.x.numel(), Op<T>{});
  });
  return f.y;
}

// dx = f'(g, v), v being what the forward saved (x, or the result for ReLU).
template <template <typename> class Op>
at::Tensor unary_backward(const char* op, const at::Tensor& grad, const at::Tensor& v,
                          const char* v_name) {
  Backward bw = prepare_backward(op, grad, v, v_name);
  TORCHEXT_DISPATCH_FLOATING(bw.v.scalar_type(), "torchext", [&] {
    using T = compute_t<Op, scalar_t>;
    TORCHEXT_CPU_LOOP(map2, bw.g.const_data_ptr<scalar_t>(), bw.v.const_data_ptr<scalar_t>(),
                      bw.dx.mutable_data_ptr<scalar_t>(), bw.v.numel(), Op<T>{});
  });
  return bw.dx;
}

// y = f(x; a, b, c, d)
template <template <typename> class Op>
at::Tensor coef_forward(const char* op, const at::Tensor& x, const at::Tensor& a,
                        const at::Tensor& b, const at::Tensor& c, const at::Tensor& d) {
  Forward f = prepare_forward(op, x, a, b, c, d);
  TORCHEXT_DISPATCH_FLOATING(f.x.scalar_type(), "torchext", [&] {
    using T = compute_t<Op, scalar_t>;
    TORCHEXT_CPU_LOOP(map, f.x.const_data_ptr<scalar_t>(), f.y.mutable_data_ptr<scalar_t>(),
                      f.x.numel(), Op<T>{{f.coefs}});
  });
  return f.y;
}

// dx and the four coefficient gradients, from one pass over g and x.
template <template <typename> class Op>
Grads5 coef_backward(const char* op, const at::Tensor& grad, const at::Tensor& x,
                     const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                     const at::Tensor& d) {
  Backward bw = prepare_backward(op, grad, x, a, b, c, d);
  TORCHEXT_DISPATCH_FLOATING(bw.v.scalar_type(), "torchext", [&] {
    using T = compute_t<Op, scalar_t>;
    const auto sums = TORCHEXT_CPU_LOOP(
        map2_reduce4, bw.g.const_data_ptr<scalar_t>(), bw.v.const_data_ptr<scalar_t>(),
        bw.dx.mutable_data_ptr<scalar_t>(), bw.v.numel(), Op<T>{{bw.coefs}});
    for (int k = 0; k < 4; ++k) math::store(bw.coef_out.ptr[k], bw.coef_out.dtype[k], sums[k]);
  });
  auto& cg = bw.coef_grads;
  return {bw.dx, cg[0], cg[1], cg[2], cg[3]};
}

}  // namespace cpu
}  // namespace torchext
