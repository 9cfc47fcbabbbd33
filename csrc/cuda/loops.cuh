// The CUDA kernels of every op, over what layout.h prepared, mirroring cpu/loops.h:
//
//   one-element coefficients (C == 1, and the ops without coefficients): grid-stride kernels
//   over the flat index, 16-byte loads when every pointer is aligned (two per input per thread
//   before computing; the unaligned path unrolls four scalar loads: kUnroll), the grid from the
//   occupancy of the kernel launched (one full wave); the backward writes dx and one partial sum
//   per block and coefficient, added by one block in a fixed order.
//
//   per-slot coefficients (C > 1): a block per tile of layout.h's Tiling (runs, or columns of
//   whole slots), each writing its partial sums; one kernel adds each slot's partials in a fixed
//   order (a block per slot, or a thread per slot where each has few) and writes the per-slot
//   gradients in their dtypes; another adds a one-element coefficient's over the slots.
//
// Each thread adds its chain of terms compensated (ThreadSums: math.h's kahan_add, as the CPU
// does), and a block merges its threads' sums and compensations up a tree of shuffles.
// No atomics: the gradients are bitwise the same on every run on the same GPU model (the flat
// grid depends on the SM count and occupancy) for inputs of the same alignment (which picks the
// 16-byte or the scalar path). Launched on the current stream of x's device under a device
// guard, C10_CUDA_KERNEL_LAUNCH_CHECK after each launch; coefficients are read inside the kernels
// (or, 0-dim CPU tensors, passed by value), never with .item() on the device: no host-device
// sync, CUDA-graph safe. nvcc contracts a*b+c into FMAs by default and setup.py leaves it on (the
// CPU build turns contraction off for identical bits across its ISAs; CUDA and CPU results agree
// to rounding, not bit for bit, either way).
//
// Inputs are read in place when dense in the result's layout or stride-0 everywhere (expanded
// from one element, as the gradient of y.sum() is); other strides are copied to the result's
// layout first.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <limits>

#include "../layout.h"
#include "../ops.h"

namespace torchext {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxDevices = 64;

// The elements one 16-byte load holds.
template <typename T>
constexpr int kVec = 16 / sizeof(T) > 0 ? 16 / sizeof(T) : 1;

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <class Op, typename scalar_t>
using compute_t = std::conditional_t<kOnStoredType<Op>, scalar_t, at::opmath_type<scalar_t>>;

// ---- launch geometry ----------------------------------------------------------------------------

inline int sm_count(int device) {
  static std::atomic<int> cache[kMaxDevices] = {};
  int n = device < kMaxDevices ? cache[device].load(std::memory_order_relaxed) : 0;
  if (n == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    if (device < kMaxDevices) cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

// How many blocks of this kernel an SM holds at once (its registers and shared memory decide),
// asked once per kernel and device.
template <auto Kernel>
int blocks_per_sm(int device) {
  static std::atomic<int> cache[kMaxDevices] = {};
  int n = device < kMaxDevices ? cache[device].load(std::memory_order_relaxed) : 0;
  if (n == 0) {
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, Kernel, kThreads, 0));
    n = std::max(n, 1);
    if (device < kMaxDevices) cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

// One full wave of resident blocks of Kernel, fewer when there is less work.
template <auto Kernel>
int64_t grid_for(int64_t items, int device) {
  const int64_t wanted = (items + kThreads - 1) / kThreads;
  const int64_t wave = int64_t{sm_count(device)} * blocks_per_sm<Kernel>(device);
  return std::max<int64_t>(1, std::min(wanted, wave));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ---- coefficients and gradients as kernel arguments ---------------------------------------------

// The coefficients, read where the kernels need them, in their own dtypes: no table in T first
// (the CPU's loops build one for few slots, cpu/loops.h). A tile thread reads its slot's values
// once for all its rows, so a table would only add a kernel launch, an allocation and, for a
// coefficient per element, a copy of it to every call.
template <int N>
struct CoefArgs {
  const void* ptr[N > 0 ? N : 1];
  math::Dtype dtype[N > 0 ? N : 1];
  double value[N > 0 ? N : 1];   // where ptr is null
  bool per_slot[N > 0 ? N : 1];  // C values (slot c's at ptr's c-th element), or one

  // The values at slot c (one-element coefficients: their one value, whatever c).
  template <typename T>
  __device__ void load(T* k, int64_t c = 0) const {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const char* p = static_cast<const char*>(ptr[j]);
      if (p && per_slot[j]) p += c * math::dtype_size(dtype[j]);
      k[j] = p ? math::load<T>(p, dtype[j]) : T(value[j]);
    }
  }
};

template <int N>
CoefArgs<N> coef_args(const Call& call) {
  CoefArgs<N> a{};
  for (int j = 0; j < N; ++j) {
    a.ptr[j] = call.coefs[j].data;
    a.dtype[j] = call.coefs[j].dtype;
    a.value[j] = call.coefs[j].host_value;
    a.per_slot[j] = call.coefs[j].per_slot;
  }
  return a;
}

template <int N>
struct GradArgs {  // where each coefficient's gradient goes: C values, or one
  void* ptr[N > 0 ? N : 1];
  math::Dtype dtype[N > 0 ? N : 1];
  bool per_slot[N > 0 ? N : 1];
};

template <int N>
GradArgs<N> grad_args(Call& call) {
  GradArgs<N> a{};
  for (int j = 0; j < N; ++j) {
    a.ptr[j] = call.kernel_grads[j].mutable_data_ptr();
    a.dtype[j] = code_of(call.kernel_grads[j].scalar_type());
    a.per_slot[j] = call.grad_per_slot[j];
  }
  return a;
}

// ---- block sums -------------------------------------------------------------------------------

// A thread's N running sums, compensated (math.h's kahan_add, as the CPU's): each thread adds its
// chain of terms (a tile's rows, or a slot's partials) with the rounding errors kept, and
// block_sum then merges the threads' pairs up a tree the same way, so that a block's sums lose
// only their final rounding: at least as accurate as torch.sum of the same terms (test_ops.py's
// test_coefficient_gradients_as_accurate_as_torch_sum on a GPU, and test_cuda_emulated.py's).
// With plain trees, the one-element sums of 2^16 terms over two blocks (the emulated GPU's)
// came out less accurate than the CPU's torch.sum.
template <typename T, int N>
struct ThreadSums {
  T sum[N > 0 ? N : 1] = {}, comp[N > 0 ? N : 1] = {};

  __device__ void add(int j, T v) { math::kahan_add(sum[j], comp[j], v); }
  __device__ void add(const T* terms) {
#pragma unroll
    for (int j = 0; j < N; ++j) add(j, terms[j]);
  }
  // Another running sum (s, its compensation c) merged into sum j.
  __device__ void merge(int j, T s, T c) {
    add(j, s);
    comp[j] += c;
  }
  __device__ T total(int j) const { return sum[j] + comp[j]; }
};

// Merges every thread's sums over the block in a fixed order (shuffles, then one warp); thread 0's
// then hold the block's.
template <typename T, int N>
__device__ void block_sum(ThreadSums<T, N>& p) {
  __shared__ T warp_sums[kWarps][N > 0 ? N : 1][2];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const auto warp_merge = [&p](int k) {
    for (int off = 16; off > 0; off /= 2) {
      const T s = __shfl_down_sync(0xffffffffu, p.sum[k], off);
      const T c = __shfl_down_sync(0xffffffffu, p.comp[k], off);
      p.merge(k, s, c);
    }
  };
#pragma unroll
  for (int k = 0; k < N; ++k) warp_merge(k);
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) {
    for (int k = 0; k < N; ++k) {
      warp_sums[warp][k][0] = p.sum[k];
      warp_sums[warp][k][1] = p.comp[k];
    }
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      p.sum[k] = lane < kWarps ? warp_sums[lane][k][0] : T(0);
      p.comp[k] = lane < kWarps ? warp_sums[lane][k][1] : T(0);
      warp_merge(k);
    }
  }
}

// ---- one-element coefficients: grid-stride kernels ---------------------------------------------
// An item is V elements (one 16-byte load, or V == 1); each thread takes U items per iteration,
// all loaded before any is computed. sx, sg: 1, or 0 for an input expanded from one element.
// A forward's x and y (and the tile kernels' x and out) are not __restrict__: in place they are
// the same memory, which __restrict__ would declare they are not (nvcc then reads x through the
// read-only cache, which a kernel must not write to).

template <int V>
constexpr int kUnroll = V > 1 ? 2 : 4;

template <class Op, int V, typename scalar_t, typename T, int N>
__global__ void __launch_bounds__(kThreads)
    map_kernel(const scalar_t* x, int64_t sx, scalar_t* y, int64_t n, CoefArgs<N> coefs) {
  using P = Pack<scalar_t, V>;
  constexpr int U = kUnroll<V>;
  T k[N > 0 ? N : 1];
  coefs.load(k);
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t items = n / V;
  for (int64_t base = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; base < items;
       base += stride * U) {
    P in[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = base + u * stride;
      if (i < items) {
        if constexpr (V > 1) {
          in[u] = reinterpret_cast<const P*>(x)[i];
        } else {
          in[u].v[0] = x[i * sx];
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = base + u * stride;
      if (i < items) {
        P out;
#pragma unroll
        for (int e = 0; e < V; ++e) out.v[e] = static_cast<scalar_t>(Op::forward(T(in[u].v[e]), k));
        reinterpret_cast<P*>(y)[i] = out;
      }
    }
  }
  // The elements after the last whole item (V > 1).
  for (int64_t i = items * V + int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = static_cast<scalar_t>(Op::forward(T(x[i * sx]), k));
}

// dx = op.backward(g, v), with the N coefficient terms added to the thread's sums s.
template <class Op, typename T, int N, typename scalar_t>
__device__ inline scalar_t backward_one(scalar_t g, scalar_t v, const T* k, ThreadSums<T, N>& s) {
  T terms[N > 0 ? N : 1];
  const T dx = Op::backward(T(g), T(v), k, terms);
  s.add(terms);
  return static_cast<scalar_t>(dx);
}

// dx over the flat index (none where dx is null: not wanted); with coefficients, one partial sum
// per block and coefficient at partial[block * N + j] (none where partial is null).
template <class Op, int V, typename scalar_t, typename T, int N>
__global__ void __launch_bounds__(kThreads)
    map2_kernel(const scalar_t* __restrict__ g, int64_t sg, const scalar_t* __restrict__ v,
                int64_t sv, scalar_t* __restrict__ dx, int64_t n, CoefArgs<N> coefs,
                T* __restrict__ partial) {
  using P = Pack<scalar_t, V>;
  constexpr int U = kUnroll<V>;
  T k[N > 0 ? N : 1];
  ThreadSums<T, N> s;
  coefs.load(k);
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t items = n / V;
  for (int64_t base = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; base < items;
       base += stride * U) {
    P gin[U], vin[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = base + u * stride;
      if (i < items) {
        if constexpr (V > 1) {
          gin[u] = reinterpret_cast<const P*>(g)[i];
          vin[u] = reinterpret_cast<const P*>(v)[i];
        } else {
          gin[u].v[0] = g[i * sg];
          vin[u].v[0] = v[i * sv];
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = base + u * stride;
      if (i < items) {
        P out;
#pragma unroll
        for (int e = 0; e < V; ++e)
          out.v[e] = backward_one<Op, T, N>(gin[u].v[e], vin[u].v[e], k, s);
        if (dx) reinterpret_cast<P*>(dx)[i] = out;
      }
    }
  }
  for (int64_t i = items * V + int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    const scalar_t d = backward_one<Op, T, N>(g[i * sg], v[i * sv], k, s);
    if (dx) dx[i] = d;
  }
  if constexpr (N > 0) {
    if (!partial) return;  // the same for every thread of the block: block_sum's barriers hold
    block_sum(s);
    if (threadIdx.x == 0)
      for (int j = 0; j < N; ++j) partial[blockIdx.x * N + j] = s.total(j);
  }
}

// Thread 0 stores a block's sums as the one-element gradients (the per-slot ones of a tiled
// call are the finish kernels' below).
template <typename T, int N>
__device__ void store_one_element_grads(const GradArgs<N>& out, const ThreadSums<T, N>& sums) {
  if (threadIdx.x != 0) return;
  for (int j = 0; j < N; ++j)
    if (!out.per_slot[j]) math::store(out.ptr[j], out.dtype[j], sums.total(j));
}

// One block: adds the blocks' partial sums in a fixed order and stores the gradients.
template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    finish_flat_kernel(const T* __restrict__ partial, int64_t blocks, GradArgs<N> out) {
  ThreadSums<T, N> sums;
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x)
    for (int j = 0; j < N; ++j) sums.add(j, partial[b * N + j]);
  block_sum(sums);
  store_one_element_grads(out, sums);
}

// ---- per-slot coefficients: tile kernels ------------------------------------------------------

// The geometry of a tiled call, as kernel arguments.
struct TileArgs {
  int64_t C, P, W, rows, rows_per_tile, seg, segs, slots_per_tile, col_tiles;
};

inline TileArgs tile_args(const Slots& s, const Tiling& t) {
  return {s.C, s.P, t.W, t.rows, t.rows_per_tile, t.seg, t.segs, t.slots_per_tile, t.col_tiles};
}

// Runs: a block per tile (rows [r0, r1) of one segment of slot c's run); the segment's elements
// are read V at a time when vec (every segment then starts on a 16-byte boundary).
template <class Op, bool kBackward, int V, typename scalar_t, typename T, int N>
__global__ void __launch_bounds__(kThreads)
    run_tile_kernel(TileArgs a, const scalar_t* __restrict__ g, int64_t sg, const scalar_t* x,
                    int64_t sx, scalar_t* out, CoefArgs<N> coefs, T* __restrict__ partial) {
  using P = Pack<scalar_t, V>;
  const int64_t t = blockIdx.x;
  const int64_t s = t % a.segs, c = (t / a.segs) % a.C, rt = t / (a.segs * a.C);
  const int64_t r0 = rt * a.rows_per_tile, r1 = min(a.rows, r0 + a.rows_per_tile);
  const int64_t begin = c * a.P + s * a.seg, len = min(a.seg, a.P - s * a.seg);
  T k[N > 0 ? N : 1];
  ThreadSums<T, N> sums;
  coefs.load(k, c);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t e0 = r * a.W + begin;
    for (int64_t i = threadIdx.x * V; i < len; i += int64_t{blockDim.x} * V) {
      const int64_t e = e0 + i;
      P xin, res;
      if constexpr (V > 1) {
        xin = *reinterpret_cast<const P*>(x + e);
      } else {
        xin.v[0] = x[e * sx];
      }
      if constexpr (kBackward) {
        P gin;
        if constexpr (V > 1) {
          gin = *reinterpret_cast<const P*>(g + e);
        } else {
          gin.v[0] = g[e * sg];
        }
#pragma unroll
        for (int u = 0; u < V; ++u) res.v[u] = backward_one<Op, T, N>(gin.v[u], xin.v[u], k, sums);
      } else {
#pragma unroll
        for (int u = 0; u < V; ++u) res.v[u] = static_cast<scalar_t>(Op::forward(T(xin.v[u]), k));
      }
      if (!kBackward || out) *reinterpret_cast<P*>(out + e) = res;
    }
  }
  if constexpr (kBackward && N > 0) {
    if (!partial) return;  // the same for every thread of the block: block_sum's barriers hold
    block_sum(sums);
    if (threadIdx.x == 0)
      for (int j = 0; j < N; ++j) partial[t * N + j] = sums.total(j);
  }
}

// Columns: a block per tile (rows [r0, r1) of slots [c0, c1), ncols = (c1 - c0)·P columns, at
// most kThreads·kColsPerThread). Thread t owns the columns t, t + kThreads, ... when there are at
// least kThreads columns; else column t % ncols of every (kThreads / ncols)-th row, from row
// r0 + t / ncols. Each slot's sum is then taken over its threads' sums in shared memory.
constexpr int kColsPerThread = 4;
constexpr int64_t kMaxTileCols = kThreads * kColsPerThread;

template <class Op, bool kBackward, typename scalar_t, typename T, int N>
__global__ void __launch_bounds__(kThreads)
    col_tile_kernel(TileArgs a, const scalar_t* __restrict__ g, int64_t sg, const scalar_t* x,
                    int64_t sx, scalar_t* out, CoefArgs<N> coefs, T* __restrict__ partial) {
  extern __shared__ unsigned char shared_raw[];
  T* shared = reinterpret_cast<T*>(shared_raw);  // [N][kMaxTileCols]
  const int64_t ct = blockIdx.x % a.col_tiles, rt = blockIdx.x / a.col_tiles;
  const int64_t c0 = ct * a.slots_per_tile, c1 = min(a.C, c0 + a.slots_per_tile);
  const int64_t ncols = (c1 - c0) * a.P;
  const int64_t r0 = rt * a.rows_per_tile, r1 = min(a.rows, r0 + a.rows_per_tile);
  const int tid = threadIdx.x;
  // lanes: threads per column; a thread's first column and row.
  const int64_t lanes = ncols >= kThreads ? 1 : kThreads / ncols;
  const int64_t col = ncols >= kThreads ? tid : tid % ncols,
                lane = ncols >= kThreads ? 0 : tid / ncols;
  const bool active = lane < lanes;
  ThreadSums<T, N> sums[kColsPerThread];
  if (active) {
    for (int m = 0; m < kColsPerThread; ++m) {
      const int64_t q = col + int64_t{m} * kThreads;
      if (q >= ncols || (lanes > 1 && m > 0)) break;
      const int64_t slot = c0 + q / a.P;
      T k[N > 0 ? N : 1];
      coefs.load(k, slot);
      for (int64_t r = r0 + lane; r < r1; r += lanes) {
        const int64_t e = r * a.W + c0 * a.P + q;
        if constexpr (kBackward) {
          const scalar_t d = backward_one<Op, T, N>(g[e * sg], x[e * sx], k, sums[m]);
          if (out) out[e] = d;
        } else {
          out[e] = static_cast<scalar_t>(Op::forward(T(x[e * sx]), k));
        }
      }
    }
  }
  if constexpr (kBackward && N > 0) {
    if (!partial) return;  // the same for every thread of the block: the barrier below holds
    // Each thread's column sums into shared memory, at its (lane, column) place.
    for (int m = 0; m < kColsPerThread; ++m) {
      const int64_t q = col + int64_t{m} * kThreads;
      if (!active || q >= ncols || (lanes > 1 && m > 0)) break;
      for (int j = 0; j < N; ++j) shared[j * kMaxTileCols + lane * ncols + q] = sums[m].total(j);
    }
    __syncthreads();
    // Thread i sums slot (i % slots) of coefficient (i / slots) over its lanes and P columns.
    const int64_t slots = c1 - c0;
    for (int64_t i = tid; i < N * slots; i += kThreads) {
      const int j = static_cast<int>(i / slots);
      const int64_t sl = i % slots;
      ThreadSums<T, 1> total;
      for (int64_t l = 0; l < lanes; ++l)
        for (int64_t q = sl * a.P; q < (sl + 1) * a.P; ++q)
          total.add(0, shared[j * kMaxTileCols + l * ncols + q]);
      partial[(rt * N + j) * a.C + c0 + sl] = total.total(0);
    }
  }
}

// A slot's partials, in their fixed order, from the first-th on, every step-th, added to sums.
template <typename T, int N>
__device__ void add_partials(const TileArgs& a, bool runs, int64_t row_tiles,
                             const T* __restrict__ partial, int64_t c, int64_t first, int64_t step,
                             ThreadSums<T, N>& sums) {
  if (runs) {
    for (int64_t i = first; i < row_tiles * a.segs; i += step) {
      const int64_t rt = i / a.segs, seg = i % a.segs;
      for (int j = 0; j < N; ++j) sums.add(j, partial[((rt * a.C + c) * a.segs + seg) * N + j]);
    }
  } else {
    for (int64_t rt = first; rt < row_tiles; rt += step)
      for (int j = 0; j < N; ++j) sums.add(j, partial[(rt * N + j) * a.C + c]);
  }
}

// Slot c's total of coefficient j: its gradient's value c where that has one per slot (in its
// dtype), else slot_sums[j * C + c], for finish_coefs_kernel to add over the slots.
template <typename T, int N>
__device__ void put_slot(const GradArgs<N>& out, T* __restrict__ slot_sums, int64_t C, int64_t c,
                         int j, T v) {
  if (out.per_slot[j]) {
    math::store(static_cast<char*>(out.ptr[j]) + c * math::dtype_size(out.dtype[j]), out.dtype[j],
                v);
  } else {
    slot_sums[j * C + c] = v;
  }
}

// Each slot's sums over its tiles' partials, a block per slot (many partials each: the rows'
// tiles of a long x).
template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    finish_slots_kernel(TileArgs a, bool runs, int64_t row_tiles, const T* __restrict__ partial,
                        T* __restrict__ slot_sums, GradArgs<N> out) {
  for (int64_t c = blockIdx.x; c < a.C; c += gridDim.x) {
    ThreadSums<T, N> sums;
    add_partials(a, runs, row_tiles, partial, c, threadIdx.x, blockDim.x, sums);
    block_sum(sums);
    if (threadIdx.x == 0)
      for (int j = 0; j < N; ++j) put_slot(out, slot_sums, a.C, c, j, sums.total(j));
  }
}

// The same, a thread per slot: for slots of few partials (kFewPartials; a coefficient per
// position or per element has one or two), where a block per slot would leave all but a few of
// its threads idle, and pay its tree's barriers for each of C slots.
constexpr int64_t kFewPartials = 32;

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    finish_slot_threads_kernel(TileArgs a, bool runs, int64_t row_tiles,
                               const T* __restrict__ partial, T* __restrict__ slot_sums,
                               GradArgs<N> out) {
  for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < a.C;
       c += int64_t{gridDim.x} * blockDim.x) {
    ThreadSums<T, N> sums;
    add_partials(a, runs, row_tiles, partial, c, 0, 1, sums);
    for (int j = 0; j < N; ++j) put_slot(out, slot_sums, a.C, c, j, sums.total(j));
  }
}

// The gradients of the one-element coefficients (of a call whose others are per slot): the sum
// of their slots' sums, kSlotsPerBlock slots a block. One block stores the gradients; several
// (a coefficient per element beside a one-element one: millions of slots, which one block would
// add alone) write their sums to partial[block * N + j], for finish_flat_kernel to add.
constexpr int64_t kSlotsPerBlock = 16 * kThreads;

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    finish_coefs_kernel(int64_t C, const T* __restrict__ slot_sums, GradArgs<N> out,
                        T* __restrict__ partial) {
  const int64_t c0 = int64_t{blockIdx.x} * kSlotsPerBlock, c1 = min(C, c0 + kSlotsPerBlock);
  ThreadSums<T, N> sums;
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x)
    for (int j = 0; j < N; ++j)
      if (!out.per_slot[j]) sums.add(j, slot_sums[j * C + c]);
  block_sum(sums);
  if (!partial) return store_one_element_grads(out, sums);
  // (Zero for a per-slot coefficient: none of its sums were added.)
  if (threadIdx.x == 0)
    for (int j = 0; j < N; ++j) partial[blockIdx.x * N + j] = sums.total(j);
}

// ---- drivers ----------------------------------------------------------------------------------

// Tiles for the tile kernels: ~16K elements (a block's work, several rows of a run's segment too);
// runs of 1024 elements or more tiled as runs; column tiles of at most kMaxTileCols columns, 256
// rows (each thread adds at most that many terms).
constexpr TileSizes kTileSizes{/*target=*/1 << 14,    /*min_run=*/1024, /*seg=*/1 << 12,
                               /*cols=*/kMaxTileCols, /*min_rows=*/1,   /*max_rows=*/256,
                               /*run_rows=*/256};

// An input as the kernels read it: its pointer and stride (1, or 0 when expanded from one
// element). Other strides: a copy in the result's layout, kept alive in *copy.
template <typename scalar_t>
const scalar_t* readable(const Operand& o, const at::Tensor& t, const at::Tensor& out,
                         at::Tensor* copy, int64_t* stride) {
  *stride = o.kind == Operand::kBroadcast ? 0 : 1;
  if (o.kind != Operand::kStrided) return static_cast<const scalar_t*>(o.data);
  *copy = at::empty_like(out).copy_(t);
  return copy->const_data_ptr<scalar_t>();
}

template <class Op>
struct Kernels {
  static constexpr int N = kNumCoefs<Op>;
  using Coefs = std::array<at::Tensor, N>;

  // The tile kernels over the whole call (forward: partial is null).
  template <bool kBackward, typename scalar_t, typename T>
  static void launch_tiles(const Tiling& tl, const Slots& slots, const scalar_t* g, int64_t sg,
                           const scalar_t* x, int64_t sx, scalar_t* out, const CoefArgs<N>& coefs,
                           T* partial, cudaStream_t stream) {
    constexpr int V = kVec<scalar_t>;
    // A block per tile: tiles hold hundreds of elements or more, so a grid beyond CUDA's 2^31 - 1
    // blocks would take some 2^40 elements; said, not assumed.
    TORCH_CHECK(tl.tiles <= std::numeric_limits<int32_t>::max(), "torchext: ", tl.tiles,
                " tiles are more blocks than a CUDA grid holds");
    // Shared memory beyond 48 KB a block needs cudaFuncSetAttribute's opt-in: an op of more
    // coefficients (kMaxCoefs is 8) would fail to launch without it.
    static_assert(size_t{N} * kMaxTileCols * sizeof(T) <= size_t{48} << 10,
                  "col_tile_kernel's sums outgrow the 48 KB a block gets without an opt-in");
    const TileArgs a = tile_args(slots, tl);
    if (tl.runs) {
      const bool vec = V > 1 && sx == 1 && (!kBackward || sg == 1) && aligned16(x) &&
                       aligned16(out) && (!kBackward || aligned16(g)) && slots.P % V == 0 &&
                       tl.seg % V == 0;
      if (vec) {
        run_tile_kernel<Op, kBackward, V, scalar_t, T, N>
            <<<tl.tiles, kThreads, 0, stream>>>(a, g, sg, x, sx, out, coefs, partial);
      } else {
        run_tile_kernel<Op, kBackward, 1, scalar_t, T, N>
            <<<tl.tiles, kThreads, 0, stream>>>(a, g, sg, x, sx, out, coefs, partial);
      }
    } else {
      const size_t shared = kBackward ? size_t{N} * kMaxTileCols * sizeof(T) : 0;
      col_tile_kernel<Op, kBackward, scalar_t, T, N>
          <<<tl.tiles, kThreads, shared, stream>>>(a, g, sg, x, sx, out, coefs, partial);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static at::Tensor forward(const at::Tensor& x, const Coefs& coefs) {
    Call call = prepare_forward(OpName<Op>::kQualified, x, {coefs.data(), Op::kCoefs.data(), N},
                                kIntegral<Op>);
    if (call.numel > 0) launch_forward(call, x);
    return call.out;
  }

  // x overwritten with the result (each element read, then written, by the same thread).
  static void inplace(const at::Tensor& x, const Coefs& coefs) {
    Call call = prepare_inplace(OpName<Op>::kQualified, x, {coefs.data(), Op::kCoefs.data(), N},
                                kIntegral<Op>);
    if (call.numel > 0) launch_forward(call, x);
    if (!call.out.is_same(x)) x.copy_(call.out);
  }

  static void launch_forward(Call& call, const at::Tensor& x) {
    const c10::cuda::CUDAGuard guard(x.device());
    const int device = x.get_device();
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
    TORCHEXT_DISPATCH(Op, x.scalar_type(), "torchext", [&] {
      using T = compute_t<Op, scalar_t>;
      at::Tensor x_copy;
      int64_t sx;
      const scalar_t* xp = readable<scalar_t>(call.x, x, call.out, &x_copy, &sx);
      scalar_t* y = call.out.mutable_data_ptr<scalar_t>();
      const int64_t n = call.numel;
      if (call.slots.C == 1) {
        constexpr int V = kVec<scalar_t>;
        if (V > 1 && sx == 1 && aligned16(xp) && aligned16(y)) {
          constexpr auto kernel = map_kernel<Op, V, scalar_t, T, N>;
          kernel<<<grid_for<kernel>(n / V, device), kThreads, 0, stream>>>(xp, sx, y, n,
                                                                           coef_args<N>(call));
        } else {
          constexpr auto kernel = map_kernel<Op, 1, scalar_t, T, N>;
          kernel<<<grid_for<kernel>(n, device), kThreads, 0, stream>>>(xp, sx, y, n,
                                                                       coef_args<N>(call));
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      if constexpr (N > 0) {
        const Tiling tl = make_tiling(n, call.slots, kTileSizes);
        launch_tiles<false>(tl, call.slots, static_cast<const scalar_t*>(nullptr), 0, xp, sx, y,
                            coef_args<N>(call), static_cast<T*>(nullptr), stream);
      }
    });
  }

  // The results not wanted (output_mask) are not computed, as on the CPU: without dx the kernels
  // write none (dx null), without any coefficient's gradient they take no sums (partial null) and
  // the sums' kernels do not run; finish_backward makes them zeros.
  static std::array<at::Tensor, N + 1> backward(const at::Tensor& grad, const at::Tensor& v,
                                                const Coefs& coefs,
                                                const std::array<bool, N + 1>& wanted) {
    Call call =
        prepare_backward(OpName<Op>::kQualified, grad, v, kSavedName<Op>,
                         {coefs.data(), Op::kCoefs.data(), N}, kBackwardReads<Op>, wanted.data());
    const c10::cuda::CUDAGuard guard(v.device());
    if (call.numel > 0 && (call.wants_dx() || call.wants_sums())) {
      const int device = v.get_device();
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "torchext", [&] {
        using T = compute_t<Op, scalar_t>;
        at::Tensor v_copy, g_copy;
        int64_t sv, sg;
        const scalar_t* vp = readable<scalar_t>(call.x, v, call.out, &v_copy, &sv);
        const scalar_t* gp = readable<scalar_t>(call.g, grad, call.out, &g_copy, &sg);
        scalar_t* dx = call.wants_dx() ? call.out.mutable_data_ptr<scalar_t>() : nullptr;
        if (call.slots.C == 1) {
          flat_backward<scalar_t, T>(call, gp, sg, vp, sv, dx, device, stream);
        } else if constexpr (N > 0) {
          tiled_backward<scalar_t, T>(call, gp, sg, vp, sv, dx, device, stream);
        }
      });
    }
    finish_backward(call);
    std::array<at::Tensor, N + 1> out;
    out[0] = call.out;
    for (int i = 0; i < N; ++i) out[i + 1] = call.grads[i];
    return out;
  }

  template <typename scalar_t, typename T>
  static void flat_backward(Call& call, const scalar_t* g, int64_t sg, const scalar_t* v,
                            int64_t sv, scalar_t* dx, int device, cudaStream_t stream) {
    constexpr int V = kVec<scalar_t>;
    const int64_t n = call.numel;
    const bool vec = V > 1 && sg == 1 && sv == 1 && aligned16(g) && aligned16(v) && aligned16(dx);
    constexpr auto vec_kernel = map2_kernel<Op, V, scalar_t, T, N>;
    constexpr auto scalar_kernel = map2_kernel<Op, 1, scalar_t, T, N>;
    const int64_t blocks =
        vec ? grid_for<vec_kernel>(n / V, device) : grid_for<scalar_kernel>(n, device);
    // The partials come from PyTorch's caching allocator: no cudaMalloc, no sync.
    at::Tensor partial;
    T* p = nullptr;
    if (N > 0 && call.wants_sums()) {
      partial =
          at::empty({blocks * N}, call.out.options().dtype(c10::CppTypeToScalarType<T>::value));
      p = partial.mutable_data_ptr<T>();
    }
    (vec ? vec_kernel : scalar_kernel)<<<blocks, kThreads, 0, stream>>>(g, sg, v, sv, dx, n,
                                                                        coef_args<N>(call), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if constexpr (N > 0) {
      if (!p) return;
      finish_flat_kernel<T, N><<<1, kThreads, 0, stream>>>(p, blocks, grad_args<N>(call));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }

  template <typename scalar_t, typename T>
  static void tiled_backward(Call& call, const scalar_t* g, int64_t sg, const scalar_t* v,
                             int64_t sv, scalar_t* dx, int device, cudaStream_t stream) {
    const Tiling tl = make_tiling(call.numel, call.slots, kTileSizes);
    at::Tensor partial;
    T* p = nullptr;
    if (call.wants_sums()) {
      partial = at::empty({tl.partials * N},
                          call.out.options().dtype(c10::CppTypeToScalarType<T>::value));
      p = partial.mutable_data_ptr<T>();
    }
    launch_tiles<true>(tl, call.slots, g, sg, v, sv, dx, coef_args<N>(call), p, stream);
    if (p) finish_tiles<T>(call, tl, p, device, stream);
  }

  // The coefficients' gradients from the tiles' partial sums: each slot's (a thread per slot
  // where each has at most kFewPartials, else a block), then the one-element coefficients' sums
  // over the slots, if any.
  template <typename T>
  static void finish_tiles(Call& call, const Tiling& tl, const T* partial, int device,
                           cudaStream_t stream) {
    const TileArgs a = tile_args(call.slots, tl);
    const GradArgs<N> out = grad_args<N>(call);
    const int64_t C = call.slots.C;
    const bool totals = !std::all_of(call.grad_per_slot, call.grad_per_slot + N,
                                     [](bool per_slot) { return per_slot; });
    const at::Tensor slot_sums = at::empty(
        {totals ? N * C : 0}, call.out.options().dtype(c10::CppTypeToScalarType<T>::value));
    T* sums = slot_sums.mutable_data_ptr<T>();
    if (tl.row_tiles * (tl.runs ? tl.segs : 1) <= kFewPartials) {
      constexpr auto kernel = finish_slot_threads_kernel<T, N>;
      kernel<<<grid_for<kernel>(C, device), kThreads, 0, stream>>>(a, tl.runs, tl.row_tiles,
                                                                   partial, sums, out);
    } else {
      finish_slots_kernel<T, N><<<std::min<int64_t>(C, 65535), kThreads, 0, stream>>>(
          a, tl.runs, tl.row_tiles, partial, sums, out);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!totals) return;
    const int64_t blocks = (C + kSlotsPerBlock - 1) / kSlotsPerBlock;
    at::Tensor block_sums;
    T* p = nullptr;
    if (blocks > 1) {
      block_sums = at::empty({blocks * N}, slot_sums.options());
      p = block_sums.mutable_data_ptr<T>();
    }
    finish_coefs_kernel<T, N><<<blocks, kThreads, 0, stream>>>(C, sums, out, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!p) return;
    finish_flat_kernel<T, N><<<1, kThreads, 0, stream>>>(p, blocks, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace cuda
}  // namespace torchext
