// The CPU loops, included twice by loops.h: once for baseline x86-64 (or whatever the target is)
// and once under `#pragma GCC target("avx2,f16c")`, each time in its own namespace
// (TORCHEXT_ISA). No include guard, on purpose. Only code that is ours lives here: a torch header
// included under the pragma would compile torch's inline functions for AVX2 too, and the linker
// could then hand those to a CPU without it.
//
// A loop runs one tile of a Job (layout.h's Tiling): the rows of one run segment, of a few
// whole slots' columns, or a few whole rows of short runs. Inside, elements go a block (kBlock) at
// a time: read into T (the type the op computes in; a pointer into the input itself when it is
// dense and of that type), computed, written; a backward adds each block's terms into compensated
// sums.

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

// ---- prefetching -------------------------------------------------------------------------------
// The cache line of element p[offset], for reading (or kWrite, for writing). It may lie past the
// array's end (a prefetch never faults), so the address is computed as an integer.
template <bool kWrite = false, typename T>
inline void prefetch(const T* p, int64_t offset) {
  __builtin_prefetch(
      reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) + offset * sizeof(T)), kWrite);
}

// The cache lines of elements p[offset], ..., p[offset + n - 1].
template <bool kWrite = false, typename T>
inline void prefetch_lines(const T* p, int64_t offset, int64_t n) {
  for (int64_t i = 0; i < n; i += 64 / sizeof(T)) prefetch<kWrite>(p, offset + i);
}

// ---- reading inputs -------------------------------------------------------------------------

// Converts n stored values to the compute type T (the same type: a copy).
template <typename T, typename scalar_t>
inline void convert(const scalar_t* src, T* __restrict__ dst, int64_t n) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    std::memcpy(dst, src, n * sizeof(T));
  } else {
    widen(src, dst, n);
  }
}

// The len elements of input o from flat index e on, in T: a pointer into o itself where it is
// dense and stored in T, else buf filled.
template <typename T, typename scalar_t>
const T* read(const Operand& o, int64_t e, int64_t len, T* __restrict__ buf) {
  const scalar_t* data = static_cast<const scalar_t*>(o.data);
  switch (o.kind) {
    case Operand::kDense:
      if constexpr (std::is_same_v<T, scalar_t>) {
        return data + e;
      } else {
        widen(data + e, buf, len);
        return buf;
      }
    case Operand::kBroadcast: {
      T v;
      convert<T>(data, &v, 1);
      for (int64_t i = 0; i < len; ++i) buf[i] = v;
      return buf;
    }
    default: {
      // Walk the strided dims as an odometer, innermost fastest, from e's position.
      int64_t idx[kMaxDims], offset = 0;
      const int n = o.ndim;
      for (int d = 0; d < n; ++d) {
        idx[d] = (e / o.ostride[d]) % o.size[d];
        offset += idx[d] * o.stride[d];
      }
      for (int64_t i = 0; i < len; ++i) {
        convert<T>(data + offset, buf + i, 1);
        int d = n - 1;
        offset += o.stride[d];
        while (++idx[d] == o.size[d] && d > 0) {
          offset -= o.size[d] * o.stride[d];
          idx[d] = 0;
          --d;
          offset += o.stride[d];
        }
      }
      return buf;
    }
  }
}

// Where a block's results are computed: the output itself when it is stored in T, else buf
// (narrowed into the output by write()).
template <typename T, typename scalar_t>
T* dest(scalar_t* out, int64_t e, T* buf) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return out + e;
  } else {
    return buf;
  }
}

template <typename T, typename scalar_t>
void write(scalar_t* out, int64_t e, const T* buf, int64_t len) {
  if constexpr (!std::is_same_v<T, scalar_t>) narrow(buf, out + e, len);
}

// ---- compensated sums (math.h's kahan_add) ----------------------------------------------------

// Pairwise sum of L lane accumulators, each a sum and its compensation.
template <int L, typename T>
inline T fold_lanes(const T* sum, const T* comp) {
  T s[L];
  for (int l = 0; l < L; ++l) s[l] = sum[l] + comp[l];
  for (int w = L / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) s[l] += s[l + w];
  return s[0];
}

// ---- one tile ---------------------------------------------------------------------------------

// Elements per block; a multiple of kLanes.
constexpr int64_t kBlock = 256;
static_assert(kBlock % kLanes == 0);
// Runs: a lane adds 16 elements plainly (a block of kLaneBlock), the block sums add plainly 16 at
// a time (kFlush), and those join the lane's compensated sum (a vectorized TwoSum per coefficient
// and lane, too dear to pay every block: benchmarks/NOTES.md §10).
constexpr int64_t kLaneBlock = 16 * kLanes;
constexpr int64_t kFlush = 16 * kLaneBlock;
// Column tiles: rows taken at once (their terms summed first), and rows added plainly before the
// block's sums join the compensated ones (a multiple of kRowsAtOnce). Each join is a TwoSum for
// every coefficient of every column; joined every 16 rows they cost a sixth of a channels-last
// backward's instructions, every 32 half that, and the sums stay more accurate than torch.sum's
// (test_coefficient_gradients_as_accurate_as_torch_sum; benchmarks/NOTES.md §15).
constexpr int kRowsAtOnce = 4;
constexpr int kRowsPerFlush = 32;
// A forward of wide rows beyond the caches (cpu/loops.h's kWideCoefBytes), float32 and float64:
// rows taken at once. Eight load each coefficient from L2 half as often as four: a float32
// forward at 8x197x3072 per channel took 0.78 to 0.88 of four rows' time; two and 16 rows ran
// slower than four (benchmarks/NOTES.md §31). 16-bit rows, read through buffers and prefetched,
// gained nothing and keep four.
constexpr int kWideRowsAtOnce = 8;
static_assert(kWideRowsAtOnce > kRowsAtOnce);
// A float32 or float64 backward beyond the caches (Tile::strips): rows taken at once. Each strip
// prefetches its lines in the next rows; two rows at a time are six streams where four are twelve,
// and the backward per channel / one-element at 8x197x3072 float32 read 1.25 to 1.48 against four
// rows' 1.67 to 1.92, at 32x197x768 1.43 to 1.55 against 1.62 to 1.67; eight rows 2.1 to 2.5
// (benchmarks/NOTES.md §34). 16-bit rows, through buffers, were not measured and keep four.
constexpr int kStreamRowsAtOnce = 2;
// Short runs: about how many terms a lane adds plainly before they join its compensated sum. Tiles
// of 20 rows of two runs of 200, summed plainly (500 terms a lane), were less accurate than
// torch.sum (test_coefficient_gradients_as_accurate_as_torch_sum).
constexpr int64_t kShortJoinTerms = 128;
static_assert(kRowsPerFlush % kRowsAtOnce == 0 && kRowsPerFlush % kStreamRowsAtOnce == 0);

// Compensated sums per lane, kept over a tile's run: the lane accumulators of each block of
// kLaneBlock elements are added plainly to block (absorb), and every kFlush elements block joins
// the compensated sums by a TwoSum per lane (flush); folded to one sum per coefficient when the
// tile ends.
template <typename T, int N>
struct LaneSums {
  static constexpr int NC = N > 0 ? N : 1;
  T sum[NC][kLanes] = {}, comp[NC][kLanes] = {}, block[NC][kLanes] = {};

  // Once per kLaneBlock elements. The empty asm tells gcc that memory may change here, so block
  // is added to as memory, a whole vector at a time: without it gcc keeps block's N * kLanes
  // values apart, in scalar registers and stack slots, and adds them one by one (~0.8
  // instructions per element more than the whole inner loop's ~2; callgrind, cubic).
  void absorb(const T (&acc)[NC][kLanes]) {
    for (int j = 0; j < N; ++j)
      for (int l = 0; l < kLanes; ++l) block[j][l] += acc[j][l];
    asm volatile("" ::: "memory");
  }
  void flush() {
    for (int j = 0; j < N; ++j) {
      for (int l = 0; l < kLanes; ++l) {
        kahan_add(sum[j][l], comp[j][l], block[j][l]);
        block[j][l] = T(0);
      }
    }
  }
  // Coefficient j's total: the lanes pairwise.
  T total(int j) const { return fold_lanes<kLanes>(sum[j], comp[j]); }
};

// dx[i] = op.backward(g[i], x[i]) for i < len (where the op writes dx), every element taking
// the coefficients k; the terms summed to lanes (independent accumulators the compiler keeps in
// vector registers: lane l adds the elements at offsets ≡ l mod kLanes) in two plain levels
// (kLaneBlock, kFlush), then into the lanes' compensated sums.
template <class Op, typename T, int N = kNumCoefs<Op>, int S = kSums<Op>>
void backward_span(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx,
                   int64_t len, const T* k, LaneSums<T, S>& sums) {
  T kk[N > 0 ? N : 1];
  for (int j = 0; j < N; ++j) kk[j] = k[j];
  if constexpr (S == 0) {
    T none[N > 0 ? N : 1];
    for (int64_t i = 0; i < len; ++i) dx[i] = Op::backward(g[i], x[i], kk, none);
  } else {
    for (int64_t f = 0; f < len; f += kFlush) {
      for (int64_t b = f; b < std::min(len, f + kFlush); b += kLaneBlock) {
        const int64_t end = std::min(len, b + kLaneBlock);
        const int64_t full = b + (end - b) / kLanes * kLanes;
        T acc[S][kLanes] = {};
        for (int64_t i = b; i < full; i += kLanes) {
          for (int l = 0; l < kLanes; ++l) {
            T terms[S];
            const T d = Op::backward(g[i + l], x[i + l], kk, terms);
            if constexpr (kWritesDx<Op>) dx[i + l] = d;
            for (int j = 0; j < S; ++j) acc[j][l] += terms[j];
          }
        }
        sums.absorb(acc);
        // The span's last elements (fewer than kLanes), lane by lane, into an array of their own:
        // acc, indexed by constants only, then stays in registers (else gcc zeroes a copy of it
        // in memory every block).
        if (full < end) {
          T rest[S][kLanes] = {};
          for (int64_t i = full; i < end; ++i) {
            T terms[S];
            const T d = Op::backward(g[i], x[i], kk, terms);
            if constexpr (kWritesDx<Op>) dx[i] = d;
            for (int j = 0; j < S; ++j) rest[j][i - full] = terms[j];
          }
          sums.absorb(rest);
        }
      }
      sums.flush();
    }
  }
}

template <class Op, typename scalar_t, typename T>
struct Tile {
  static constexpr int N = kNumCoefs<Op>;   // coefficients
  static constexpr int S = kSums<Op>;       // sums: N, or none (no coefficient's gradient wanted)
  static constexpr int NC = N > 0 ? N : 1;  // array sizes
  const Job<scalar_t, T>& job;

  // runs: the rows [r0, r1) of the run segment at [e0, e0 + len) of each row (relative to the
  // row's start), slot c.
  struct Run {
    int64_t r0, r1, begin, len, c;
  };
  Run run_of(int64_t t) const {
    const Tiling& tl = job.tiling;
    const int64_t s = t % tl.segs, c = (t / tl.segs) % job.slots.C,
                  rt = t / (tl.segs * job.slots.C);
    const int64_t P = job.slots.C == 1 ? tl.W : job.slots.P;
    const int64_t r0 = rt * tl.rows_per_tile, r1 = std::min(tl.rows, r0 + tl.rows_per_tile);
    const int64_t begin = c * P + s * tl.seg;
    return {r0, r1, begin, std::min(tl.seg, P - s * tl.seg), c};
  }

  // columns: the rows [r0, r1) of slots [c0, c1).
  struct Cols {
    int64_t r0, r1, c0, c1;
  };
  Cols cols_of(int64_t t) const {
    const Tiling& tl = job.tiling;
    const int64_t ct = t % tl.col_tiles, rt = t / tl.col_tiles;
    const int64_t c0 = ct * tl.slots_per_tile, c1 = std::min(job.slots.C, c0 + tl.slots_per_tile);
    const int64_t r0 = rt * tl.rows_per_tile, r1 = std::min(tl.rows, r0 + tl.rows_per_tile);
    return {r0, r1, c0, c1};
  }

  // The columns of slots [c.c0, c.c1) in a row: P each, in each of the rows folded into one (a
  // folded row's slots are all of them, in one column tile).
  int64_t width(const Cols& c) const { return (c.c1 - c.c0) * job.slots.P * job.tiling.fold; }

  // The middle of tile t's elements in memory order (flat index), halfway from its first to its
  // last: it grows with t.
  int64_t middle(int64_t t) const {
    const Tiling& tl = job.tiling;
    int64_t first, last;
    if (tl.runs) {
      const Run r = run_of(t);
      first = r.r0 * tl.W + r.begin;
      last = (r.r1 - 1) * tl.W + r.begin + r.len - 1;
    } else {
      const Cols c = cols_of(t);
      first = c.r0 * tl.W + c.c0 * job.slots.P;
      last = (c.r1 - 1) * tl.W + c.c0 * job.slots.P + width(c) - 1;
    }
    return first + (last - first) / 2;
  }

  // The first tile whose middle is at element e or after (tiles if none).
  int64_t first_tile_from(int64_t e) const {
    int64_t lo = 0, hi = job.tiling.tiles;
    while (lo < hi) {
      const int64_t t = lo + (hi - lo) / 2;
      if (middle(t) < e) {
        lo = t + 1;
      } else {
        hi = t;
      }
    }
    return lo;
  }

  // Coefficient j's values in slots [c0, c1), into to: the table's, or (no table) converted from
  // the coefficient itself.
  void slot_values(int j, int64_t c0, int64_t c1, T* to) const {
    if (job.table) {
      const T* row = job.table + j * job.slots.C;
      std::copy(row + c0, row + c1, to);
    } else {
      load_slots(job.coefs[j], c0, c1, to);
    }
  }

  void coefs_of_slot(int64_t c, T* k) const {
    for (int j = 0; j < N; ++j) slot_values(j, c, c + 1, k + j);
  }

  // The coefficients of the columns of slots [c0, c1): coefficient j of column q at
  // k[j * kstride + q]. With P == 1 (rows not folded) they are the table's own; else (or without
  // a table) expanded into ws, once for the thread's consecutive tiles of the same columns (with
  // one column tile, once a call): expanded per tile, a grouped forward cost twice a per-channel
  // one (benchmarks/NOTES.md §17).
  const T* coefs_of_columns(const Cols& c, Workspace<T>& ws, int64_t* kstride) const {
    const int64_t P = job.slots.P, C = job.slots.C;
    if (P == 1 && job.tiling.fold == 1 && job.table) {
      *kstride = C;
      return job.table + c.c0;
    }
    const int64_t ncols = width(c), slot_cols = (c.c1 - c.c0) * P;
    *kstride = ncols;
    if (ws.expanded_from != c.c0 || ws.expanded.size() != static_cast<size_t>(N * ncols)) {
      ws.expanded.resize(N * ncols);
      for (int j = 0; j < N; ++j) {
        // The slots' values, then each repeated P times from the last slot back (slot s's value,
        // at s, is read before columns s * P on are written), then the whole once more for each
        // row folded in.
        T* to = ws.expanded.data() + j * ncols;
        slot_values(j, c.c0, c.c1, to);
        for (int64_t s = P > 1 ? c.c1 - c.c0 - 1 : -1; s >= 0; --s) {
          const T v = to[s];
          std::fill(to + s * P, to + (s + 1) * P, v);
        }
        for (int64_t q = slot_cols; q < ncols; q += slot_cols)
          std::copy(to, to + slot_cols, to + q);
      }
      ws.expanded_from = c.c0;
    }
    return ws.expanded.data();
  }

  // ---- forward ----

  void forward_block(int64_t e, int64_t len, const T* k, int64_t kstride) const {
    if constexpr (std::is_same_v<T, scalar_t>) {
      if (job.inplace) return forward_inplace(job.out + e, len, k, kstride);
    }
    T xbuf[kBlock], ybuf[kBlock];
    const T* xb = read<T, scalar_t>(job.x, e, len, xbuf);
    T* yb = dest<T>(job.out, e, ybuf);
    forward_span(xb, yb, len, k, kstride);
    write<T>(job.out, e, yb, len);
  }

  // y[i] = op(x[i]), element i taking the coefficients k[j * kstride + i] (all of them k[j] where
  // kstride is 0).
  static void forward_span(const T* __restrict__ x, T* __restrict__ y, int64_t len, const T* k,
                           int64_t kstride) {
    if (kstride == 0) {
      T kk[NC];
      for (int j = 0; j < N; ++j) kk[j] = k[j];
      for (int64_t i = 0; i < len; ++i) y[i] = Op::forward(x[i], kk);
      return;
    }
    for (int64_t i = 0; i < len; ++i) {
      T kk[NC];
      for (int j = 0; j < N; ++j) kk[j] = k[j * kstride + i];
      y[i] = Op::forward(x[i], kk);
    }
  }

  // In place on the stored type: x's elements read and overwritten through one pointer
  // (forward_span's loops again: its two pointers are __restrict__, so they may not alias).
  static void forward_inplace(T* p, int64_t len, const T* k, int64_t kstride) {
    if (kstride == 0) {
      T kk[NC];
      for (int j = 0; j < N; ++j) kk[j] = k[j];
      for (int64_t i = 0; i < len; ++i) p[i] = Op::forward(p[i], kk);
      return;
    }
    for (int64_t i = 0; i < len; ++i) {
      T kk[NC];
      for (int j = 0; j < N; ++j) kk[j] = k[j * kstride + i];
      p[i] = Op::forward(p[i], kk);
    }
  }

  // Elements [e, e + len) of one slot, taking the coefficients k. Dense and stored in T: whole,
  // on the stored elements (a block at a time, the call and loop set-up per 256 elements cost a
  // quarter of an in-place ReLU in the caches).
  void forward_run(int64_t e, int64_t len, const T* k) const {
    if constexpr (std::is_same_v<T, scalar_t>) {
      if (job.inplace) return forward_inplace(job.out + e, len, k, 0);
      if (job.x.kind == Operand::kDense)
        return forward_span(static_cast<const T*>(job.x.data) + e, job.out + e, len, k, 0);
    }
    for (int64_t i = 0; i < len; i += kBlock) forward_block(e + i, std::min(kBlock, len - i), k, 0);
  }

  // Elements [b, e) in memory order, where each slot's elements lie in runs (one slot: one run),
  // each run's piece taking its slot's coefficients. A forward keeps no sums, so it needs no tiles
  // (walked tile by tile, a slot's run in several rows and then the next slot's, the elements came
  // in an order the prefetchers followed worse: benchmarks/NOTES.md §20).
  void forward_flat(int64_t b, int64_t e) const {
    T k[NC];
    const int64_t C = job.slots.C, P = job.tiling.W / C;  // one slot: P is every element
    for (int64_t i = b; i < e;) {
      const int64_t run = i / P, end = std::min(e, (run + 1) * P);
      coefs_of_slot(run % C, k);
      forward_run(i, end - i, k);
      i = end;
    }
  }

  // y = op(x) over R rows' columns (rows W apart; y may be x itself), column i taking the
  // coefficients k[j * kstride + i]: each coefficient loaded once for R elements. Row by row, the
  // coefficients' loads outnumber x's N to one, and bound the loop in the caches.
  template <int R>
  static void forward_columns(const T* x, T* y, int64_t W, int64_t len, const T* __restrict__ k,
                              int64_t kstride) {
    // Each element is read, then written, by one iteration: no store feeds another's load.
#pragma GCC ivdep
    for (int64_t i = 0; i < len; ++i) {
      T kk[NC];
      for (int j = 0; j < N; ++j) kk[j] = k[j * kstride + i];
      for (int r = 0; r < R; ++r) y[r * W + i] = Op::forward(x[r * W + i], kk);
    }
  }

  // forward_columns over R rows' block of len columns (from flat index e on, rows W apart),
  // converted to T in buffers and back: for the types the op computes in another type.
  template <int R>
  void forward_buffered(int64_t e, int64_t len, const T* k, int64_t kstride) const {
    static_assert(!std::is_same_v<T, scalar_t>, "T's own rows need no buffers: forward_columns");
    const int64_t W = job.tiling.W;
    T xbuf[R][kBlock], ybuf[R][kBlock];
    // Where job.prefetch (beyond the caches, or column tiles beyond the cores' own: prefetch_rows),
    // each row's block first prefetches its lines in the next R rows: inside a forward + backward
    // at 8x197x3072 bfloat16, the step's data outgrowing the caches, the forward without them took
    // 1.7 times the one-element one, with them 1.1 to 1.2 (NOTES.md §26, §29).
    const bool ahead = job.prefetch && job.x.kind == Operand::kDense;
    for (int r = 0; r < R; ++r) {
      if (ahead) prefetch_lines(static_cast<const scalar_t*>(job.x.data) + e + r * W, R * W, len);
      read<T, scalar_t>(job.x, e + r * W, len, xbuf[r]);
    }
    forward_columns<R>(xbuf[0], ybuf[0], kBlock, len, k, kstride);
    for (int r = 0; r < R; ++r) {
      if (job.prefetch) prefetch_lines</*kWrite=*/true>(job.out + e + r * W, R * W, len);
      write<T>(job.out, e + r * W, ybuf[r], len);
    }
  }

  // forward_columns over rows [row, r1) of tile c's columns, R at a time: x's own rows where
  // they are dense and in T (in place: the result's), else, for 16-bit types, through buffers a
  // block of columns at a time (forward_buffered); strided x in T takes none. Returns the first
  // row not taken (fewer than R are left).
  template <int R>
  int64_t forward_groups(const Cols& c, int64_t row, const T* k, int64_t kstride) const {
    const int64_t W = job.tiling.W, first = c.c0 * job.slots.P, ncols = width(c);
    if constexpr (std::is_same_v<T, scalar_t>) {
      if (!job.inplace && job.x.kind != Operand::kDense) return row;
      const T* x = job.inplace ? job.out : static_cast<const T*>(job.x.data);
      for (; row + R <= c.r1; row += R) {
        const int64_t e = row * W + first;
        forward_columns<R>(x + e, job.out + e, W, ncols, k, kstride);
      }
    } else {
      for (; row + R <= c.r1; row += R) {
        for (int64_t q = 0; q < ncols; q += kBlock)
          forward_buffered<R>(row * W + first + q, std::min(kBlock, ncols - q), k + q, kstride);
      }
    }
    return row;
  }

  // How many rows forward_rows takes at once over ncols columns. In the caches, kRowsAtOnce: each
  // coefficient loaded once for them (forward_columns). Beyond them, one, row by row in memory
  // order: four rows read and written in turn are more streams than the prefetchers follow, and
  // took 1.6 to 2 times as long there (benchmarks/NOTES.md §21); unless the rows' coefficients
  // are wide (kWideCoefBytes), which row by row each element loaded from L2: then float32 and
  // float64 take kWideRowsAtOnce, 16-bit rows four (forward_buffered prefetches the next four's
  // lines).
  int rows_at_once(int64_t ncols) const {
    if (!job.stream) return kRowsAtOnce;
    if (ncols * N * int64_t{sizeof(T)} <= kWideCoefBytes) return 1;
    return std::is_same_v<T, scalar_t> ? kWideRowsAtOnce : kRowsAtOnce;
  }

  // Elements [e, e + len) of one row, a block at a time, element e + q taking the coefficients
  // k[j * kstride + q]; beyond the caches each block first prefetches for writing the result's
  // lines kWriteAheadBytes on (cpu/loops.h says why).
  void forward_segment(int64_t e, int64_t len, const T* k, int64_t kstride) const {
    constexpr int64_t ahead = kWriteAheadBytes / int64_t{sizeof(T)};
    const bool write_ahead = std::is_same_v<T, scalar_t> && job.stream;
    for (int64_t q = 0; q < len; q += kBlock) {
      const int64_t n = std::min(kBlock, len - q);
      if (write_ahead) prefetch_lines</*kWrite=*/true>(job.out + e + q, ahead, n);
      forward_block(e + q, n, k + q, kstride);
    }
  }

  // Rows [c.r0, c.r1) of the columns of slots [c.c0, c.c1), taking their coefficients k:
  // rows_at_once at a time, the rows left (and strided x) row by row.
  void forward_rows(const Cols& c, const T* k, int64_t kstride) const {
    const int64_t W = job.tiling.W, first = c.c0 * job.slots.P, ncols = width(c);
    const int R = rows_at_once(ncols);
    int64_t row = c.r0;
    if constexpr (std::is_same_v<T, scalar_t>) {
      if (R == kWideRowsAtOnce) row = forward_groups<kWideRowsAtOnce>(c, row, k, kstride);
    }
    if (R >= kRowsAtOnce) row = forward_groups<kRowsAtOnce>(c, row, k, kstride);
    for (; row < c.r1; ++row) forward_segment(row * W + first, ncols, k, kstride);
  }

  // Column tile t (runs go flat: forward_flat).
  void forward(int64_t t, Workspace<T>& ws) const {
    const Cols c = cols_of(t);
    int64_t kstride;
    const T* k = coefs_of_columns(c, ws, &kstride);
    forward_rows(c, k, kstride);
  }

  // Elements [b, e) where a row is one column tile: the first and last rows in part, the rows
  // between whole. A forward keeps no sums, so it needs no tiles, and a thread takes exactly its
  // range (by tiles, two threads split 197 rows of 768 as 128 and 69).
  void forward_range(int64_t b, int64_t e, Workspace<T>& ws) const {
    const int64_t W = job.tiling.W;
    int64_t kstride;
    const T* k = coefs_of_columns({0, 0, 0, job.slots.C}, ws, &kstride);
    const int64_t rb = b / W, re = e / W;
    if (rb == re) return forward_segment(b, e - b, k + b % W, kstride);
    if (b % W) forward_segment(b, W - b % W, k + b % W, kstride);
    forward_rows({rb + (b % W != 0), re, 0, job.slots.C}, k, kstride);
    if (e % W) forward_segment(re * W, e % W, k, kstride);
  }

  // ---- short runs (Tiling::short_runs) ----
  // A slot's run (P elements, fewer than a block) goes a vector (Vec) at a time, its
  // coefficients broadcast; where P is not a multiple of a vector, the last vector overlaps the
  // one before: computed whole, its results written again (the same values), its terms summed
  // only in the lanes not summed yet. Row by row, in memory order, as the one-element loops walk.

  // Slot s's coefficients, broadcast.
  void slot_vecs(int64_t s, Vec<T>* kk) const {
    if (job.table) {
      for (int j = 0; j < N; ++j) kk[j] = Vec<T>(job.table[j * job.slots.C + s]);
    } else {
      T k[NC];
      coefs_of_slot(s, k);
      for (int j = 0; j < N; ++j) kk[j] = Vec<T>(k[j]);
    }
  }

  // y[i] = op(x[i]) for i < len (y may be x), every element taking the coefficients kk.
  static void forward_vecs(const T* x, T* y, int64_t len, const Vec<T>* kk) {
    using V = Vec<T>;
    constexpr int L = V::kSize;
    if (len < L) {  // a thread's range may start or end within a run
      T k[NC];
      for (int j = 0; j < N; ++j) k[j] = kk[j].v[0];
      for (int64_t i = 0; i < len; ++i) y[i] = Op::forward(x[i], k);
      return;
    }
    const V last = V::load(x + len - L);  // loaded before any store: y may be x
    int64_t i = 0;
    for (; i + L <= len; i += L) Op::forward(V::load(x + i), kk).store(y + i);
    if (i < len) Op::forward(last, kk).store(y + len - L);
  }

  // Input o's len elements from e on, in T: in place where it is dense and stored in T (read()
  // is a call), else converted or gathered into buf.
  static const T* run_input(const Operand& o, int64_t e, int64_t len, T* buf) {
    if constexpr (std::is_same_v<T, scalar_t>) {
      if (o.kind == Operand::kDense) return static_cast<const T*>(o.data) + e;
    }
    return read<T, scalar_t>(o, e, len, buf);
  }

  // Runs a block holds: whole runs, converted or gathered a block at a time (a call per run of
  // 49 bfloat16 elements took 2 to 3.5 times the columns' time).
  int64_t runs_per_block() const { return std::max<int64_t>(1, kBlock / job.slots.P); }

  // Elements [b, e) in memory order, a block of runs at a time (the first and last runs may be
  // parts).
  void forward_short(int64_t b, int64_t e) const {
    const int64_t C = job.slots.C, P = job.slots.P, per_block = runs_per_block();
    int64_t run = b / P, s = run % C;
    for (int64_t i = b; i < e;) {
      const int64_t end = std::min(e, (run + per_block) * P), len = end - i;
      T xbuf[kBlock], ybuf[kBlock];
      const T* x = run_input(job.x, i, len, xbuf);  // in place: x's own (job.x is x)
      T* y = dest<T>(job.out, i, ybuf);
      for (int64_t q = i; q < end; ++run) {
        const int64_t piece = std::min(end, (run + 1) * P) - q;
        Vec<T> kk[NC];
        slot_vecs(s, kk);
        forward_vecs(x + (q - i), y + (q - i), piece, kk);
        q += piece;
        if (++s == C) s = 0;
      }
      write<T>(job.out, i, y, len);
      i = end;
    }
  }

  // ---- backward ----

  // dx over a block whose elements all take the coefficients k; adds the block's terms to sums.
  void backward_block(int64_t e, int64_t len, const T* kk, LaneSums<T, S>& sums) const {
    T gbuf[kBlock], xbuf[kBlock], dbuf[kBlock];
    const T* gb = read<T, scalar_t>(job.g, e, len, gbuf);
    const T* xb = read<T, scalar_t>(job.x, e, len, xbuf);
    T* db = dest<T>(job.out, e, dbuf);
    backward_span<Op, T>(gb, xb, db, len, kk, sums);
    if constexpr (kWritesDx<Op>) write<T>(job.out, e, db, len);
  }

  // Whether the backward can run on the stored elements themselves: inputs dense and stored in
  // the type the op computes in (no gathering, no conversion).
  bool in_place_inputs() const {
    return std::is_same_v<T, scalar_t> && job.x.kind == Operand::kDense &&
           job.g.kind == Operand::kDense;
  }

  // R rows of operand o's len elements from flat index e on (rows W apart), in T: a pointer and
  // its row stride, into o itself where it is dense and stored in T, else into buf (prefetching
  // the same elements of the next R rows first where prefetch: Job::prefetch).
  template <int R>
  static const T* read_rows(const Operand& o, int64_t e, int64_t W, int64_t len, bool prefetch,
                            T (&buf)[R][kBlock], int64_t* stride) {
    if constexpr (std::is_same_v<T, scalar_t>) {
      if (o.kind == Operand::kDense) {
        *stride = W;
        return static_cast<const T*>(o.data) + e;
      }
    }
    for (int r = 0; r < R; ++r) {
      if (prefetch && o.kind == Operand::kDense)
        prefetch_lines(static_cast<const scalar_t*>(o.data) + e + r * W, R * W, len);
      read<T, scalar_t>(o, e + r * W, len, buf[r]);
    }
    *stride = kBlock;
    return buf[0];
  }

  // dx over R rows' block of columns (rows from flat index e on, W apart), column i taking the
  // coefficients k[j * kstride + i]; adds each column's terms, its R rows' summed first, to
  // acc[j * astride + i]. R rows at once load each coefficient and update each sum once per R
  // elements: one row at a time, those loads and stores cost more than the math.
  template <int R>
  void backward_columns(int64_t e, int64_t len, const T* __restrict__ k, int64_t kstride,
                        T* __restrict__ acc, int64_t astride) const {
    const int64_t W = job.tiling.W;
    T gbuf[R][kBlock], xbuf[R][kBlock], dbuf[R][kBlock];
    int64_t gs, xs;
    const T* __restrict__ g = read_rows<R>(job.g, e, W, len, job.prefetch, gbuf, &gs);
    const T* __restrict__ x = read_rows<R>(job.x, e, W, len, job.prefetch, xbuf, &xs);
    constexpr bool kDirect = std::is_same_v<T, scalar_t>;  // dx computed in the output itself
    T* __restrict__ d = dest<T>(job.out, e, dbuf[0]);
    const int64_t ds = kDirect ? W : kBlock;
    // Rows read and written in place (dense float inputs) and coefficient rows as far apart as
    // the sums' rows (one column tile of P == 1 slots): one stride each, which lets gcc keep the
    // loop's addresses in fewer registers (callgrind, cubic channels last: 5% fewer instructions
    // in the backward; benchmarks/NOTES.md §15).
    const bool unbuffered = gs == W && xs == W && ds == W;
    if constexpr (kDirect && N > 0) {
      if (unbuffered && job.stream)
        return strips<R>(g, W, x, W, d, W, len, k, kstride, acc, astride);
    }
    if (unbuffered && kstride == astride) {
      columns<R>(g, W, x, W, d, W, len, k, kstride, acc, kstride);
    } else {
      columns<R>(g, gs, x, xs, d, ds, len, k, kstride, acc, astride);
    }
    if constexpr (!kDirect && kWritesDx<Op>) {
      for (int r = 0; r < R; ++r) {
        if (job.prefetch) prefetch_lines</*kWrite=*/true>(job.out + e + r * W, R * W, len);
        write<T>(job.out, e + r * W, dbuf[r], len);
      }
    }
  }

  // The loop of backward_columns in the caches: row r of g at g + r * gs (so for x, d),
  // coefficient j's values at k + j * kstride (so for the sums, acc).
  template <int R>
  static void columns(const T* __restrict__ g, int64_t gs, const T* __restrict__ x, int64_t xs,
                      T* __restrict__ d, int64_t ds, int64_t len, const T* __restrict__ k,
                      int64_t kstride, T* __restrict__ acc, int64_t astride) {
    // The rows are disjoint (a block lies within a row): no store of one row feeds another.
#pragma GCC ivdep
    for (int64_t i = 0; i < len; ++i) {
      T kk[NC], terms[R][NC];
      for (int j = 0; j < N; ++j) kk[j] = k[j * kstride + i];
      for (int r = 0; r < R; ++r) {
        const T dx = Op::backward(g[r * gs + i], x[r * xs + i], kk, terms[r]);
        if constexpr (kWritesDx<Op>) d[r * ds + i] = dx;
      }
      for (int j = 0; j < S; ++j) {
        T sum = terms[0][j];
        for (int r = 1; r < R; ++r) sum += terms[r][j];
        acc[j * astride + i] += sum;
      }
    }
  }

  // The same sums in the same order (bit for bit columns'), for rows beyond the caches: a strip
  // of columns (a cache line of each row) at a time, down the R rows with its sums in registers,
  // each strip first prefetching its lines in the next R rows. Four rows read in turn are more
  // streams than the hardware prefetchers follow: out of the caches columns took twice the
  // one-element loop's time (benchmarks/NOTES.md §20). The last columns (less than a strip) go to
  // columns.
  template <int R>
  static void strips(const T* __restrict__ g, int64_t gs, const T* __restrict__ x, int64_t xs,
                     T* __restrict__ d, int64_t ds, int64_t len, const T* __restrict__ k,
                     int64_t kstride, T* __restrict__ acc, int64_t astride) {
    using V = Strip<T>;
    int64_t i = 0;
    for (; i + V::kSize <= len; i += V::kSize) {
      for (int r = R; r < 2 * R; ++r) {
        prefetch(g + i, r * gs);
        prefetch(x + i, r * xs);
        if constexpr (kWritesDx<Op>) prefetch</*kWrite=*/true>(d + i, r * ds);
      }
      V kk[NC], sum[NC];
      for (int j = 0; j < N; ++j) kk[j] = V::load(k + j * kstride + i);
      const V dx = Op::backward(V::load(g + i), V::load(x + i), kk, sum);  // row 0's terms
      if constexpr (kWritesDx<Op>) dx.store(d + i);
      const T* gr = g + i;
      const T* xr = x + i;
      T* dr = d + i;
      // Not unrolled: unrolled, it ran slower.
#pragma GCC unroll 1
      for (int r = 1; r < R; ++r) {
        gr += gs, xr += xs, dr += ds;
        V terms[NC];
        const V dxr = Op::backward(V::load(gr), V::load(xr), kk, terms);
        if constexpr (kWritesDx<Op>) dxr.store(dr);
        for (int j = 0; j < S; ++j) sum[j] = sum[j] + terms[j];
      }
      for (int j = 0; j < S; ++j)
        (V::load(acc + j * astride + i) + sum[j]).store(acc + j * astride + i);
    }
    columns<R>(g + i, gs, x + i, xs, d + i, ds, len - i, k + i, kstride, S > 0 ? acc + i : acc,
               astride);
  }

  // dx over elements [e, e + len) of one slot, taking the coefficients k; their terms into sums.
  void backward_run(int64_t e, int64_t len, const T* k, LaneSums<T, S>& sums) const {
    if constexpr (std::is_same_v<T, scalar_t>) {
      if (in_place_inputs()) {
        const T* g = static_cast<const T*>(job.g.data);
        const T* x = static_cast<const T*>(job.x.data);
        return backward_span<Op, T>(g + e, x + e, job.out + e, len, k, sums);
      }
    }
    for (int64_t i = 0; i < len; i += kBlock)
      backward_block(e + i, std::min(kBlock, len - i), k, sums);
  }

  // Elements [b, e), all in one slot, of a backward that takes no sums (an op without
  // coefficients, or no coefficient's gradient wanted).
  void backward_flat(int64_t b, int64_t e) const {
    static_assert(S == 0, "sums are kept per tile");
    T k[NC] = {};
    coefs_of_slot(0, k);
    LaneSums<T, S> none;
    backward_run(b, e - b, k, none);
  }

  // ws.sums: the column tiles' sums, all zero between tiles (each tile leaves them so), kept by
  // the caller from tile to tile: allocated and zeroed per tile, they were a measurable part of a
  // channels-last backward (benchmarks/NOTES.md §16).
  void backward(int64_t t, Workspace<T>& ws) const {
    const Tiling& tl = job.tiling;
    if (tl.runs) {
      const Run r = run_of(t);
      T k[NC];
      LaneSums<T, S> sums;
      coefs_of_slot(r.c, k);
      for (int64_t row = r.r0; row < r.r1; ++row)
        backward_run(row * tl.W + r.begin, r.len, k, sums);
      for (int j = 0; j < S; ++j) job.partial[t * S + j] = sums.total(j);
      return;
    }
    const Cols c = cols_of(t);
    if constexpr (N > 0) {
      if (tl.short_runs) return backward_short(c, t / tl.col_tiles, ws);
    }
    const int64_t P = job.slots.P, ncols = width(c);
    int64_t kstride;
    const T* k = coefs_of_columns(c, ws, &kstride);
    // kRowsAtOnce rows at a time, each row's columns in order: memory in order, as the forward
    // walks it. Per column, kRowsPerFlush rows added plainly (acc), then into compensated sums
    // (sum, comp), each [N][ncols].
    const int64_t rt = t / tl.col_tiles, width = S * ncols;
    T* acc = ws.tile_sums(width);
    T* sum = acc + width;
    T* comp = sum + width;
    // Dense rows of T need no buffers: a row's columns in one go, not a block at a time.
    const int64_t block = in_place_inputs() ? ncols : kBlock;
    // Rows whole: all but a folded tiling's last, which may hold fewer columns.
    const int64_t whole = tl.numel / tl.W;
    bool joined = false;
    // Beyond the caches rows in T take kStreamRowsAtOnce rows at a time: strips where they lie in
    // place, else (a strided gradient, say) the same rows through buffers, for the same bits.
    const bool streaming = job.stream && std::is_same_v<T, scalar_t>;
    const int at_once = streaming ? kStreamRowsAtOnce : kRowsAtOnce;
    for (int64_t row = c.r0; row < c.r1;) {
      const bool group = row + at_once <= std::min(c.r1, whole);
      const int64_t cols = row < whole ? ncols : tl.numel - row * tl.W;
      for (int64_t q = 0; q < cols; q += block) {
        const int64_t e = row * tl.W + c.c0 * P + q, len = std::min(block, cols - q);
        T* const a = S > 0 ? acc + q : nullptr;
        if (!group) {
          backward_columns<1>(e, len, k + q, kstride, a, ncols);
        } else if (streaming) {
          backward_columns<kStreamRowsAtOnce>(e, len, k + q, kstride, a, ncols);
        } else {
          backward_columns<kRowsAtOnce>(e, len, k + q, kstride, a, ncols);
        }
      }
      row += group ? at_once : 1;
      if constexpr (S > 0) {
        if ((row - c.r0) % kRowsPerFlush == 0 || row == c.r1) {
          if (row == c.r1 && ncols == c.c1 - c.c0) return finish_columns(c, rt, acc, sum, comp);
          join(acc, sum, comp, width, joined);
        }
      }
    }
    // Several columns per slot (P > 1, or rows folded): slot_sums adds each slot's column totals.
    // Read, the sums are zeroed for the next tile (acc is zero after the last join).
    if constexpr (S > 0) {
      slot_sums(c, rt, sum, comp, ws);
      std::fill(sum, sum + width, T(0));
      std::fill(comp, comp + width, T(0));
    }
  }

  // dx over one run of P elements (g, x, d), taking the coefficients kk; its terms added to a.
  static void backward_short_run(const T* g, const T* x, T* d, int64_t P, const Vec<T>* kk,
                                 Vec<T>* a) {
    using V = Vec<T>;
    constexpr int L = V::kSize;
    const int64_t tail = P % L, last = P - L;
    int64_t i = 0;
    for (; i + L <= P; i += L) {
      V t[NC];
      const V dx = Op::backward(V::load(g + i), V::load(x + i), kk, t);
      if constexpr (kWritesDx<Op>) dx.store(d + i);
      for (int j = 0; j < S; ++j) a[j] = a[j] + t[j];
    }
    if (tail) {
      V t[NC];
      const V dx = Op::backward(V::load(g + last), V::load(x + last), kk, t);
      if constexpr (kWritesDx<Op>) dx.store(d + last);
      for (int j = 0; j < S; ++j) a[j] = a[j] + t[j].from_lane(L - tail);
    }
  }

  // Slots [s0, s0 + runs)' runs in a row (one block, from e on); their terms added to acc.
  void backward_short_block(int64_t e, int64_t s0, int64_t runs, T* acc) const {
    using V = Vec<T>;
    constexpr int L = V::kSize;
    const int64_t P = job.slots.P, len = runs * P;
    T gbuf[kBlock], xbuf[kBlock], dbuf[kBlock];
    const T* g = run_input(job.g, e, len, gbuf);
    const T* x = run_input(job.x, e, len, xbuf);
    T* d = dest<T>(job.out, e, dbuf);
    for (int64_t r = 0; r < runs; ++r) {
      V kk[NC], a[S > 0 ? S : 1];
      slot_vecs(s0 + r, kk);
      for (int j = 0; j < S; ++j) a[j] = V(0);
      backward_short_run(g + r * P, x + r * P, d + r * P, P, kk, a);
      T* to = acc + r * S * L;
      for (int j = 0; j < S; ++j) (V::load(to + j * L) + a[j]).store(to + j * L);
    }
    if constexpr (kWritesDx<Op>) write<T>(job.out, e, d, len);
  }

  // Short-run tile: its rows in memory order, each slot's run; per slot, coefficient and lane,
  // the terms added plainly (acc: [slot][S][lane]), joined into compensated sums (sum, comp)
  // every few rows (a lane adds about kShortJoinTerms terms plainly), then each slot's lanes
  // pairwise into its total.
  void backward_short(const Cols& c, int64_t rt, Workspace<T>& ws) const {
    using V = Vec<T>;
    constexpr int L = V::kSize;
    const int64_t n = c.c1 - c.c0, width = S * n * L, W = job.tiling.W, P = job.slots.P;
    const int64_t join_rows = std::max<int64_t>(1, kShortJoinTerms * L / P),
                  per_block = runs_per_block();
    T* acc = ws.tile_sums(width);
    T* sum = acc + width;
    T* comp = sum + width;
    bool joined = false;
    for (int64_t row = c.r0; row < c.r1;) {
      for (int64_t s = c.c0; s < c.c1; s += per_block) {
        backward_short_block(row * W + s * P, s, std::min(per_block, c.c1 - s),
                             acc + (s - c.c0) * S * L);
      }
      ++row;
      if constexpr (S > 0) {
        if ((row - c.r0) % join_rows == 0 || row == c.r1) join(acc, sum, comp, width, joined);
      }
    }
    for (int j = 0; j < S; ++j) {
      T* __restrict__ total = totals_of(rt, j, c.c0);
      for (int64_t s = 0; s < n; ++s) {
        const int64_t o = (s * S + j) * L;
        total[s] = fold_lanes<L>(sum + o, comp + o);
      }
    }
    // Left zero for the next tile (acc is, after the last join).
    std::fill(sum, sum + width, T(0));
    std::fill(comp, comp + width, T(0));
  }

  // acc's plain sums into the compensated sums (sum, comp), acc left zero. The first join
  // (joined false) takes acc as it is: a TwoSum into zeros gives acc's own bits (acc, added to
  // from +0, is never -0), so acc and sum swap (all three are zero between tiles, and they are
  // any three of the scratch's arrays; benchmarks/NOTES.md §22).
  static void join(T*& acc, T*& sum, T* comp, int64_t width, bool& joined) {
    if (!joined) {
      std::swap(acc, sum);
      joined = true;
      return;
    }
    for (int64_t i = 0; i < width; ++i) {
      kahan_add(sum[i], comp[i], acc[i]);
      acc[i] = T(0);
    }
  }

  // Where column tile rt's totals of coefficient j go, from slot c0 on: the row tile's partial
  // sums, or the gradient itself (Job::grads).
  T* totals_of(int64_t rt, int j, int64_t c0) const {
    if (job.grads[j]) return job.grads[j] + c0;
    return job.partial + (rt * S + j) * job.slots.C + c0;
  }

  // The tile's last join, where a column is a slot (P == 1, rows not folded): each column's total
  // straight into the row tile's partial sums, and the three arrays left zero for the next tile.
  void finish_columns(const Cols& c, int64_t rt, T* acc, T* sum, T* comp) const {
    const int64_t ncols = c.c1 - c.c0;
    for (int j = 0; j < S; ++j) {
      T* __restrict__ to = totals_of(rt, j, c.c0);
      T* __restrict__ a = acc + j * ncols;
      T* __restrict__ s = sum + j * ncols;
      T* __restrict__ cs = comp + j * ncols;
      for (int64_t i = 0; i < ncols; ++i) {
        T total = s[i], error = cs[i];
        kahan_add(total, error, a[i]);
        to[i] = total + error;
        a[i] = s[i] = cs[i] = T(0);
      }
    }
  }

  // Each slot's column totals (sum + comp, [N][ncols]: P columns, in each row folded into one),
  // in column order, into the row tile's partial sums: the slots side by side (a loop over them
  // vectorizes; one slot's columns would be a serial chain).
  void slot_sums(const Cols& c, int64_t rt, const T* sum, const T* comp, Workspace<T>& ws) const {
    const int64_t P = job.slots.P, n = c.c1 - c.c0, ncols = width(c);
    std::vector<T>& ssum = ws.slot_sum;
    std::vector<T>& scomp = ws.slot_comp;
    for (int j = 0; j < S; ++j) {
      ssum.assign(n, T(0));
      scomp.assign(n, T(0));
      for (int64_t f = j * ncols; f < (j + 1) * ncols; f += n * P)  // each folded row's columns
        for (int64_t q = 0; q < P; ++q)
          for (int64_t s = 0; s < n; ++s)
            kahan_add(ssum[s], scomp[s], sum[f + s * P + q] + comp[f + s * P + q]);
      T* __restrict__ to = totals_of(rt, j, c.c0);
      for (int64_t s = 0; s < n; ++s) to[s] = ssum[s] + scomp[s];
    }
  }
};

// Slots [c0, c1) of every coefficient: the tiles' partial sums (layout.h's order) added, row
// tile by row tile, into the compensated sums sum and comp ([N][C], zero at first). Side by side
// ([row tile][N][C]), each row of partials first prefetches the one two rows on: written by the
// tiles as they ended, the partials have left the caches in a backward beyond them (1.2 MB at
// 8x197x3072 or 32x197x768), and the loop stalled on their loads (benchmarks/NOTES.md §31).
template <typename T>
void sum_partials(const Tiling& tl, int N, int64_t C, const T* partial, int64_t c0, int64_t c1,
                  T* sum, T* comp) {
  for (int64_t rt = 0; rt < tl.row_tiles; ++rt) {
    for (int j = 0; j < N; ++j) {
      T* __restrict__ s = sum + j * C;
      T* __restrict__ k = comp + j * C;
      if (tl.runs) {
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t seg = 0; seg < tl.segs; ++seg)
            kahan_add(s[c], k[c], partial[((rt * C + c) * tl.segs + seg) * N + j]);
      } else {  // the slots side by side: a loop that vectorizes
        const T* __restrict__ p = partial + (rt * N + j) * C;
        prefetch_lines(p + c0, 2 * C, c1 - c0);
        for (int64_t c = c0; c < c1; ++c) kahan_add(s[c], k[c], p[c]);
      }
    }
  }
}

// A thread's share of elements [b, e) (cpu/loops.h): the tiles whose middle element lies there;
// exactly those elements where the slots lie in runs (one slot included) or each row is one
// column tile, since a forward keeps no sums.
template <class Op, typename scalar_t, typename T>
void forward_tiles(const Job<scalar_t, T>& job, int64_t b, int64_t e) {
  const Tile<Op, scalar_t, T> tile{job};
  if (job.tiling.runs) return tile.forward_flat(b, e);
  if constexpr (kNumCoefs<Op> > 0) {
    if (job.tiling.short_runs) return tile.forward_short(b, e);
  }
  Workspace<T> ws;
  if (job.tiling.col_tiles == 1) return tile.forward_range(b, e, ws);
  for (int64_t t = tile.first_tile_from(b), end = tile.first_tile_from(e); t < end; ++t)
    tile.forward(t, ws);
}

// The same for a backward; an op without coefficients keeps no sums either.
template <class Op, typename scalar_t, typename T>
void backward_tiles(const Job<scalar_t, T>& job, int64_t b, int64_t e) {
  const Tile<Op, scalar_t, T> tile{job};
  if constexpr (kSums<Op> == 0) {
    if (job.slots.C == 1) return tile.backward_flat(b, e);
  }
  Workspace<T> ws;
  for (int64_t t = tile.first_tile_from(b), end = tile.first_tile_from(e); t < end; ++t)
    tile.backward(t, ws);
}

}  // namespace TORCHEXT_ISA
}  // namespace cpu
}  // namespace torchext
