// The CPU loops, included twice by loops.h: once for baseline x86-64 (or whatever the target is)
// and once under `#pragma GCC target("avx2,f16c")`, each time in its own namespace
// (TORCHEXT_ISA). No include guard, on purpose. Only code that is ours lives here: a torch header
// included under the pragma would compile torch's inline functions for AVX2 too, and the linker
// could then hand those to a CPU without it.

namespace torchext {
namespace cpu {
namespace TORCHEXT_ISA {

// ---- 16-bit types: converted a block at a time -------------------------------------------------
// The loops compute in op-math type: float and double in place; bfloat16 and half are widened to
// float a block at a time, computed as float, and narrowed back. c10's per-element conversions
// inside the math kept the compiler from vectorizing it: bfloat16 ran 2.5x and float16 25x slower
// than float32 (benchmarks/NOTES.md §5). The block conversions here are bit operations (bfloat16:
// widened by the compiler's vectorized code, narrowed with AVX2 intrinsics in the AVX2 build) or
// F16C instructions (half, AVX2 build).

constexpr int64_t kBlock = 256;  // a multiple of kLanes: block edges keep the reduction's order
static_assert(kBlock % kLanes == 0 && kChunk % kBlock == 0);

template <typename T>
constexpr bool kIs16Bit = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

// bfloat16 is float's upper half: exact.
inline void widen(const c10::BFloat16* src, float* __restrict__ dst, int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = uint32_t{bits[i]} << 16;
    std::memcpy(dst + i, &u, sizeof u);
  }
}

// Round to nearest even, as c10::BFloat16(float) does; a NaN keeps its sign and payload (made
// quiet), where c10 returns its one canonical NaN.
inline uint16_t bfloat16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>(f != f ? nan : rounded);
}

#if TORCHEXT_AVX2
// bfloat16_bits for 8 floats, in 32-bit lanes (each at most 0xFFFF).
inline __m256i bfloat16_bits(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i high = _mm256_srli_epi32(u, 16);
  const __m256i lsb = _mm256_and_si256(high, _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i nan = _mm256_or_si256(high, _mm256_set1_epi32(0x40));
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, nan, is_nan);
}
#endif

inline void narrow(const float* __restrict__ src, c10::BFloat16* dst, int64_t n) {
  uint16_t* bits = reinterpret_cast<uint16_t*>(dst);
  int64_t i = 0;
#if TORCHEXT_AVX2
  // gcc vectorizes the scalar loop too, but packs the rounded values, the NaNs and the mask each
  // to 16 bits before selecting: ~30 instructions per 16 elements against 20 here, and the
  // narrowing cost more than cubic's math (benchmarks/NOTES.md §9).
  for (; i + 16 <= n; i += 16) {
    const __m256i lo = bfloat16_bits(_mm256_loadu_ps(src + i));
    const __m256i hi = bfloat16_bits(_mm256_loadu_ps(src + i + 8));
    // packus packs within 128-bit halves (lo0 hi0 lo1 hi1); the permute puts them in order.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bits + i), packed);
  }
#endif
  for (; i < n; ++i) bits[i] = bfloat16_bits(src[i]);
}

#if TORCHEXT_AVX2
// Half: IEEE conversions in hardware (F16C), round to nearest even: the same values as c10's
// software conversions (NaN payloads are kept rather than made canonical).
inline void widen(const c10::Half* src, float* __restrict__ dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i].x);
}

inline void narrow(const float* __restrict__ src, c10::Half* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i)
    dst[i] = c10::Half(_cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT), c10::Half::from_bits());
}
#else
inline void widen(const c10::Half* src, float* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

inline void narrow(const float* __restrict__ src, c10::Half* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = c10::Half(src[i]);
}
#endif

// Calls body(y, len, in) over [begin, end) in the type T the functor computes in: with the
// pointers themselves where T is the stored type; with float blocks converted from and to the
// 16-bit types otherwise.
template <typename T, typename scalar_t, size_t N, typename Body>
void in_type(int64_t begin, int64_t end, std::array<const scalar_t*, N> in, scalar_t* y,
             const Body& body) {
  static_assert(std::is_same_v<T, scalar_t> || (std::is_same_v<T, float> && kIs16Bit<scalar_t>),
                "a functor computes in the stored type, or in float for the 16-bit types");
  if constexpr (std::is_same_v<T, scalar_t>) {
    for (auto& p : in) p += begin;
    body(y + begin, end - begin, in);
  } else {
    float out[kBlock], buf[N][kBlock];
    std::array<const float*, N> blocks;
    for (size_t k = 0; k < N; ++k) blocks[k] = buf[k];
    for (int64_t i = begin; i < end; i += kBlock) {
      const int64_t len = std::min(kBlock, end - i);
      for (size_t k = 0; k < N; ++k) widen(in[k] + i, buf[k], len);
      body(out, len, blocks);
      narrow(out, y + i, len);
    }
  }
}

// ---- the loops: op is the functor (math.h) instantiated for T, the type it computes in ----------
// (op-math, or the stored type: compute_t in loops.h)

// The T of a functor Op<T>.
template <template <typename> class Op, typename T>
T value_type_of(const Op<T>&);

// y[i] = op.forward(x[i])
template <typename scalar_t, typename Op>
void map(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, Op op) {
  using T = decltype(value_type_of(op));
  op.load();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    const Op o = op;  // a local copy: stores through y cannot alias it
    auto body = [&o](T* __restrict__ yb, int64_t len, std::array<const T*, 1> in) {
      const T* __restrict__ xb = in[0];
      for (int64_t i = 0; i < len; ++i) yb[i] = o.forward(xb[i]);
    };
    in_type<T, scalar_t, 1>(begin, end, {x}, y, body);
  });
}

// out[i] = op.backward(g[i], v[i])
template <typename scalar_t, typename Op>
void map2(const scalar_t* __restrict__ g, const scalar_t* __restrict__ v,
          scalar_t* __restrict__ out, int64_t n, Op op) {
  using T = decltype(value_type_of(op));
  op.load();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    const Op o = op;
    auto body = [&o](T* __restrict__ ob, int64_t len, std::array<const T*, 2> in) {
      const T* __restrict__ gb = in[0];
      const T* __restrict__ vb = in[1];
      for (int64_t i = 0; i < len; ++i) ob[i] = o.backward(gb[i], vb[i]);
    };
    in_type<T, scalar_t, 2>(begin, end, {g, v}, out, body);
  });
}

// dx[i] = op.backward(g[i], x[i], t) and returns Σ t[k] for k < 4, in op-math type.
template <typename scalar_t, typename Op, typename acc_t = typename Op::acc_t>
std::array<acc_t, 4> map2_reduce4(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                  scalar_t* __restrict__ dx, int64_t n, Op op) {
  using T = decltype(value_type_of(op));
  op.load();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<std::array<acc_t, 4>> partial(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      const Op o = op;
      acc_t acc[4][kLanes] = {};
      // Lane l takes the elements at offsets ≡ l (mod kLanes) from the chunk's start: the same
      // whole-chunk or block by block, since blocks start at multiples of kLanes.
      auto body = [&o, &acc](T* __restrict__ db, int64_t len, std::array<const T*, 2> in) {
        const T* __restrict__ gb = in[0];
        const T* __restrict__ xb = in[1];
        int64_t i = 0;
        for (; i + kLanes <= len; i += kLanes) {
          for (int l = 0; l < kLanes; ++l) {
            acc_t t[4];
            db[i + l] = o.backward(gb[i + l], xb[i + l], t);
            for (int k = 0; k < 4; ++k) acc[k][l] += t[k];
          }
        }
        for (int l = 0; i < len; ++i, ++l) {
          acc_t t[4];
          db[i] = o.backward(gb[i], xb[i], t);
          for (int k = 0; k < 4; ++k) acc[k][l] += t[k];
        }
      };
      in_type<T, scalar_t, 2>(ch * kChunk, std::min(n, (ch + 1) * kChunk), {g, x}, dx, body);
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
