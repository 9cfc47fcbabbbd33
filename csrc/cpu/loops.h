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

#include <ATen/Parallel.h>

#include <array>
#include <cstdint>
#include <vector>

namespace torchext {
namespace cpu {

// Elements per parallel task: big enough to amortize waking a thread (~µs), small enough to
// split 2^20 elements over many cores.
constexpr int64_t kGrain = 1 << 15;
// Chunk of the deterministic reduction, and its lanes: independent accumulators the compiler
// keeps in vector registers (a lane-wise loop vectorizes without -ffast-math reassociation).
constexpr int64_t kChunk = 1 << 14;
constexpr int kLanes = 16;

// y[i] = op.forward(x[i])
template <typename scalar_t, typename Op>
void map(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, Op op) {
  op.load();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) y[i] = op.forward(x[i]);
  });
}

// out[i] = op.backward(g[i], v[i])
template <typename scalar_t, typename Op>
void map2(const scalar_t* __restrict__ g, const scalar_t* __restrict__ v,
          scalar_t* __restrict__ out, int64_t n, Op op) {
  op.load();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = op.backward(g[i], v[i]);
  });
}

// dx[i] = op.backward(g[i], x[i], t) and returns Σ t[k] for k < 4, in op-math type.
template <typename scalar_t, typename Op, typename acc_t = typename Op::acc_t>
std::array<acc_t, 4> map2_reduce4(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                  scalar_t* __restrict__ dx, int64_t n, Op op) {
  op.load();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<std::array<acc_t, 4>> partial(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      const int64_t begin = ch * kChunk, end = std::min(n, begin + kChunk);
      acc_t acc[4][kLanes] = {};
      int64_t i = begin;
      for (; i + kLanes <= end; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          acc_t t[4];
          dx[i + l] = op.backward(g[i + l], x[i + l], t);
          for (int k = 0; k < 4; ++k) acc[k][l] += t[k];
        }
      }
      for (int l = 0; i < end; ++i, ++l) {
        acc_t t[4];
        dx[i] = op.backward(g[i], x[i], t);
        for (int k = 0; k < 4; ++k) acc[k][l] += t[k];
      }
      for (int k = 0; k < 4; ++k) {
        acc_t s = 0;
        for (int l = 0; l < kLanes; ++l) s += acc[k][l];
        partial[ch][k] = s;
      }
    }
  });
  std::array<acc_t, 4> sums = {};
  for (const auto& p : partial)
    for (int k = 0; k < 4; ++k) sums[k] += p[k];
  return sums;
}

}  // namespace cpu
}  // namespace torchext

// ---- drivers: dispatch on dtype and run a loop over what common.h prepared -------------------
// Every op's CPU kernel is one of these four; cpu/<op>.cpp only names its functor.

#include <ATen/Dispatch.h>

#include <tuple>

#include "../common.h"

namespace torchext {
namespace cpu {

#define TORCHEXT_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

using Grads5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// y = f(x)
template <template <typename> class Op>
at::Tensor unary_forward(const char* op, const at::Tensor& x) {
  Forward f = prepare_forward(op, x);
  TORCHEXT_DISPATCH_FLOATING(f.x.scalar_type(), "torchext", [&] {
    map(f.x.const_data_ptr<scalar_t>(), f.y.mutable_data_ptr<scalar_t>(), f.x.numel(),
        Op<scalar_t>{});
  });
  return f.y;
}

// dx = f'(g, v), v being what the forward saved (x, or the result for ReLU).
template <template <typename> class Op>
at::Tensor unary_backward(const char* op, const at::Tensor& grad, const at::Tensor& v,
                          const char* v_name) {
  Backward bw = prepare_backward(op, grad, v, v_name);
  TORCHEXT_DISPATCH_FLOATING(bw.v.scalar_type(), "torchext", [&] {
    map2(bw.g.const_data_ptr<scalar_t>(), bw.v.const_data_ptr<scalar_t>(),
         bw.dx.mutable_data_ptr<scalar_t>(), bw.v.numel(), Op<scalar_t>{});
  });
  return bw.dx;
}

// y = f(x; a, b, c, d)
template <template <typename> class Op>
at::Tensor coef_forward(const char* op, const at::Tensor& x, const at::Tensor& a,
                        const at::Tensor& b, const at::Tensor& c, const at::Tensor& d) {
  Forward f = prepare_forward(op, x, a, b, c, d);
  TORCHEXT_DISPATCH_FLOATING(f.x.scalar_type(), "torchext", [&] {
    map(f.x.const_data_ptr<scalar_t>(), f.y.mutable_data_ptr<scalar_t>(), f.x.numel(),
        Op<scalar_t>{f.coefs});
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
    const auto sums = map2_reduce4(bw.g.const_data_ptr<scalar_t>(), bw.v.const_data_ptr<scalar_t>(),
                                   bw.dx.mutable_data_ptr<scalar_t>(), bw.v.numel(),
                                   Op<scalar_t>{bw.coefs});
    for (int k = 0; k < 4; ++k) math::store(bw.coef_out.ptr[k], bw.coef_out.dtype[k], sums[k]);
  });
  auto& cg = bw.coef_grads;
  return {bw.dx, cg[0], cg[1], cg[2], cg[3]};
}

}  // namespace cpu
}  // namespace torchext
