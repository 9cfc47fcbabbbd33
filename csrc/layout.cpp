#include "layout.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <c10/util/SmallVector.h>

#include <algorithm>
#include <numeric>

namespace torchext {
namespace {

using DimList = c10::SmallVector<int, 8>;

bool is_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

constexpr const char* kFloats = "float16, bfloat16, float32 or float64";
constexpr const char* kShapes =
    "a coefficient is a number or a tensor whose shape broadcasts to x's without enlarging it: "
    "one element, per channel (C,) on [..., C] or (C, 1, 1) on [N, C, H, W], per group (G, 1) "
    "on [..., G, C/G]";

// ---- checks ---------------------------------------------------------------------------------

void check_dense(const char* op, const char* what, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(!t.is_nested() && t.layout() == at::kStrided && !t.is_quantized(), op, ": ",
                   what, "'", name, "' must be a dense (strided) tensor, got ",
                   t.is_nested()      ? "a nested tensor"
                   : t.is_quantized() ? "a quantized tensor"
                                      : "",
                   t.is_nested() || t.is_quantized() ? "" : c10::str(t.layout()));
}

// x (or the saved result, or the gradient): a defined, dense floating tensor (or integer, where
// the op takes integers).
void check_input(const char* op, const char* name, const at::Tensor& t, bool integral) {
  TORCH_CHECK_VALUE(t.defined(), op, ": '", name, "' is undefined");
  check_dense(op, "", name, t);
  const auto dt = t.scalar_type();
  const bool ok = is_float(dt) || (integral && at::isIntegralType(dt, /*includeBool=*/false));
  TORCH_CHECK_TYPE(ok, op, ": '", name, "' must be a ", kFloats, integral ? " or integer" : "",
                   " tensor, got ", dt);
}

// t has v's shape, dtype and device (a gradient).
void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& v) {
  check_input(op, name, t, /*integral=*/false);
  TORCH_CHECK_VALUE(t.sym_sizes() == v.sym_sizes(), op, ": '", name, "' has shape ", t.sym_sizes(),
                    " but x has shape ", v.sym_sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == v.scalar_type(), op, ": '", name, "' has dtype ",
                   t.scalar_type(), " but x has dtype ", v.scalar_type());
  TORCH_CHECK(t.device() == v.device(), op, ": '", name, "' is on ", t.device(), " but x is on ",
              v.device());
}

bool is_host_scalar(const at::Tensor& c, const at::Tensor& x) {
  return c.dim() == 0 && c.is_cpu() && !x.is_cpu();
}

void check_coef(const char* op, const char* name, const at::Tensor& c, const at::Tensor& x) {
  TORCH_CHECK_VALUE(c.defined(), op, ": coefficient '", name, "' is undefined");
  check_dense(op, "coefficient ", name, c);
  TORCH_CHECK_TYPE(is_float(c.scalar_type()), op, ": coefficient '", name,
                   "' must be a number or a ", kFloats, " tensor, got ", c.scalar_type());
  TORCH_CHECK(c.device() == x.device() || is_host_scalar(c, x), op, ": coefficient '", name,
              "' is on ", c.device(), " but x is on ", x.device(),
              "; a coefficient must be on x's device (or be a 0-dim CPU tensor)");
  bool fits = c.dim() <= x.dim();
  for (int64_t d = 0; fits && d < c.dim(); ++d) {
    const c10::SymInt& s = c.sym_size(d);
    fits = s == 1 || s == x.sym_size(x.dim() - c.dim() + d);
  }
  TORCH_CHECK_VALUE(fits, op, ": coefficient '", name, "' of shape ", c.sym_sizes(),
                    " does not broadcast to x's shape ", x.sym_sizes(), " without enlarging it (",
                    kShapes, ")");
}

// ---- the result's layout ------------------------------------------------------------------------
// In SymInts: the same code serves the kernels and the Meta kernels (meta.cpp), which
// torch.compile and torch.export run with symbolic shapes (each comparison then a guard).

using c10::SymInt;

// Whether x is dense in the given order of its dims (outermost first): each stride the product of
// the sizes inside it, size-1 dims aside.
bool dense_in(const at::Tensor& x, const DimList& order) {
  SymInt expected = 1;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    if (x.sym_size(*it) == 1) continue;
    if (x.sym_stride(*it) != expected) return false;
    expected *= x.sym_size(*it);
  }
  return true;
}

// x's non-1 dims, outermost first: by stride, ties in dim order. (An insertion sort: a handful
// of dims, and std::stable_sort's buffer was a malloc and a free on every call.)
DimList by_stride(const at::Tensor& x) {
  DimList dims;
  for (int d = 0; d < x.dim(); ++d) {
    if (x.sym_size(d) == 1) continue;
    size_t i = dims.size();
    dims.push_back(d);
    for (; i > 0 && x.sym_stride(dims[i - 1]) < x.sym_stride(d); --i) dims[i] = dims[i - 1];
    dims[i] = d;
  }
  return dims;
}

// x's dims from outermost to innermost, as TensorIterator orders them for an elementwise op: by
// stride, a broadcast (stride-0) dim compared with nothing, ties to the smaller size inside.
DimList stride_order(const at::Tensor& x) {
  const int n = static_cast<int>(x.dim());
  DimList perm(n);  // innermost first while sorting
  std::iota(perm.rbegin(), perm.rend(), 0);
  auto should_swap = [&](int d0, int d1) {
    const SymInt &s0 = x.sym_stride(d0), &s1 = x.sym_stride(d1);
    if (s0 == 0 || s1 == 0) return 0;
    if (s0 != s1) return s0 < s1 ? -1 : 1;
    return x.sym_size(d0) > x.sym_size(d1) ? 1 : 0;
  };
  for (int i = 1; i < n; ++i) {
    int d1 = i;
    for (int d0 = i - 1; d0 >= 0; --d0) {
      const int cmp = should_swap(perm[d0], perm[d1]);
      if (cmp > 0) {
        std::swap(perm[d0], perm[d1]);
        d1 = d0;
      } else if (cmp < 0) {
        break;
      }
    }
  }
  std::reverse(perm.begin(), perm.end());
  return perm;
}

// A new tensor laid out as torch's elementwise ops lay out their result for x: x's strides when x
// is dense (contiguous and channels_last in their standard form), else dense in x's stride order.
at::Tensor empty_like_elementwise(const at::Tensor& x, const at::TensorOptions& options) {
  DimList natural(x.dim());
  std::iota(natural.begin(), natural.end(), 0);
  if (x.sym_numel() == 0 || dense_in(x, natural)) return at::empty_symint(x.sym_sizes(), options);
  if (x.dim() == 4 && dense_in(x, DimList{0, 2, 3, 1})) {
    return at::empty_symint(x.sym_sizes(), options, at::MemoryFormat::ChannelsLast);
  }
  if (dense_in(x, by_stride(x)))
    return at::empty_strided_symint(x.sym_sizes(), x.sym_strides(), options);
  const DimList order = stride_order(x);
  c10::SmallVector<SymInt, 8> strides(x.dim());
  SymInt next = 1;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    strides[*it] = next;
    next *= x.sym_size(*it);
  }
  return at::empty_strided_symint(x.sym_sizes(), strides, options);
}

// The result's non-1 dims, outermost first (the result is dense: its strides order them).
DimList memory_order(const at::Tensor& out) { return by_stride(out); }

// ---- coefficients: which block of x's dims they vary along
// ---------------------------------------

// Coefficient dims right-aligned against x: [lo, hi) spans the non-1 ones; exact when every dim
// in between has x's size (so the coefficient's elements are the block's, in order).
struct Span {
  int lo = 0, hi = 0;
  bool exact = true;
  bool scalar() const { return lo == hi; }
};

Span span_of(const at::Tensor& c, const at::Tensor& x) {
  const int off = static_cast<int>(x.dim() - c.dim());
  Span s{static_cast<int>(x.dim()), 0, true};
  for (int d = 0; d < c.dim(); ++d) {
    if (c.sym_size(d) != 1) {
      s.lo = std::min(s.lo, d + off);
      s.hi = std::max(s.hi, d + off + 1);
    }
  }
  if (s.hi == 0) return Span{};
  for (int d = s.lo; d < s.hi; ++d) s.exact &= c.sym_size(d - off) == x.sym_size(d);
  return s;
}

struct Block {
  int lo = 0, hi = 0;  // x's dims [lo, hi); empty when every coefficient has one element
  SymInt C = 1;
};

// The block of the coefficients' spans: their union; a coefficient whose span is not exactly
// the block is expanded to it (the fused kernels see the block alone).
Block block_of(const Span* spans, int n, const at::Tensor& x) {
  Block b{static_cast<int>(x.dim()), 0, 1};
  for (int i = 0; i < n; ++i) {
    if (spans[i].scalar()) continue;
    b.lo = std::min(b.lo, spans[i].lo);
    b.hi = std::max(b.hi, spans[i].hi);
  }
  if (b.hi == 0) return Block{};
  for (int d = b.lo; d < b.hi; ++d) b.C *= x.sym_size(d);
  return b;
}

bool needs_expansion(const Span& s, const Block& b) {
  return !s.scalar() && (s.lo != b.lo || s.hi != b.hi || !s.exact);
}

// The block's elements in the result's memory order: its non-1 dims must come together and in
// order there. P: the result's stride at the block's innermost non-1 dim.
bool block_in_order(const DimList& order, const Block& b, const at::Tensor& out, SymInt* P) {
  int prev = -1;
  SymInt p = 1;
  for (size_t k = 0; k < order.size(); ++k) {
    const int d = order[k];
    if (d < b.lo || d >= b.hi) continue;
    if (prev >= 0 && (d <= prev || order[k - 1] != prev)) return false;
    prev = d;
    p = out.sym_stride(d);
  }
  *P = p;
  return true;
}

// ---- inputs -----------------------------------------------------------------------------------

Operand operand_of(const at::Tensor& t, const at::Tensor& out, const DimList& order,
                   at::Tensor* keep) {
  Operand o;
  o.data = t.const_data_ptr();
  bool dense = true, zero = true;
  for (int d : order) {
    dense &= t.stride(d) == out.stride(d);
    zero &= t.stride(d) == 0;
  }
  if (dense) return o;
  if (zero) {
    o.kind = Operand::kBroadcast;
    return o;
  }
  o.kind = Operand::kStrided;
  for (int d : order) {
    const int64_t size = t.size(d), stride = t.stride(d);
    if (o.ndim > 0 && o.stride[o.ndim - 1] == stride * size) {
      o.size[o.ndim - 1] *= size;
      o.stride[o.ndim - 1] = stride;
      o.ostride[o.ndim - 1] = out.stride(d);
      continue;
    }
    if (o.ndim == kMaxDims) {  // more strided dims than a kernel walks: read a copy
      *keep = at::empty_like(out).copy_(t);
      return Operand{Operand::kDense, keep->const_data_ptr()};
    }
    o.size[o.ndim] = size;
    o.stride[o.ndim] = stride;
    o.ostride[o.ndim] = out.stride(d);
    ++o.ndim;
  }
  return o;
}

// The shape of coefficient values laid out over the block: x's sizes there, 1 elsewhere.
c10::SmallVector<int64_t, 8> block_shape(const at::Tensor& x, const Block& b) {
  c10::SmallVector<int64_t, 8> shape(x.dim(), 1);
  for (int d = b.lo; d < b.hi; ++d) shape[d] = x.size(d);
  return shape;
}

// Checks the coefficients and places the result: laid out as torch's elementwise ops lay it out,
// unless that splits the coefficients' block (then row-major). In place: x itself, where the
// kernels can write there (x dense). Also the block, and P, the result's stride at its innermost
// dim (slot(e) = (e / P) % C).
at::Tensor result_of(const char* op, const at::Tensor& v, CoefArgs coefs, at::ScalarType dtype,
                     Span* spans, Block* block, SymInt* P, bool inplace) {
  TORCH_CHECK(coefs.n <= kMaxCoefs, op, ": too many coefficients");
  for (int i = 0; i < coefs.n; ++i) {
    check_coef(op, coefs.names[i], coefs.tensors[i], v);
    spans[i] = span_of(coefs.tensors[i], v);
  }
  *block = block_of(spans, coefs.n, v);
  const auto options = v.options().dtype(dtype);
  at::Tensor out = inplace && dense_in(v, by_stride(v)) ? v : empty_like_elementwise(v, options);
  if (block->C != 1 && !block_in_order(memory_order(out), *block, out, P)) {
    out = at::empty_symint(v.sym_sizes(), options);
    block_in_order(memory_order(out), *block, out, P);
  }
  return out;
}

// The common part of a forward and a backward: checks the coefficients, places the result, and
// says how the kernels read x (v) and the coefficients. reads: which coefficient values are read.
Call prepare(const char* op, const at::Tensor& v, CoefArgs coefs, unsigned reads,
             const at::ScalarType out_dtype, Span* spans, bool inplace = false) {
  Call call;
  call.op = op;
  call.ncoefs = coefs.n;
  call.numel = v.numel();
  Block block;
  SymInt P = 1;
  call.out = result_of(op, v, coefs, out_dtype, spans, &block, &P, inplace);
  call.slots.C = block.C.expect_int();
  call.slots.P = P.expect_int();
  const DimList order = memory_order(call.out);
  if (call.numel == 0) return call;
  call.x = operand_of(v, call.out, order, &call.kept[kMaxCoefs]);
  for (int i = 0; i < coefs.n; ++i) {
    const at::Tensor& c = coefs.tensors[i];
    CoefSource& src = call.coefs[i];
    src.per_slot = !spans[i].scalar();
    if (!(reads >> i & 1u)) continue;  // its value is never read: the source stays 0
    if (!src.per_slot && is_host_scalar(c, v)) {
      src.host_value = c.item<double>();  // a CPU tensor: no device sync
      continue;
    }
    at::Tensor values = c;
    if (needs_expansion(spans[i], block)) {
      values = c.expand(block_shape(v, block)).contiguous();
    } else if (src.per_slot) {
      values = c.contiguous();
    }
    call.kept[i] = values;  // keeps a copy alive for the kernels
    src.data = values.const_data_ptr();
    src.dtype = code_of(values.scalar_type());
  }
  return call;
}

// A result not wanted (output_mask): zeros shaped like t, expanded from one element (no memory);
// the same strides from the Meta kernels.
at::Tensor not_wanted(c10::SymIntArrayRef sizes, const at::TensorOptions& options) {
  return at::zeros({}, options).expand_symint(sizes);
}
at::Tensor not_wanted(const at::Tensor& t) { return not_wanted(t.sym_sizes(), t.options()); }

}  // namespace

Call prepare_forward(const char* op, const at::Tensor& x, CoefArgs coefs, bool integral) {
  check_input(op, "x", x, integral);
  Span spans[kMaxCoefs];
  return prepare(op, x, coefs, ~0u, x.scalar_type(), spans);
}

Call prepare_inplace(const char* op, const at::Tensor& x, CoefArgs coefs, bool integral) {
  check_input(op, "x", x, integral);
  at::assert_no_internal_overlap(x);
  Span spans[kMaxCoefs];
  return prepare(op, x, coefs, ~0u, x.scalar_type(), spans, /*inplace=*/true);
}

Call prepare_backward(const char* op, const at::Tensor& grad, const at::Tensor& v,
                      const char* v_name, CoefArgs coefs, unsigned reads, const bool* wanted) {
  check_input(op, v_name, v, /*integral=*/false);
  check_like(op, "grad", grad, v);
  Span spans[kMaxCoefs];
  Call call = prepare(op, v, coefs, reads, v.scalar_type(), spans);
  for (int i = 0; wanted && i <= coefs.n; ++i) call.unwanted[i] = !wanted[i];
  call.grads_zero = !call.wants_sums();
  const Block block = block_of(spans, coefs.n, v);
  for (int i = 0; i < coefs.n; ++i) {
    const at::Tensor& c = coefs.tensors[i];
    const auto options = c.options().device(v.device());
    if (call.grads_zero) {  // no gradient is computed: each is its zeros, nothing allocated
      call.grads[i] = not_wanted(c.sym_sizes(), options);
      continue;
    }
    call.grads[i] = at::empty(c.sizes(), options);
    call.grad_per_slot[i] = !spans[i].scalar();
    call.kernel_grads[i] = call.grads[i];
    if (needs_expansion(spans[i], block)) {
      // Summed per slot in op-math precision here, over the dims the block adds by
      // finish_backward.
      const bool wide = c.scalar_type() == at::kDouble || v.scalar_type() == at::kDouble;
      call.kernel_grads[i] =
          at::empty(block_shape(v, block), options.dtype(wide ? at::kDouble : at::kFloat));
    }
    if (call.numel == 0) call.grads[i].zero_();
  }
  if (call.numel > 0) {
    call.g = operand_of(grad, call.out, memory_order(call.out), &call.kept[kMaxCoefs + 1]);
  }
  return call;
}

at::Tensor meta_forward(const char* op, const at::Tensor& x, CoefArgs coefs, bool integral,
                        bool inplace) {
  check_input(op, "x", x, integral);
  if (inplace) at::assert_no_internal_overlap(x);
  Span spans[kMaxCoefs];
  Block block;
  SymInt P = 1;
  return result_of(op, x, coefs, x.scalar_type(), spans, &block, &P, inplace);
}

void meta_backward(const char* op, const at::Tensor& grad, const at::Tensor& v, const char* v_name,
                   CoefArgs coefs, const bool* wanted, at::Tensor* outs) {
  check_input(op, v_name, v, /*integral=*/false);
  check_like(op, "grad", grad, v);
  Span spans[kMaxCoefs];
  Block block;
  SymInt P = 1;
  outs[0] = result_of(op, v, coefs, v.scalar_type(), spans, &block, &P, /*inplace=*/false);
  for (int i = 0; i < coefs.n; ++i) {
    const at::Tensor& c = coefs.tensors[i];
    outs[i + 1] = at::empty_symint(c.sym_sizes(), c.options().device(v.device()));
  }
  for (int i = 0; wanted && i <= coefs.n; ++i)
    if (!wanted[i]) outs[i] = not_wanted(outs[i]);
}

void finish_backward(Call& call) {
  for (int i = 0; i < call.ncoefs && call.numel > 0; ++i) {
    if (call.unwanted[i + 1] || call.kernel_grads[i].is_same(call.grads[i])) continue;
    call.grads[i].copy_(call.kernel_grads[i].sum_to_size(call.grads[i].sizes()));
  }
  if (call.unwanted[0]) call.out = not_wanted(call.out);
  for (int i = 0; i < call.ncoefs && !call.grads_zero; ++i)
    if (call.unwanted[i + 1]) call.grads[i] = not_wanted(call.grads[i]);
}

// ---- tiles ------------------------------------------------------------------------------------

namespace {
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

Tiling make_tiling(int64_t numel, Slots slots, const TileSizes& sizes) {
  Tiling t;
  t.numel = numel;
  if (numel == 0) return t;
  const int64_t C = slots.C, P = C == 1 ? numel : slots.P;
  t.W = C * P;
  t.rows = numel / t.W;
  t.runs = C == 1 || P >= sizes.min_run;
  // Narrow rows folded: a row of a few columns (channels last on 3 to a few dozen channels) cost a
  // loop's set-up, the coefficients' loads and the sums' joins per few elements
  // (benchmarks/NOTES.md §27).
  if (!t.runs && t.W < sizes.fold_cols && t.rows > 1) {
    t.fold = std::min(ceil_div(sizes.fold_cols, t.W), t.rows);
    t.W *= t.fold;
    t.rows = ceil_div(numel, t.W);
  }
  // Enough tiles for the threads, which take whole tiles: a few wide rows made one or two (64
  // rows of 3072 columns: one tile, so one thread ran the whole backward). Where the rows alone
  // give fewer, narrower column tiles, not shorter rows: the partial sums stay one per slot and
  // row tile.
  const int64_t want = std::min(sizes.min_tiles, numel / sizes.grain);
  const auto enough_column_tiles = [&] {
    if (t.row_tiles * t.col_tiles >= want) return;
    t.slots_per_tile = ceil_div(C, std::min(C, ceil_div(want, t.row_tiles)));
    t.col_tiles = ceil_div(C, t.slots_per_tile);
  };
  if (t.runs) {
    t.seg = std::min(sizes.seg, P);
    t.segs = ceil_div(P, t.seg);
    t.rows_per_tile =
        std::clamp<int64_t>(sizes.target / t.seg, 1, std::min(sizes.run_rows, t.rows));
    t.row_tiles = ceil_div(t.rows, t.rows_per_tile);
    t.tiles = t.row_tiles * C * t.segs;
    t.partials = t.tiles;
    return t;
  }
  if (sizes.short_run && P >= sizes.short_run && t.fold == 1) {
    // Whole rows, walked in memory order: about target elements a tile (tiles of a few short
    // rows cost more than their loops), and of each slot at least min_run (a tile's partial
    // sums, N·C, stay small beside its elements) and at most seg, as a run tile; at least
    // min_tiles tiles where the rows allow, else (a batch of one or two) slots' tiles too.
    t.short_runs = true;
    const int64_t rows = std::max(ceil_div(sizes.min_run, P), sizes.target / t.W);
    t.rows_per_tile = std::min({rows, std::max<int64_t>(1, sizes.seg / P), t.rows});
    t.row_tiles = ceil_div(t.rows, t.rows_per_tile);
    if (t.row_tiles < want) {
      t.rows_per_tile = ceil_div(t.rows, std::min(t.rows, want));
      t.row_tiles = ceil_div(t.rows, t.rows_per_tile);
    }
    t.slots_per_tile = C;
    t.col_tiles = 1;
    enough_column_tiles();
  } else {
    t.slots_per_tile = std::clamp<int64_t>(sizes.cols / P, 1, C);
    t.col_tiles = ceil_div(C, t.slots_per_tile);
    const int64_t cols = t.slots_per_tile * P * t.fold;
    // At least min_rows rows: a tile's partial sums (N·slots) stay small beside its elements.
    const int64_t rows = std::max(sizes.target / cols, sizes.min_rows);
    t.rows_per_tile = std::clamp<int64_t>(rows, 1, std::min(sizes.max_rows, t.rows));
    // As many row tiles, of rows as even as can be (so a tile may hold fewer than min_rows, at
    // least about half): the threads take whole tiles, and 197 rows in tiles of 64 (64, 64, 64,
    // 5) went to two threads as 128 and 69.
    t.rows_per_tile = ceil_div(t.rows, ceil_div(t.rows, t.rows_per_tile));
    t.row_tiles = ceil_div(t.rows, t.rows_per_tile);
    if (t.fold == 1) enough_column_tiles();  // a folded row is one column tile
  }
  t.tiles = t.row_tiles * t.col_tiles;
  t.partials = t.row_tiles * C;
  return t;
}

}  // namespace torchext
