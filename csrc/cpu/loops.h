// The CPU kernels of every op: prepare the call (layout.h), build the coefficient table, and walk
// the tiles in parallel (loops_impl.h); the backward then adds each slot's partial sums in a fixed
// order. The op's math comes in as its struct from math.h.
//
// Parallelism: at::parallel_for over the elements, split as torch splits its own (run_forward
// below), each thread running the tiles in its range (OpenMP; setup.py compiles and links with
// -fopenmp, without which parallel_for silently runs serially). Determinism: the tiles depend on
// the shapes alone, each tile's sums are taken in a fixed order, and the tiles' partial sums are
// added in index order, so the gradients are bitwise the same on every run and with any number of
// threads. Accuracy: the terms are added 16 to a lane (a block of 256 elements), and blocks, rows
// and tiles with compensated (Neumaier) sums: at least as accurate as torch.sum.
#pragma once

// Every torch header first: nothing of torch's may be compiled under the AVX2 pragma below.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__x86_64__)
#include <immintrin.h>  // the AVX2 copy's intrinsics (other CPUs, aarch64, run the portable copy)
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "../layout.h"
#include "../ops.h"
#include "isa.h"

namespace torchext {
namespace cpu {

using math::kahan_add;  // the compensated sums' step, shared with the CUDA kernels

// The lanes of a block's sums: independent accumulators the compiler keeps in vector registers
// (a lane-wise loop vectorizes without -ffast-math reassociation).
constexpr int kLanes = 16;

// Tiles: column tiles of ~16K elements; runs of 256 elements or more tiled as runs, cut into
// segments of 4K (the unit of a backward's partial sums, and what a thread takes whole: a thread's
// tiles end within half a segment of where torch would end its range), one row's segment a tile,
// so that the tiles lie in memory order (tiles of several rows of one slot's run jumped from row
// to row, which the prefetchers followed worse: benchmarks/NOTES.md §20). At least 8 tiles, or
// one per 32768 elements (torch's grain) where that is fewer: a few wide rows otherwise made one
// tile, which one thread ran alone (§26). Rows of fewer than 128 columns folded into rows of at
// least 128: row by row, 3 channels last took 4 to 15 times the one-element time, 16 twice; wider
// rows, 128 and 256, folded to 512 ran no faster, some slower (§27). Runs of 32 to 255 elements
// (channels first on 6x6 to 15x15 maps) go as short runs, a vector at a time: as columns (the
// coefficients expanded per column), they took 1.3 to 2 times the one-element time (§28).
constexpr TileSizes kTileSizes{
    /*target=*/1 << 14, /*min_run=*/256, /*seg=*/1 << 12,
    /*cols=*/4096,      /*min_rows=*/64, /*max_rows=*/1 << 14,
    /*run_rows=*/1,     /*min_tiles=*/8, /*grain=*/at::internal::GRAIN_SIZE,
    /*fold_cols=*/128,  /*short_run=*/32};
static_assert(kTileSizes.fold_cols <= kTileSizes.cols, "a folded row is one column tile");
static_assert(kTileSizes.min_run <= 256, "a short run fits a block (loops_impl.h's kBlock)");

// The tile sizes of a loop on stored scalar_t computing in T. 16-bit types, widened and narrowed
// a block at a time, go as short runs from 64 elements: runs of 49 took 1.3 times the one-element
// time so against 1.1 as columns, runs of 64 1.0 to 1.1 against 1.1 to 1.2 (NOTES.md §28).
template <typename scalar_t, typename T>
constexpr TileSizes tile_sizes() {
  TileSizes sizes = kTileSizes;
  if constexpr (!std::is_same_v<T, scalar_t>) sizes.short_run = 64;
  return sizes;
}

// A call whose inputs and output together exceed this many bytes reads them from memory, not
// from the caches. There a backward's column tiles prefetch ahead (loops_impl.h's strips), and a
// forward's go row by row; in the caches, the prefetches cost more than they save, and a forward
// takes several rows at once. 16 MB: about where the two crossed on the development machine,
// with 32 MB of last-level cache (benchmarks/NOTES.md §20, §21).
constexpr int64_t kStreamBytes = int64_t{16} << 20;

// The bytes of a call over numel elements of scalar_t in each of `arrays` arrays (a forward: x
// and y; a backward: g, x and dx).
template <typename scalar_t>
int64_t call_bytes(int64_t numel, int arrays) {
  return numel * arrays * int64_t{sizeof(scalar_t)};
}

// Whether such a call is beyond kStreamBytes.
template <typename scalar_t>
bool beyond_the_caches(int64_t numel, int arrays) {
  return call_bytes<scalar_t>(numel, arrays) > kStreamBytes;
}

// How far ahead a per-channel forward beyond the caches, row by row, prefetches the result's lines
// for writing (loops_impl.h's forward_segment; rows in T only). Its loop loads each element's
// coefficients beside x, and keeps fewer of the result's write misses in flight than the
// one-element loop does. In the bench, forward per channel / one-element on 8x112x112x32 (narrow
// rows, folded to 128 columns) float32: cubic 1.08 to 1.33 without, 0.96 to 1.04 with; affine P3
// 1.14 to 1.64, 1.01 to 1.07; at 32x197x768 about the same, within the noise. Prefetching x too
// gained nothing, nor did the one-element loop, nor bfloat16 rows (through buffers), nor eight
// rows at once (benchmarks/NOTES.md §34).
constexpr int64_t kWriteAheadBytes = int64_t{2} << 10;

// A core's own cache (its L2: 1 MB a core on the development machine).
constexpr int64_t kCoreCacheBytes = int64_t{1} << 20;

// Whether 16-bit rows read and written through buffers prefetch the next rows' lines
// (loops_impl.h's forward_buffered and read_rows): beyond the caches, and where the rows are cut
// into column tiles and each thread's share of the call outgrows its core's cache. A column
// tile's rows are segments a row apart, short streams that the hardware prefetchers take up
// late: a 64x512x7x7 bfloat16 forward + backward per channel (8 column tiles of 64 rows) took 1.1
// to 1.45 times the one-element time without, varying from process to process, and 1.13 to 1.18
// with; within the cores' caches, (64, 4096) took 1.20 with, 1.13 without (benchmarks/NOTES.md
// §29).
template <typename scalar_t>
bool prefetch_rows(const Tiling& tl, int64_t numel, int arrays) {
  return beyond_the_caches<scalar_t>(numel, arrays) ||
         (tl.col_tiles > 1 &&
          call_bytes<scalar_t>(numel, arrays) > kCoreCacheBytes * at::get_num_threads());
}

// Beyond the caches, a forward still takes several rows at once where its rows' coefficients
// (N · columns · sizeof(T)) exceed this: a third of L1. Row by row, each element then loaded its
// N coefficients from L2, and per channel on 3072 columns the forward took 2.6 times the
// one-element one; four rows at once, 1.5 to 1.75 (benchmarks/NOTES.md §26). float32 and
// float64 now take eight (loops_impl.h's kWideRowsAtOnce, §31).
constexpr int64_t kWideCoefBytes = int64_t{16} << 10;

// The most slots whose coefficients a call first copies into one table in T ([N][C]), which every
// tile then reads. With more (a coefficient per element or per position, C as large as x) each
// tile converts its own slots' values from the coefficients as it starts: the table, written by
// one thread and read back, moved more bytes than the op and took longer than its loops
// (benchmarks/NOTES.md §25). One column tile's slots (4096).
constexpr int64_t kTableSlots = kTileSizes.cols;

// What the backward loops take of an op besides its math: whether they write dx, and how many
// sums they take (one per coefficient, or none). Op's own backward writes dx and takes them all;
// Wanted<Op, dx, sums> (from ops.h's output_mask) may skip either.
template <class Op, typename = void>
constexpr bool kWritesDx = true;
template <class Op>
constexpr bool kWritesDx<Op, std::void_t<decltype(Op::kWritesDx)>> = Op::kWritesDx;
template <class Op, typename = void>
constexpr int kSums = kNumCoefs<Op>;
template <class Op>
constexpr int kSums<Op, std::void_t<decltype(Op::kSums)>> = Op::kSums;

template <class Op, bool kDx, bool kAllSums>
struct Wanted : Op {
  static constexpr bool kWritesDx = kDx;
  static constexpr int kSums = kAllSums ? kNumCoefs<Op> : 0;
  // Op's backward, its terms dropped when no sums are taken (the compiler then drops their math,
  // as it drops dx's where dx is not written).
  template <typename T>
  static T backward(T g, T x, const T* k, T* t) {
    T terms[kNumCoefs<Op> > 0 ? kNumCoefs<Op> : 1];
    const T dx = Op::backward(g, x, k, terms);
    if constexpr (kAllSums)
      for (int j = 0; j < kNumCoefs<Op>; ++j) t[j] = terms[j];
    return dx;
  }
};

// One AVX2 register of T (32 bytes: a value of GNU C's vector extension), with the arithmetic
// the ops' math uses, so that an op's forward<T> and backward<T> run on it unchanged: the unit
// of the short runs' loops (loops_impl.h), where a run of a few dozen elements would waste most
// of a strip. Defined here, outside the ISA copies: defined in the AVX2 copy, its operators could
// not inline into math.h's functions (compiled for the baseline), and each became a call.
template <typename T>
struct Vec {
  static constexpr int kSize = 32 / sizeof(T);
  typedef T Reg __attribute__((vector_size(32)));
  Reg v;
  Vec() = default;
  Vec(Reg r) : v(r) {}
  template <typename U, typename = std::enable_if_t<std::is_arithmetic_v<U>>>
  Vec(U s) : v(Reg{} + static_cast<T>(s)) {}
  static Vec load(const T* p) {
    Vec r;
    std::memcpy(&r.v, p, sizeof r.v);
    return r;
  }
  void store(T* p) const { std::memcpy(p, &v, sizeof v); }
  // The lanes from first on; those below, zero (selected, so an infinity or NaN there goes too).
  Vec from_lane(int first) const {
    typedef std::conditional_t<sizeof(T) == 8, int64_t, int32_t> I;
    typedef I Lanes __attribute__((vector_size(32)));
    Lanes lane;
    for (int l = 0; l < kSize; ++l) lane[l] = l;
    return Vec(lane >= I(first) ? v : Reg{});
  }
  friend Vec operator+(Vec a, Vec b) { return a.v + b.v; }
  friend Vec operator-(Vec a, Vec b) { return a.v - b.v; }
  friend Vec operator*(Vec a, Vec b) { return a.v * b.v; }
};

// A strip: 64 bytes of T (a cache line) as two Vecs (a 64-byte vector value has no register in
// AVX2, and gcc moved it through memory), with the same arithmetic.
template <typename T>
struct Strip {
  using Half = Vec<T>;
  static constexpr int kSize = 2 * Half::kSize;
  Half lo, hi;
  Strip() = default;
  Strip(Half l, Half h) : lo(l), hi(h) {}
  template <typename U, typename = std::enable_if_t<std::is_arithmetic_v<U>>>
  Strip(U s) : lo(s), hi(lo) {}
  static Strip load(const T* p) { return {Half::load(p), Half::load(p + Half::kSize)}; }
  void store(T* p) const {
    lo.store(p);
    hi.store(p + Half::kSize);
  }
  friend Strip operator+(Strip a, Strip b) { return {a.lo + b.lo, a.hi + b.hi}; }
  friend Strip operator-(Strip a, Strip b) { return {a.lo - b.lo, a.hi - b.hi}; }
  friend Strip operator*(Strip a, Strip b) { return {a.lo * b.lo, a.hi * b.hi}; }
};

// f(S{}) for the C++ type S of dtype t: one switch for a whole row of values, whose loop then
// vectorizes (math::load and math::store switch per value: with a coefficient per element, the
// table and the gradients' stores took nine tenths of a backward; benchmarks/NOTES.md §18).
template <typename F>
void with_type(math::Dtype t, F&& f) {
  switch (t) {
    case math::Dtype::Half: return f(c10::Half{});
    case math::Dtype::BFloat16: return f(c10::BFloat16{});
    case math::Dtype::Float: return f(float{});
    default: return f(double{});
  }
}

// n values of dtype t at p, as T (as math::load converts one).
template <typename T>
void load_row(const void* p, math::Dtype t, int64_t n, T* __restrict__ out) {
  with_type(t, [&](auto tag) {
    using S = decltype(tag);
    const S* __restrict__ in = static_cast<const S*>(p);
    for (int64_t i = 0; i < n; ++i) out[i] = math::from_stored<T>(in[i]);
  });
}

// n values v stored at p in dtype t (as math::store converts one).
template <typename T>
void store_row(void* p, math::Dtype t, int64_t n, const T* __restrict__ v) {
  with_type(t, [&](auto tag) {
    using S = decltype(tag);
    S* __restrict__ out = static_cast<S*>(p);
    for (int64_t i = 0; i < n; ++i) out[i] = math::to_stored<S>(v[i]);
  });
}

// Coefficient src's values in slots [c0, c1), in T, into out (a one-element coefficient's value
// repeated).
template <typename T>
void load_slots(const CoefSource& src, int64_t c0, int64_t c1, T* out) {
  if (src.per_slot && src.data) {
    load_row(static_cast<const char*>(src.data) + c0 * math::dtype_size(src.dtype), src.dtype,
             c1 - c0, out);
  } else {  // one element; or never read (no data: host_value, 0)
    std::fill(out, out + (c1 - c0),
              src.data ? math::load<T>(src.data, src.dtype) : static_cast<T>(src.host_value));
  }
}

// What a tile loop needs: the inputs, the output, the coefficients' values per slot, and where
// its partial sums go.
template <typename scalar_t, typename T>
struct Job {
  Operand x, g;
  scalar_t* out;
  // [N][C]: coefficient j's value in slot c at j * C + c; or null (many slots, kTableSlots): each
  // tile then reads its slots' values from the coefficients themselves (coefs)
  const T* table;
  const CoefSource* coefs;
  Slots slots;
  Tiling tiling;
  T* partial;             // backward: the tiles' partial sums (layout.h)
  bool inplace;           // forward: out is x's own memory
  bool stream = false;    // beyond the caches (kStreamBytes): see Tile's forward and strips
  bool prefetch = false;  // 16-bit rows prefetch ahead (prefetch_rows)
  // backward: where the column tiles write coefficient j's totals themselves, in place of the
  // partial sums: its gradient (per slot, in T), where each slot has one partial (one row tile)
  T* grads[kMaxCoefs] = {};
};

// What a thread's column tiles keep from tile to tile (loops_impl.h), so that a tile allocates
// nothing: the sums of a backward (all zero between tiles), and for slots of P > 1 columns the
// coefficients per column (for the slots from expanded_from on) and the slots' sums.
template <typename T>
struct Workspace {
  std::vector<T> sums, expanded, slot_sum, slot_comp;
  int64_t expanded_from = -1;
  // sums as a tile's three arrays of width values each (plain, compensated, compensation),
  // grown where needed: with zeros, as every tile leaves them.
  T* tile_sums(int64_t width) {
    if (sums.size() < static_cast<size_t>(3 * width)) sums.resize(3 * width);
    return sums.data();
  }
};

}  // namespace cpu
}  // namespace torchext

// The loops, for the baseline (x86-64's, or another CPU's: on aarch64 the compiler vectorizes it
// with NEON) and on x86-64 for AVX2 with F16C (picked at run time by isa(); TORCHEXT_AVX2 tells
// loops_impl.h which copy it compiles). PyTorch's x86-64 wheels are built for the baseline too, so
// without this the compiler may use SSE2 only: half the width, and measured twice as slow
// (benchmarks/NOTES.md).
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

// The type the loops run an op in: op-math (16-bit types widened a block at a time), or the
// stored type for the ops that declare kOnStoredType (ReLU).
template <class Op, typename scalar_t>
using compute_t = std::conditional_t<kOnStoredType<Op>, scalar_t, at::opmath_type<scalar_t>>;

#if TORCHEXT_HAVE_AVX2
#define TORCHEXT_ISA_CALL(FN, ...) \
  (isa() == Isa::Avx2 ? avx2::FN(__VA_ARGS__) : base::FN(__VA_ARGS__))
#else
#define TORCHEXT_ISA_CALL(FN, ...) base::FN(__VA_ARGS__)
#endif

// The threads split the elements as torch's elementwise ops do (at::parallel_for over them with
// TensorIterator's grain: equal ranges, none below 32768 elements), each running the tiles whose
// middle falls in its range. So a thread works, give or take half a tile, on the elements the
// same thread wrote or read in the op before (torch's or ours), in its own core's cache. Shared
// by tile count instead, a thread could start a tile's length into its neighbour's elements: an
// in-place ReLU of 200704 elements after torch's mul then took twice torch.relu_'s time, reading
// 14336 elements from the other core's cache (benchmarks/NOTES.md §14). A forward keeps no sums,
// so where it can it takes exactly its range, tiles aside: one slot or runs, and rows that are one
// column tile each (two threads took 197 such rows as 128 and 69 by tiles, §21).
template <class Op, typename scalar_t, typename T>
void run_forward(const Job<scalar_t, T>& job) {
  const int64_t numel = job.tiling.numel;
  at::parallel_for(0, numel, at::internal::GRAIN_SIZE,
                   [&](int64_t b, int64_t e) { TORCHEXT_ISA_CALL(forward_tiles<Op>, job, b, e); });
}

template <class Op, typename scalar_t, typename T>
void run_backward(const Job<scalar_t, T>& job) {
  const int64_t numel = job.tiling.numel;
  at::parallel_for(0, numel, at::internal::GRAIN_SIZE,
                   [&](int64_t b, int64_t e) { TORCHEXT_ISA_CALL(backward_tiles<Op>, job, b, e); });
}

// f(c0, c1) over slots [0, C), in parallel only where a pass over them, per_slot values (or adds)
// a slot, reaches torch's grain: starting and joining the threads costs more than a few thousand
// (benchmarks/NOTES.md §21). With a coefficient per element C is as large as x, and the
// gradients' stores, run by one thread while the others waited, took longer than the loops
// (§25); per channel (C of a few hundred) every pass runs inline.
template <typename F>
void for_slots(int64_t C, int64_t per_slot, F&& f) {
  const int64_t grain =
      std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, per_slot));
  at::parallel_for(0, C, grain, f);
}

// The coefficients' values per slot, in T: [N][C] (a one-element coefficient repeated), or null
// where the slots are more than kTableSlots. Every value is written: no zeroing first.
template <typename T>
std::unique_ptr<T[]> coef_table(const Call& call) {
  const int64_t C = call.slots.C;
  if (C > kTableSlots) return nullptr;
  std::unique_ptr<T[]> table(new T[call.ncoefs * C]);
  for (int j = 0; j < call.ncoefs; ++j) load_slots(call.coefs[j], 0, C, table.get() + j * C);
  return table;
}

// Each slot's sum over the tiles' partial sums, in tile order (slots in parallel: each slot's
// order is fixed; the adds in the ISA's loops: compiled for the baseline they were a tenth of a
// channels-last backward's instructions, benchmarks/NOTES.md §17); then each coefficient's
// gradient: its slots' sums, or (one-element) their sum. Where each slot has one partial (column
// tiles in one row tile: a coefficient per element, say) the partials are the sums themselves:
// zeroing and filling N·C compensated sums was most of such a backward's memory traffic (§18).
template <typename T>
void finish_sums(Call& call, const Tiling& tl, const T* partial, T* const* direct) {
  const int N = call.ncoefs;
  const int64_t C = call.slots.C;
  std::vector<T> sum;
  const T* totals = partial;  // [N][C]: slot c's total of coefficient j at j * C + c
  if (tl.runs || tl.row_tiles > 1) {
    sum.assign(N * C, T(0));
    std::vector<T> comp(N * C);
    // (A channels-last backward of 197 rows has 4 row tiles' partials to add per slot: inline.)
    for_slots(C, N * tl.row_tiles * (tl.runs ? tl.segs : 1), [&](int64_t c0, int64_t c1) {
      TORCHEXT_ISA_CALL(sum_partials<T>, tl, N, C, partial, c0, c1, sum.data(), comp.data());
      for (int j = 0; j < N; ++j)
        for (int64_t c = c0; c < c1; ++c) sum[j * C + c] += comp[j * C + c];
    });
    totals = sum.data();
  }
  // Pointers taken here, not in the threads (mutable_data_ptr may materialize a tensor).
  char* to[kMaxCoefs];
  math::Dtype dtype[kMaxCoefs];
  for (int j = 0; j < N; ++j) {
    to[j] = static_cast<char*>(call.kernel_grads[j].mutable_data_ptr());
    dtype[j] = code_of(call.kernel_grads[j].scalar_type());
  }
  for_slots(C, N, [&](int64_t c0, int64_t c1) {
    for (int j = 0; j < N; ++j)
      if (call.grad_per_slot[j] && !direct[j])
        store_row(to[j] + c0 * math::dtype_size(dtype[j]), dtype[j], c1 - c0, totals + j * C + c0);
  });
  for (int j = 0; j < N; ++j) {
    if (call.grad_per_slot[j]) continue;
    T total = 0, total_comp = 0;
    for (int64_t c = 0; c < C; ++c) kahan_add(total, total_comp, totals[j * C + c]);
    math::store(to[j], dtype[j], total + total_comp);
  }
}

// The gradients the column tiles write themselves (grads[j], else null): where each slot has one
// partial sum (one row tile), each coefficient per slot whose gradient is stored in T. With a
// coefficient per element the partials are as large as x, and writing them, then copying them
// into the gradients, moved more bytes than the rest of the backward (benchmarks/NOTES.md §25).
template <typename T>
void direct_grads(Call& call, const Tiling& tl, T** grads) {
  if (tl.runs || tl.row_tiles != 1) return;
  for (int j = 0; j < call.ncoefs; ++j) {
    at::Tensor& out = call.kernel_grads[j];
    if (call.grad_per_slot[j] && out.scalar_type() == c10::CppTypeToScalarType<T>::value &&
        out.is_contiguous())
      grads[j] = out.mutable_data_ptr<T>();
  }
}

// A backward over the call with the loops of OpV (Op, or a Wanted<Op, ...>).
template <class OpV, typename scalar_t>
void run_backward_of(Call& call) {
  using T = compute_t<OpV, scalar_t>;
  constexpr int S = kSums<OpV>;
  const std::unique_ptr<T[]> table = coef_table<T>(call);
  const Tiling tiling = make_tiling(call.numel, call.slots, tile_sizes<scalar_t, T>());
  scalar_t* out = call.out.mutable_data_ptr<scalar_t>();
  const bool stream = beyond_the_caches<scalar_t>(call.numel, 3);
  const bool prefetch = prefetch_rows<scalar_t>(tiling, call.numel, 3);
  Job<scalar_t, T> job{call.x,     call.g, out,     table.get(),       call.coefs,
                       call.slots, tiling, nullptr, /*inplace=*/false, stream,
                       prefetch};
  if constexpr (S > 0) direct_grads(call, tiling, job.grads);
  // Every tile writes all of its partial sums (none where every gradient is written directly):
  // no zeroing needed.
  const bool partials =
      S > 0 && !std::all_of(job.grads, job.grads + call.ncoefs, [](T* p) { return p; });
  const std::unique_ptr<T[]> partial(new T[partials ? tiling.partials * S : 0]);
  job.partial = partial.get();
  run_backward<OpV>(job);
  if constexpr (S > 0) finish_sums(call, tiling, partial.get(), job.grads);
}

// The CPU kernels of op Op: forward(x, coefs) -> y, backward(grad, v, coefs, wanted) -> {dx,
// dcoefs...}.
template <class Op>
struct Kernels {
  static constexpr int N = kNumCoefs<Op>;
  using Coefs = std::array<at::Tensor, N>;

  static at::Tensor forward(const at::Tensor& x, const Coefs& coefs) {
    Call call = prepare_forward(OpName<Op>::kQualified, x, {coefs.data(), Op::kCoefs.data(), N},
                                kIntegral<Op>);
    run(call, x);
    return call.out;
  }

  // x overwritten with the result.
  static void inplace(const at::Tensor& x, const Coefs& coefs) {
    Call call = prepare_inplace(OpName<Op>::kQualified, x, {coefs.data(), Op::kCoefs.data(), N},
                                kIntegral<Op>);
    run(call, x);
    if (!call.out.is_same(x)) x.copy_(call.out);
  }

  static void run(Call& call, const at::Tensor& x) {
    if (call.numel == 0) return;
    TORCHEXT_DISPATCH(Op, x.scalar_type(), "torchext", [&] {
      using T = compute_t<Op, scalar_t>;
      const std::unique_ptr<T[]> table = coef_table<T>(call);
      const Tiling tiling = make_tiling(call.numel, call.slots, tile_sizes<scalar_t, T>());
      scalar_t* out = call.out.mutable_data_ptr<scalar_t>();
      const bool stream = beyond_the_caches<scalar_t>(call.numel, 2);
      const bool prefetch = prefetch_rows<scalar_t>(tiling, call.numel, 2);
      const Job<scalar_t, T> job{call.x,     {},     out,     table.get(),         call.coefs,
                                 call.slots, tiling, nullptr, call.out.is_same(x), stream,
                                 prefetch};
      run_forward<Op>(job);
    });
  }

  // The results not wanted are not computed: without dx the loops write none, without any
  // coefficient's gradient they take no sums (Wanted<Op, ...>).
  static std::array<at::Tensor, N + 1> backward(const at::Tensor& grad, const at::Tensor& v,
                                                const Coefs& coefs,
                                                const std::array<bool, N + 1>& wanted) {
    Call call =
        prepare_backward(OpName<Op>::kQualified, grad, v, kSavedName<Op>,
                         {coefs.data(), Op::kCoefs.data(), N}, kBackwardReads<Op>, wanted.data());
    if (call.numel > 0 && (call.wants_dx() || call.wants_sums())) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "torchext", [&] {
        if constexpr (N == 0) {
          run_backward_of<Op, scalar_t>(call);
        } else if (!call.wants_sums()) {
          run_backward_of<Wanted<Op, /*dx=*/true, /*sums=*/false>, scalar_t>(call);
        } else if (!call.wants_dx()) {
          run_backward_of<Wanted<Op, /*dx=*/false, /*sums=*/true>, scalar_t>(call);
        } else {
          run_backward_of<Op, scalar_t>(call);
        }
      });
    }
    finish_backward(call);
    std::array<at::Tensor, N + 1> out;
    out[0] = call.out;
    for (int i = 0; i < N; ++i) out[i + 1] = call.grads[i];
    return out;
  }
};

}  // namespace cpu
}  // namespace torchext
