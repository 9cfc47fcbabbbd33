// The CPU loops, included twice by loops.h: once for baseline x86-64 (or whatever the target is)
// and once under `#pragma GCC target("avx2")`, each time in its own namespace
// (TORCHEXT_ISA). No include guard, on purpose. Only code that is ours lives here: a torch header
// included under the pragma would compile torch's inline functions for AVX2 too, and the linker
// could then hand those to a CPU without it.

namespace torchext {
namespace cpu {
namespace TORCHEXT_ISA {

// y[i] = op.forward(x[i])
template <typename scalar_t, typename Op>
void map(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, Op op) {
  op.load();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    const Op o = op;  // a local copy: stores through y cannot alias it
    for (int64_t i = begin; i < end; ++i) y[i] = o.forward(x[i]);
  });
}

// out[i] = op.backward(g[i], v[i])
template <typename scalar_t, typename Op>
void map2(const scalar_t* __restrict__ g, const scalar_t* __restrict__ v,
          scalar_t* __restrict__ out, int64_t n, Op op) {
  op.load();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    const Op o = op;
    for (int64_t i = begin; i < end; ++i) out[i] = o.backward(g[i], v[i]);
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
      const Op o = op;
      const int64_t begin = ch * kChunk, end = std::min(n, begin + kChunk);
      acc_t acc[4][kLanes] = {};
      int64_t i = begin;
      for (; i + kLanes <= end; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          acc_t t[4];
          dx[i + l] = o.backward(g[i + l], x[i + l], t);
          for (int k = 0; k < 4; ++k) acc[k][l] += t[k];
        }
      }
      for (int l = 0; i < end; ++i, ++l) {
        acc_t t[4];
        dx[i] = o.backward(g[i], x[i], t);
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

}  // namespace TORCHEXT_ISA
}  // namespace cpu
}  // namespace torchext
