// Host-side preparation shared by every kernel, CPU and CUDA: the input checks (in one place, so
// every op and backend reports bad input in the same words), the result's layout, how each input
// is read, which coefficient value each element takes, and the tiles the backward's sums are
// split into. A kernel calls prepare_*, dispatches on dtype and runs its loops over the Call.
//
// The model every loop works in: the result is dense, and its elements are visited in its
// memory order as a flat index e in [0, numel). An input is read at e in place: x and the
// gradient may have any strides, including 0 (expanded), and are never copied (except on CUDA,
// where strides other than the result's or all-zero are copied once: see cuda/loops.cuh).
// Coefficients: each is one value, or one value per *slot*, where slot(e) = (e / P) % C: the
// coefficients' non-1 dims (right-aligned against x) form one block of x's dims, which the
// result's memory order keeps together (C elements of the block, P the result's stride there).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "math.h"

namespace torchext {

constexpr int kMaxCoefs = 8;
constexpr int kMaxDims = 16;

// How a kernel reads an input (x, the saved result, or the gradient) at the flat index e.
struct Operand {
  enum Kind : int8_t { kDense, kBroadcast, kStrided };
  Kind kind = kDense;  // kDense: at data + e (the result's strides); kBroadcast: at data
  const void* data = nullptr;
  // kStrided: the input's dims in the result's memory order, outermost first, coalesced; the
  // element e is at data + Σ_d ((e / ostride[d]) % size[d]) · stride[d].
  int ndim = 0;
  int64_t size[kMaxDims] = {}, stride[kMaxDims] = {}, ostride[kMaxDims] = {};
};

// The coefficient slot of the element at flat index e: (e / P) % C.
struct Slots {
  int64_t C = 1, P = 1;
};

// The code of a floating dtype, as the kernels read and write coefficients and their gradients.
inline math::Dtype code_of(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return math::Dtype::Half;
    case at::kBFloat16: return math::Dtype::BFloat16;
    case at::kFloat: return math::Dtype::Float;
    default: return math::Dtype::Double;
  }
}

// Where the kernels read coefficient i: one value, or C values (one per slot) contiguous.
struct CoefSource {
  const void* data = nullptr;  // nullptr: host_value (a 0-dim CPU tensor with a CUDA x, or a
                               // coefficient whose value the backward does not read)
  math::Dtype dtype = math::Dtype::Float;
  bool per_slot = false;
  double host_value = 0;
};

// One operator call, prepared.
struct Call {
  const char* op = nullptr;
  int ncoefs = 0;
  int64_t numel = 0;
  at::Tensor out;  // the result, or dx
  Operand x, g;    // x: the input the formula reads (x, or the saved result); g: the gradient
  Slots slots;
  CoefSource coefs[kMaxCoefs];
  // Copies the kernels read instead of the arguments: coefficient i's (contiguous or expanded) at
  // i, x's and the gradient's (only when strided beyond kMaxDims) at kMaxCoefs and kMaxCoefs + 1.
  at::Tensor kept[kMaxCoefs + 2];
  // Backward: the kernels write kernel_grads[i] (C values if per_slot[i], else one, each in its
  // dtype); finish_backward turns them into grads[i], shaped and typed like coefficient i.
  at::Tensor grads[kMaxCoefs], kernel_grads[kMaxCoefs];
  bool grad_per_slot[kMaxCoefs] = {};
  // Backward: the results not wanted (output_mask, ops.h): dx at 0, coefficient i's gradient at
  // i + 1. The kernels need not compute them; finish_backward makes them zeros. grads_zero: no
  // gradient wanted, so prepare_backward made them all zeros (the kernels have none to write).
  bool unwanted[kMaxCoefs + 1] = {};
  bool grads_zero = false;
  bool wants_dx() const { return !unwanted[0]; }
  bool wants_sums() const {
    for (int i = 0; i < ncoefs; ++i)
      if (!unwanted[i + 1]) return true;
    return false;
  }
};

// The coefficient arguments of a call: their tensors and names.
struct CoefArgs {
  const at::Tensor* tensors;
  const char* const* names;
  int n;
};

// integral: x may also be an integer tensor (ReLU).
Call prepare_forward(const char* op, const at::Tensor& x, CoefArgs coefs, bool integral = false);
// In place: call.out is x itself where the kernels can write into x (x dense, and the
// coefficients' block kept together in its memory order); else a new tensor, which the caller
// copies into x after the kernels. An x whose elements share memory (expanded) is refused, as
// torch's in-place ops refuse it.
Call prepare_inplace(const char* op, const at::Tensor& x, CoefArgs coefs, bool integral = false);
// v: what the forward saved (v_name: "x", or "result"); reads: a bit per coefficient whose value
// the backward reads (the others only give their gradient's shape and dtype); wanted: dx's and
// each coefficient's gradient's (ops.h's output_mask), or null for all.
Call prepare_backward(const char* op, const at::Tensor& grad, const at::Tensor& v,
                      const char* v_name, CoefArgs coefs, unsigned reads,
                      const bool* wanted = nullptr);
// After the kernels: the gradients of coefficients that were expanded for the kernels, summed
// back to their shapes; the results not wanted, zeros.
void finish_backward(Call& call);

// The Meta kernels' part (meta.cpp): the same checks and the same results (their layouts
// included) for tensors without data, symbolic shapes too. outs: dx and each coefficient's
// gradient.
at::Tensor meta_forward(const char* op, const at::Tensor& x, CoefArgs coefs, bool integral,
                        bool inplace = false);
void meta_backward(const char* op, const at::Tensor& grad, const at::Tensor& v, const char* v_name,
                   CoefArgs coefs, const bool* wanted, at::Tensor* outs);

// ---- tiles of the backward's sums --------------------------------------------------------------
// The elements, in memory order, are rows × W with W = C·P: a row holds every slot once, each as
// a run of P elements. Either
//   runs:    a tile is rows [r0, r1) of one segment of one slot's run (long runs, C == 1 too;
//            at most run_rows rows):
//            tile t = (row tile · C + slot) · segs + segment; its partial sums: [N] at t·N
//   columns: a tile is rows [r0, r1) of the columns of slots_per_tile whole slots (short runs);
//            its partial sums: [N][C] at row tile·N·C, the tile's slots in place.
//            Narrow rows are folded: fold rows of memory taken as one row of W = fold·C·P
//            columns (column q in slot (q / P) % C), the last row cut short where fold does not
//            divide them; the tiles then span every column (one column tile).
//            Short runs (short_run <= P < min_run; short_runs): column tiles of whole rows
//            (every slot; fewer only where the rows are too few for the threads), walked in
//            memory order a slot's run at a time.
// Both depend only on the shapes (never on thread counts): the sums are deterministic.
struct Tiling {
  bool runs = true, short_runs = false;
  int64_t numel = 0, fold = 1;
  int64_t W = 0, rows = 0, rows_per_tile = 1, row_tiles = 0;
  int64_t seg = 0, segs = 0;                  // runs
  int64_t slots_per_tile = 0, col_tiles = 0;  // columns
  int64_t tiles = 0;
  int64_t partials = 0;  // partial sums per coefficient
};

struct TileSizes {
  int64_t target;    // elements a tile should hold
  int64_t min_run;   // runs of P >= min_run elements are tiled as runs
  int64_t seg;       // longest segment of a run
  int64_t cols;      // most columns in a column tile (whole slots)
  int64_t min_rows;  // rows a column tile takes at least, before the row tiles are evened out
  int64_t max_rows;  // most rows in a column tile
  int64_t run_rows;  // most rows of a run in one tile (1: the tiles lie in memory order)
  // Column tiles: at least min(min_tiles, numel / grain) of them, narrower where the rows alone
  // give fewer (0: no such floor)
  int64_t min_tiles = 0, grain = 1;
  // Rows of fewer columns are folded, enough of them taken as one row to make at least this many
  // columns (0: none folded)
  int64_t fold_cols = 0;
  // Runs of P elements, short_run <= P < min_run, are walked as short runs (0: none)
  int64_t short_run = 0;
};

Tiling make_tiling(int64_t numel, Slots slots, const TileSizes& sizes);

}  // namespace torchext
