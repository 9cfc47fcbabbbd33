// The CUDA loops every op shares, mirroring cpu/loops.h: an elementwise map, a two-input map,
// and the fused one-pass backward that writes dx and per-block partial sums of the four
// coefficient gradients; a second one-block kernel adds the partials in a fixed order and writes
// the gradients in the coefficients' own dtypes. No atomics: bitwise deterministic.
//
// Every kernel: grid-stride loop with 64-bit indices, 128-bit loads and stores when all pointers
// are 16-byte aligned (a scalar tail after), launched on the current stream of x's device under a
// device guard, C10_CUDA_KERNEL_LAUNCH_CHECK after the launch. Coefficients are read inside the
// kernels (math.h), never with .item(): no host-device sync, CUDA-graph safe.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <tuple>

#include "../common.h"

namespace torchext {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;  // 2048 resident threads per SM on sm_80/sm_90 at 256 a block
constexpr int kMaxDevices = 64;

// The elements one thread loads at once: 16 bytes.
template <typename T>
constexpr int kVec = 16 / sizeof(T);

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

inline int sm_count(int device) {
  static std::atomic<int> cache[kMaxDevices] = {};
  int n = device < kMaxDevices ? cache[device].load(std::memory_order_relaxed) : 0;
  if (n == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    if (device < kMaxDevices) cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

// One full wave of resident blocks, fewer when n is small. Depends only on n and the device, so
// the reduction's partial sums, and so its result, are the same on every run.
inline int64_t grid_for(int64_t work, int device) {
  const int64_t wanted = (work + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t{sm_count(device)} * kBlocksPerSm));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ---- kernels ------------------------------------------------------------------------------

template <int V, typename scalar_t, typename Op>
__global__ void __launch_bounds__(kThreads)
    map_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, Op op) {
  using P = Pack<scalar_t, V>;
  op.load();
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t nv = n / V;
  for (int64_t i = tid; i < nv; i += stride) {
    const P in = reinterpret_cast<const P*>(x)[i];
    P out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.v[k] = op.forward(in.v[k]);
    reinterpret_cast<P*>(y)[i] = out;
  }
  for (int64_t i = nv * V + tid; i < n; i += stride) y[i] = op.forward(x[i]);
}

template <int V, typename scalar_t, typename Op>
__global__ void __launch_bounds__(kThreads)
    map2_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ v,
                scalar_t* __restrict__ out, int64_t n, Op op) {
  using P = Pack<scalar_t, V>;
  op.load();
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t nv = n / V;
  for (int64_t i = tid; i < nv; i += stride) {
    const P gp = reinterpret_cast<const P*>(g)[i];
    const P vp = reinterpret_cast<const P*>(v)[i];
    P o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = op.backward(gp.v[k], vp.v[k]);
    reinterpret_cast<P*>(out)[i] = o;
  }
  for (int64_t i = nv * V + tid; i < n; i += stride) out[i] = op.backward(g[i], v[i]);
}

// Sums s[0..3] over the block in a fixed order (shuffles, then one warp); thread 0 gets the total.
template <typename acc_t>
__device__ void block_sum4(acc_t s[4]) {
  __shared__ acc_t warp_sums[kThreads / 32][4];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < 4; ++k)
    for (int off = 16; off > 0; off /= 2) s[k] += __shfl_down_sync(0xffffffffu, s[k], off);
  if (lane == 0)
    for (int k = 0; k < 4; ++k) warp_sums[warp][k] = s[k];
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      s[k] = lane < kThreads / 32 ? warp_sums[lane][k] : acc_t(0);
      for (int off = 16; off > 0; off /= 2) s[k] += __shfl_down_sync(0xffffffffu, s[k], off);
    }
  }
}

template <int V, typename scalar_t, typename Op, typename acc_t = typename Op::acc_t>
__global__ void __launch_bounds__(kThreads)
    map2_reduce4_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                        scalar_t* __restrict__ dx, int64_t n, Op op, acc_t* __restrict__ partial) {
  using P = Pack<scalar_t, V>;
  op.load();
  acc_t s[4] = {0, 0, 0, 0};
  acc_t t[4];
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t nv = n / V;
  for (int64_t i = tid; i < nv; i += stride) {
    const P gp = reinterpret_cast<const P*>(g)[i];
    const P xp = reinterpret_cast<const P*>(x)[i];
    P o;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      o.v[k] = op.backward(gp.v[k], xp.v[k], t);
#pragma unroll
      for (int j = 0; j < 4; ++j) s[j] += t[j];
    }
    reinterpret_cast<P*>(dx)[i] = o;
  }
  for (int64_t i = nv * V + tid; i < n; i += stride) {
    dx[i] = op.backward(g[i], x[i], t);
#pragma unroll
    for (int j = 0; j < 4; ++j) s[j] += t[j];
  }
  block_sum4(s);
  if (threadIdx.x == 0)
    for (int j = 0; j < 4; ++j) partial[blockIdx.x * 4 + j] = s[j];
}

// One block: adds `blocks` partials in a fixed order and stores each gradient in its dtype.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    finalize4_kernel(const acc_t* __restrict__ partial, int64_t blocks, math::CoefGrads out) {
  acc_t s[4] = {0, 0, 0, 0};
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x)
    for (int j = 0; j < 4; ++j) s[j] += partial[b * 4 + j];
  block_sum4(s);
  if (threadIdx.x == 0)
    for (int j = 0; j < 4; ++j) math::store(out.ptr[j], out.dtype[j], s[j]);
}

// ---- launchers ----------------------------------------------------------------------------

template <typename scalar_t, typename Op>
void map(const scalar_t* x, scalar_t* y, int64_t n, Op op, int device, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int V = kVec<scalar_t>;
  if (aligned16(x) && aligned16(y)) {
    map_kernel<V><<<grid_for((n + V - 1) / V, device), kThreads, 0, stream>>>(x, y, n, op);
  } else {
    map_kernel<1><<<grid_for(n, device), kThreads, 0, stream>>>(x, y, n, op);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename Op>
void map2(const scalar_t* g, const scalar_t* v, scalar_t* out, int64_t n, Op op, int device,
          cudaStream_t stream) {
  if (n == 0) return;
  constexpr int V = kVec<scalar_t>;
  if (aligned16(g) && aligned16(v) && aligned16(out)) {
    map2_kernel<V><<<grid_for((n + V - 1) / V, device), kThreads, 0, stream>>>(g, v, out, n, op);
  } else {
    map2_kernel<1><<<grid_for(n, device), kThreads, 0, stream>>>(g, v, out, n, op);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename Op, typename acc_t = typename Op::acc_t>
void map2_reduce4(const at::Tensor& like, const scalar_t* g, const scalar_t* x, scalar_t* dx,
                  int64_t n, Op op, const math::CoefGrads& out, int device, cudaStream_t stream) {
  constexpr int V = kVec<scalar_t>;
  const bool vec = aligned16(g) && aligned16(x) && aligned16(dx);
  const int64_t blocks = n == 0 ? 0 : grid_for(vec ? (n + V - 1) / V : n, device);
  // The partials come from PyTorch's caching allocator: no cudaMalloc, no sync.
  const at::Tensor partial =
      at::empty({std::max<int64_t>(blocks, 1) * 4},
                like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* p = partial.mutable_data_ptr<acc_t>();
  if (blocks > 0) {
    if (vec) {
      map2_reduce4_kernel<V><<<blocks, kThreads, 0, stream>>>(g, x, dx, n, op, p);
    } else {
      map2_reduce4_kernel<1><<<blocks, kThreads, 0, stream>>>(g, x, dx, n, op, p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  finalize4_kernel<<<1, kThreads, 0, stream>>>(p, blocks, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- drivers: dispatch on dtype and launch over what common.h prepared --------------------
// The CUDA twins of cpu/loops.h's drivers; cuda/<op>.cu only names its functor.

#define TORCHEXT_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

using Grads5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Runs launch(device, stream) with x's device current.
template <typename F>
void on_device_of(const at::Tensor& x, F launch) {
  const c10::cuda::CUDAGuard guard(x.device());
  launch(x.get_device(), c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
}

template <template <typename> class Op>
at::Tensor unary_forward(const char* op, const at::Tensor& x) {
  Forward f = prepare_forward(op, x);
  on_device_of(f.x, [&](int dev, cudaStream_t s) {
    TORCHEXT_DISPATCH_FLOATING(f.x.scalar_type(), "torchext", [&] {
      map(f.x.const_data_ptr<scalar_t>(), f.y.mutable_data_ptr<scalar_t>(), f.x.numel(),
          Op<scalar_t>{}, dev, s);
    });
  });
  return f.y;
}

template <template <typename> class Op>
at::Tensor unary_backward(const char* op, const at::Tensor& grad, const at::Tensor& v,
                          const char* v_name) {
  Backward bw = prepare_backward(op, grad, v, v_name);
  on_device_of(bw.v, [&](int dev, cudaStream_t s) {
    TORCHEXT_DISPATCH_FLOATING(bw.v.scalar_type(), "torchext", [&] {
      map2(bw.g.const_data_ptr<scalar_t>(), bw.v.const_data_ptr<scalar_t>(),
           bw.dx.mutable_data_ptr<scalar_t>(), bw.v.numel(), Op<scalar_t>{}, dev, s);
    });
  });
  return bw.dx;
}

template <template <typename> class Op>
at::Tensor coef_forward(const char* op, const at::Tensor& x, const at::Tensor& a,
                        const at::Tensor& b, const at::Tensor& c, const at::Tensor& d) {
  Forward f = prepare_forward(op, x, a, b, c, d);
  on_device_of(f.x, [&](int dev, cudaStream_t s) {
    TORCHEXT_DISPATCH_FLOATING(f.x.scalar_type(), "torchext", [&] {
      map(f.x.const_data_ptr<scalar_t>(), f.y.mutable_data_ptr<scalar_t>(), f.x.numel(),
          Op<scalar_t>{{f.coefs}}, dev, s);
    });
  });
  return f.y;
}

template <template <typename> class Op>
Grads5 coef_backward(const char* op, const at::Tensor& grad, const at::Tensor& x,
                     const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                     const at::Tensor& d) {
  Backward bw = prepare_backward(op, grad, x, a, b, c, d);
  on_device_of(bw.v, [&](int dev, cudaStream_t s) {
    TORCHEXT_DISPATCH_FLOATING(bw.v.scalar_type(), "torchext", [&] {
      map2_reduce4(bw.v, bw.g.const_data_ptr<scalar_t>(), bw.v.const_data_ptr<scalar_t>(),
                   bw.dx.mutable_data_ptr<scalar_t>(), bw.v.numel(), Op<scalar_t>{{bw.coefs}},
                   bw.coef_out, dev, s);
    });
  });
  auto& cg = bw.coef_grads;
  return {bw.dx, cg[0], cg[1], cg[2], cg[3]};
}

}  // namespace cuda
}  // namespace torchext
