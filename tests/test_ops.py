"""The checks every op must pass, written once and parametrized over the op table
(``torchext.functional.OPS``, the ``op`` and ``coef_op`` fixtures of conftest.py): a new op gets
all of them by being in the table. Each test runs both ways in (``fn``: the function, whose
derivatives are registered in C++, and ``<Op>Function.apply``) on every device. Tests particular
to one op live in tests/test_<op>.py.
"""

import math
import re
import warnings

import pytest
import torch
from conftest import (
    SIZES,
    TOLERANCES,
    assert_close,
    bits,
    coefs,
    function,
    function_class,
    operator,
    randn,
    sum_errors,
)
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

import torchext
from torchext import reference


@pytest.fixture(params=["function", "Function.apply"])
def fn(request, op):
    if request.param == "function":
        return function(op)
    return function_class(op).apply


@pytest.fixture(params=["function", "Function.apply"])
def coef_fn(request, coef_op):
    if request.param == "function":
        return function(coef_op)
    return function_class(coef_op).apply


# ---- inputs ------------------------------------------------------------------------------------


def make_x(shape, dtype=torch.float32, device="cpu", layout=None, seed=None):
    """x of the given shape, laid out as asked; a leaf requiring grad, or a view of one."""
    if layout is None:
        return randn(*shape, dtype=dtype, device=device, requires_grad=True, seed=seed)
    if layout == "channels_last":
        base = randn(*shape, dtype=dtype, device=device, seed=seed)
        return base.contiguous(memory_format=torch.channels_last).requires_grad_()
    if layout == "nhcw":  # [N, C, H, W] laid out as [N, H, C, W]: H and W apart in memory
        n, c, h, w = shape
        base = randn(n, h, c, w, dtype=dtype, device=device, requires_grad=True, seed=seed)
        return base.permute(0, 2, 1, 3)
    if layout == "t":  # transposed: x = base.t()
        return randn(*shape[::-1], dtype=dtype, device=device, requires_grad=True, seed=seed).t()
    if layout == "expand":  # x = base.expand(...) from one row
        base = randn(1, *shape[1:], dtype=dtype, device=device, requires_grad=True, seed=seed)
        return base.expand(shape)
    if layout == "slice":  # every other element of the last dim
        base = randn(*shape[:-1], 2 * shape[-1], dtype=dtype, device=device, requires_grad=True,
                     seed=seed)
        return base[..., ::2]
    raise ValueError(layout)


# Coefficient shapes, each: (x's shape, the coefficients' shapes taken in turn, x's layout).
COEF_CASES = {
    "one-element (1,)": ((5, 7), [(1,)], None),
    "per channel [B, L, C]": ((3, 5, 8), [(8,)], None),
    "per channel [N, C, H, W]": ((2, 6, 5, 3), [(6, 1, 1)], None),
    "per channel channels_last": ((2, 6, 5, 3), [(6, 1, 1)], "channels_last"),
    "per group [B, L, G, C/G]": ((2, 3, 4, 5), [(4, 1)], None),
    # Rows of 12800 columns: four column tiles on the CPU (at most 4096 columns each), two or
    # more to a thread, which must not reuse one tile's coefficients per column for the next.
    "per group, wide rows": ((3, 128, 100), [(128, 1)], None),
    # 64 rows of 3001: one row tile, which the CPU cuts into five column tiles of 601 columns (at
    # least one tile per 32768 elements, make_tiling's min_tiles), the last one narrower.
    "few wide rows": ((64, 3001), [(3001,)], None),
    "mixed": ((3, 5, 8), [(8,), (), (1, 8), (1, 1, 1)], None),
    "long runs": ((2, 3, 1100), [(3, 1)], None),  # run tiles on the CPU and on CUDA
    "many short rows": ((700, 3), [(3,)], None),
    # Rows of 6 columns (3 groups of 2), which the CPU folds 22 to a row of 132 columns
    # (make_tiling's fold_cols): five row tiles, the last folded row cut short (66666 = 505 * 132
    # + 6).
    "narrow rows, folded": ((11111, 3, 2), [(3, 1)], None),
    # Runs of 32 to 255 elements (channels first on small maps; 16-bit from 64) go as short runs
    # on the CPU (make_tiling's short_run), a vector at a time, the last overlapping the one
    # before where the run is not a multiple of one: 49 elements; 37 read through buffers (x
    # strided); a batch of one, its row cut into three slots' tiles for the threads; more slots
    # than the table holds; ("per group, wide rows") runs of 100, 16-bit ones too.
    "short runs [N, C, H, W]": ((3, 10, 7, 7), [(10, 1, 1)], None),
    "short runs, strided x": ((3, 10, 37), [(10, 1)], "slice"),
    "short runs, a batch of one": ((1, 3000, 40), [(3000, 1), ()], None),
    "short runs, many slots": ((1, 4100, 32), [(4100, 1)], None),
    "x's own shape": ((3, 4, 5), [(3, 4, 5)], None),
    # More slots than the CPU puts in one table (kTableSlots, 4096, csrc/cpu/loops.h): each tile
    # reads its own slots' values from the coefficients, as columns (two tiles a row), expanded
    # per group, and as runs.
    "many slots": ((2, 50, 100), [(50, 100), ()], None),
    "many groups": ((2, 4100, 3), [(4100, 1)], None),
    "many long runs": ((1, 4097, 256), [(4097, 1), (1,)], None),
    "two blocks": ((2, 3, 4, 5), [(3, 1, 5), (5,)], None),  # expanded to their union
    "transposed x": ((8, 6), [(6,)], "t"),
    # Blocks that x's memory order splits or reverses (the result is then row-major).
    "block split in memory": ((2, 3, 4, 5), [(4, 5)], "nhcw"),
    "block reversed in memory": ((8, 6), [(8, 6)], "t"),
    "expanded x": ((4, 8), [(8,)], "expand"),
    "sliced x": ((4, 8), [(8,)], "slice"),
}


def ref_grads(op, x, cs, g):
    """Value and gradients of the eager reference in float64, from the same (rounded) inputs."""
    x64 = x.detach().double().requires_grad_()
    c64 = [c.detach().double().requires_grad_() for c in cs]
    y = reference.EAGER[op.name](x64, *c64)
    assert y.shape == x.shape
    return y, torch.autograd.grad(y, [x64, *c64], g.double())


def check_against_reference(op, fn, x, cs, dtype):
    y = fn(x, *cs)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    g = randn(*x.shape, dtype=dtype, device=x.device, seed=1)
    grads = torch.autograd.grad(y, [x, *cs], g)
    y_ref, grads_ref = ref_grads(op, x, cs, g)
    assert_close(y, y_ref, dtype)
    assert_close(grads[0], grads_ref[0], dtype)
    # Coefficient gradients are sums over x, accumulated in float32 (float64 for float64 x) and
    # stored in the coefficient's dtype: compare them at the coarser of the two, the tolerance
    # widened with the square root of the count.
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for got, want, c in zip(grads[1:], grads_ref[1:], cs, strict=True):
        assert got.shape == c.shape and got.dtype == c.dtype and got.device == c.device
        tol_dtype = max(acc, c.dtype, key=lambda t: TOLERANCES[t][1])
        assert_close(got, want, tol_dtype, scale=math.sqrt(max(x.numel(), 1)))
    return y, grads


# ---- values and gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
def test_matches_reference(op, fn, device, dtype, n):
    x = make_x((n,), dtype, device)
    check_against_reference(op, fn, x, coefs(op, dtype, device), dtype)


@pytest.mark.parametrize("case", list(COEF_CASES))
def test_coefficient_shapes(coef_op, coef_fn, device, dtype, case):
    shape, coef_shapes, layout = COEF_CASES[case]
    x = make_x(shape, dtype, device, layout)
    check_against_reference(coef_op, coef_fn, x, coefs(coef_op, dtype, device, coef_shapes), dtype)


@pytest.mark.parametrize("coef_dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("coef_shape", [(), (8,)])
def test_coefficient_dtypes(coef_op, coef_fn, device, coef_dtype, coef_shape):
    x = make_x((5, 8), torch.float32, device)
    cs = coefs(coef_op, coef_dtype, device, coef_shape)
    check_against_reference(coef_op, coef_fn, x, cs, torch.float32)


def test_python_number_coefficients(coef_op, coef_fn, device):
    x = randn(101, device=device, requires_grad=True)
    nums = [0.5, -1, 0.25, 0.3][: len(coef_op.coefs)]
    y = coef_fn(x, *nums)
    expected = reference.EAGER[coef_op.name](x.detach().double(), *nums)
    assert_close(y, expected, torch.float32)
    (gx,) = torch.autograd.grad(y.sum(), [x])
    assert gx.shape == x.shape


def test_cpu_scalar_coefficient_with_x_elsewhere(coef_op, device):
    """A 0-dim CPU tensor is a scalar for x on any device (as in eager); its gradient is 0-dim."""
    if device == "cpu":
        pytest.skip("needs x on another device than the CPU")
    x = make_x((4, 8), torch.float32, device)
    cs = coefs(coef_op, torch.float32, device, [(8,)])
    cs[1] = cs[1].detach()[0].cpu().requires_grad_()
    check_against_reference(coef_op, function(coef_op), x, cs, torch.float32)


@pytest.mark.parametrize(
    "make_view",
    [
        lambda t: t.t(),
        lambda t: t[:, ::3],
        lambda t: t[1:, 2:-1],
        lambda t: t[0:1, 0:1].expand(4, 5),
    ],
    ids=["transposed", "step3", "offset", "expanded"],
)
def test_non_contiguous(op, fn, device, make_view):
    base = randn(9, 20, device=device, requires_grad=True, seed=21)
    cs = coefs(op, torch.float32, device)
    view = make_view(base)
    x_contig = view.detach().contiguous().requires_grad_()
    y_view, y_contig = fn(view, *cs), fn(x_contig, *cs)
    torch.testing.assert_close(y_view, y_contig, rtol=0, atol=0)
    g = randn(*view.shape, device=device, seed=22)
    gv = torch.autograd.grad(y_view, [base, *cs], g)
    gc = torch.autograd.grad(y_contig, [x_contig, *cs], g)
    expected_base = torch.zeros_like(base)
    expected_base = torch.autograd.grad(
        make_view(expected_base.requires_grad_()), expected_base, gc[0]
    )[0]
    torch.testing.assert_close(gv[0], expected_base)
    # The coefficient gradients are sums, taken in each x's memory order: rounding apart, equal.
    for a, b in zip(gv[1:], gc[1:], strict=True):
        assert_close(a, b, torch.float32, scale=math.sqrt(view.numel()))


LAYOUTS = {
    "contiguous": lambda t: t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "channels_last_3d": lambda t: t.unsqueeze(2).contiguous(memory_format=torch.channels_last_3d),
    "permuted": lambda t: t.permute(2, 0, 3, 1),
    "transposed": lambda t: t.transpose(1, 3),
    "sliced": lambda t: t[:, ::2, :, 1:],
    "expanded": lambda t: t[:, :1].expand(-1, 4, -1, -1),
    "size-1 dims": lambda t: t[:1, :, :1],
    "empty, transposed": lambda t: t[:, :, :0].transpose(1, 3),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_result_layout_is_torchs(op, fn, device, layout):
    """The result is laid out as torch's own elementwise ops lay out theirs (channels_last stays
    channels_last, a dense x keeps its strides), the gradient follows x's, and a per-channel
    coefficient keeps that layout too."""
    x = LAYOUTS[layout](randn(2, 4, 3, 5, device=device)).requires_grad_()
    expected = torch.relu(x).stride()
    cases = [coefs(op, torch.float32, device)]
    if op.coefs:  # per channel along dim 1
        cases.append(coefs(op, torch.float32, device, [(x.size(1),) + (1,) * (x.dim() - 2)]))
    for cs in cases:
        y = fn(x, *cs)
        assert y.stride() == expected, (y.stride(), expected)
        (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
        assert gx.stride() == y.stride()


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 5)])
def test_empty(op, fn, device, dtype, shape):
    x = make_x(shape, dtype, device)
    cs = coefs(op, dtype, device)
    y = fn(x, *cs)
    assert y.shape == x.shape and y.dtype == dtype
    grads = torch.autograd.grad(y.sum(), [x, *cs])
    assert grads[0].shape == x.shape
    for g, c in zip(grads[1:], cs, strict=True):  # a sum over nothing is zero
        assert g.shape == c.shape and g.item() == 0


def test_empty_with_per_channel_coefficients(coef_op, device):
    x = make_x((0, 8), torch.float32, device)
    cs = coefs(coef_op, torch.float32, device, [(8,)])
    y = coef_op_call(coef_op, x, cs)
    grads = torch.autograd.grad(y.sum(), [x, *cs])
    for g, c in zip(grads[1:], cs, strict=True):
        assert g.shape == c.shape and torch.equal(g, torch.zeros_like(c))


def coef_op_call(op, x, cs):
    return function(op)(x, *cs)


def test_zero_dim(op, fn, device, dtype):
    x = make_x((), dtype, device)
    check_against_reference(op, fn, x, coefs(op, dtype, device), dtype)


def test_more_strided_dims_than_a_kernel_walks(op, fn, device):
    """x and the gradient with 18 dims that merge with none beside them (a broadcast dim between
    each two of x's own): more than a kernel walks (kMaxDims, 16), so they are read through a
    copy; as the contiguous x gives."""
    n = 18
    base = randn(1 << (n // 2), dtype=torch.float64, device=device)
    strides = [0 if d % 2 else 1 << (n // 2 - 1 - d // 2) for d in range(n)]
    x = base.as_strided((2,) * n, strides).requires_grad_()
    g = base.flip(0).as_strided((2,) * n, strides)
    cs = coefs(op, torch.float64, device, [(2,) * (n // 2)] if op.coefs else ())
    x_contig = x.detach().contiguous().requires_grad_()
    got = torch.autograd.grad(fn(x, *cs), [x, *cs], g)
    want = torch.autograd.grad(fn(x_contig, *cs), [x_contig, *cs], g.contiguous())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_nan_in_nan_out(op, fn, device):
    x = randn(10, device=device)
    x[3] = float("nan")
    y = fn(x, *coefs(op, torch.float32, device))
    assert torch.isnan(y[3]) and torch.isfinite(y[torch.arange(10, device=device) != 3]).all()


@pytest.mark.parametrize("coef_shape", [(), (1000,)], ids=["one-element", "per channel"])
def test_backward_deterministic(op, fn, device, coef_shape):
    if coef_shape and not op.coefs:
        pytest.skip(f"{op.name} has no coefficients")
    x = make_x((201, 1000), torch.float32, device)
    cs = coefs(op, torch.float32, device, coef_shape)
    g = randn(201, 1000, device=device, seed=3)
    runs = [torch.autograd.grad(fn(x, *cs), [x, *cs], g) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


# x beyond the caches for a backward: rows of 1030 columns (a strip's tail), 1501 of them (a
# tile's rows not a multiple of four); and rows of 7, which the CPU folds 19 to a row of 133
# columns (make_tiling's fold_cols), the last folded row cut short.
BACKWARD_BEYOND = {"1030 columns": (1501, 1030), "7 columns, folded": (260011, 7)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("mask", ["all", "no dx", "no sums"])
@pytest.mark.parametrize("shape", list(BACKWARD_BEYOND.values()), ids=list(BACKWARD_BEYOND))
def test_backward_beyond_the_caches_gives_the_bits_of_the_cached_loop(coef_op, dtype, mask, shape):
    """Past kStreamBytes of data (csrc/cpu/loops.h) a channels-last backward runs its column
    tiles a strip at a time, prefetching ahead (strips, csrc/cpu/loops_impl.h). Its results are
    bit for bit those of the loop it stands in for (columns), which a gradient read through a
    copy (strided, so never taken in place) still takes, with any number of threads."""
    n = len(coef_op.coefs)
    wanted = {"all": None, "no dx": [False] + [True] * n, "no sums": [True] + [False] * n}[mask]
    x = randn(*shape, dtype=dtype)
    g = randn(*shape, dtype=dtype, seed=1)
    assert 3 * g.numel() * g.element_size() > 16 << 20  # beyond kStreamBytes
    g_strided = torch.empty(shape[0], shape[1] + 3, dtype=dtype)[:, : shape[1]].copy_(g)
    cs = coefs(coef_op, dtype, "cpu", [(shape[1],), (), (shape[1],), (1, shape[1])],
               requires_grad=False)
    bwd = operator(coef_op, backward=True)
    streamed = bwd(g, x, *cs, output_mask=wanted)
    cached = bwd(g_strided, x, *cs, output_mask=wanted)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = bwd(g, x, *cs, output_mask=wanted)
    finally:
        torch.set_num_threads(threads)
    for i, (a, b, c) in enumerate(zip(streamed, cached, one_thread, strict=True)):
        assert torch.equal(bits(a), bits(b)) and torch.equal(bits(a), bits(c)), i


# The same for a forward (x of 4.3M elements): 1030 columns, and 7 (folded as above).
FORWARD_BEYOND = {"1030 columns": (4201, 1030), "7 columns, folded": (620011, 7)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", list(FORWARD_BEYOND.values()), ids=list(FORWARD_BEYOND))
def test_forward_in_and_beyond_the_caches_gives_the_same_bits(coef_op, dtype, shape):
    """In the caches a channels-last forward takes four rows at a time (forward_columns,
    csrc/cpu/loops_impl.h; bfloat16 through buffers, forward_buffered); past kStreamBytes of data
    (csrc/cpu/loops.h), one row at a time, or where the rows' coefficients are wide
    (kWideCoefBytes; 1030 columns' are) eight at a time in float32 and float64
    (kWideRowsAtOnce), four in bfloat16. An element's result is the same either way: the whole x
    (beyond) against pieces of 97 rows (in the caches; a tile's rows not a multiple of four)."""
    x = randn(*shape, dtype=dtype)
    assert 2 * x.numel() * x.element_size() > 16 << 20  # beyond kStreamBytes
    cs = coefs(coef_op, dtype, "cpu", [(shape[1],), (), (shape[1],), (1, shape[1])],
               requires_grad=False)
    fwd = operator(coef_op)
    pieces = torch.cat([fwd(piece, *cs) for piece in x.split(97)])
    assert torch.equal(bits(fwd(x, *cs)), bits(pieces))


# Channels first on maps of 37 elements (74 in bfloat16, whose short runs start at 64): short
# runs on the CPU (make_tiling's short_run; cpu/loops.h's tile_sizes), a vector at a time, the
# last overlapping the one before. 458 x 31 runs (203 x 35): sixteen threads split the forward's
# elements within runs, some 1 to 6 elements from a run's start or end.
SHORT_RUNS = {torch.float32: (458, 31, 37), torch.float64: (458, 31, 37),
              torch.bfloat16: (203, 35, 74)}


@pytest.mark.parametrize("dtype", list(SHORT_RUNS), ids=str)
def test_short_runs_give_the_same_bits_every_way(coef_op, dtype):
    """Short runs read x and the gradient in place, or (strided, or 16-bit) through buffers, and
    a thread may take any part of a run, fewer elements than a vector too. Either way, with any
    number of threads, each result is the same bits."""
    shape = SHORT_RUNS[dtype]
    x = randn(*shape, dtype=dtype)
    g = randn(*shape, dtype=dtype, seed=1)

    def strided(t):
        return torch.empty(*shape[:2], shape[2] + 3, dtype=dtype)[..., : shape[2]].copy_(t)

    c = shape[1]
    cs = coefs(coef_op, dtype, "cpu", [(c, 1), (), (c, 1), (1, c, 1)], requires_grad=False)
    fwd, bwd = operator(coef_op), operator(coef_op, backward=True)
    y, grads = fwd(x, *cs), bwd(g, x, *cs)
    ways = {"through buffers": (fwd(strided(x), *cs), bwd(strided(g), strided(x), *cs))}
    threads = torch.get_num_threads()
    try:
        for n in (1, 16):
            torch.set_num_threads(n)
            ways[f"{n} threads"] = (fwd(x, *cs), bwd(g, x, *cs))
    finally:
        torch.set_num_threads(threads)
    for way, (y_way, grads_way) in ways.items():
        assert torch.equal(bits(y_way), bits(y)), way
        for i, (a, b) in enumerate(zip(grads_way, grads, strict=True)):
            assert torch.equal(bits(a), bits(b)), (way, i)


@pytest.mark.parametrize(
    "shape, coef_shape",
    [((1 << 20,), ()), ((256, 4096), (4096,)), ((4096, 256), (256,)), ((1 << 17, 8), (8,)),
     ((512, 64, 37), (64, 1)), ((2048, 2, 200), (2, 1))],
    ids=["one-element", "per channel, long rows", "per channel, many rows", "per channel, folded",
         "per channel, short runs", "per channel, short runs, two channels"],
)
def test_coefficient_gradients_as_accurate_as_torch_sum(coef_op, device, shape, coef_shape):
    """Each coefficient gradient is a sum of 2^20 float32 terms (or per channel, of 256, 4096 or
    2^17: rows of 8 columns, which the CPU folds 16 to a row, make_tiling's fold_cols; or 512
    runs of 37, or 2048 of 200 in tiles of 20 rows, short runs, make_tiling's short_run).
    Against the exact sums (math.fsum) of the very terms the kernel adds (it returns them as the
    gradient of a coefficient of x's own shape), its error relative to the sum of the terms'
    magnitudes (the measure summation error bounds use), averaged over every sum, is no larger
    than torch.sum's of the same terms on the same device (conftest.sum_errors). On CUDA it
    checks the kernels' compensated thread chains and block trees against CUDA's torch.sum."""
    x = randn(*shape, device=device, seed=11)
    g = randn(*shape, device=device, seed=12)
    cs = coefs(coef_op, torch.float32, device, coef_shape, seed=13)
    ours = torch.autograd.grad(coef_op_call(coef_op, x, cs), cs, g)
    # The same coefficient values, one per element: the gradient is then the terms themselves.
    per_element = [c.detach().expand(shape).contiguous().requires_grad_() for c in cs]
    terms = torch.autograd.grad(coef_op_call(coef_op, x, per_element), per_element, g)
    ours_mean, torch_mean = sum_errors(ours, terms)
    assert ours_mean <= torch_mean, (ours_mean, torch_mean)


@pytest.mark.parametrize("case", ["one-element (1,)", "per channel [B, L, C]",
                                  "per channel [N, C, H, W]", "per group [B, L, G, C/G]",
                                  "long runs"])
def test_an_infinite_term_keeps_its_sum_infinite(coef_op, device, dtype, case):
    """A coefficient gradient whose terms hold one infinity is that infinity, as torch.sum of the
    terms gives it: the compensated sums must not turn it into NaN (inf - inf in the rounding
    error they keep). (Not eager autograd's gradient: it adds P3's two paths, +inf and -inf.)"""
    shape, coef_shapes, layout = COEF_CASES[case]
    x = make_x(shape, dtype, device, layout)
    cs = coefs(coef_op, dtype, device, coef_shapes)
    g = randn(*shape, dtype=dtype, device=device, seed=1)
    g.view(-1)[g.numel() // 3] = math.inf
    ours = torch.autograd.grad(coef_op_call(coef_op, x, cs), cs, g)
    # The terms themselves: the gradients of the same values, one per element.
    per_element = [c.detach().expand(shape).contiguous().requires_grad_() for c in cs]
    terms = torch.autograd.grad(coef_op_call(coef_op, x, per_element), per_element, g)
    for got, t, c in zip(ours, terms, cs, strict=True):
        want = t.double().sum_to_size(c.shape)
        assert want.isinf().any() and not want.isnan().any()  # the case has one to keep
        assert torch.equal(got.isinf(), want.isinf()), (got, want)
        assert torch.equal(got[got.isinf()].double(), want[want.isinf()])


# ---- autograd checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("coef_shape", [(), (5,), [(4, 1), (), (1, 5), (4, 5)]],
                         ids=["one-element", "per channel", "mixed"])
def test_gradcheck(op, fn, device, coef_shape):
    if coef_shape != () and not op.coefs:
        pytest.skip(f"{op.name} has no coefficients")
    x = make_x((4, 5), torch.float64, device)
    cs = coefs(op, torch.float64, device, coef_shape)
    assert gradcheck(fn, (x, *cs))
    assert gradgradcheck(fn, (x, *cs))


def test_gradcheck_non_contiguous(op, fn, device):
    x = make_x((6, 5), torch.float64, device)
    cs = coefs(op, torch.float64, device, [(3,)] if op.coefs else ())
    assert gradcheck(lambda t, *c: fn(t.t()[:, ::2], *c), (x, *cs))
    assert gradgradcheck(lambda t, *c: fn(t.t()[:, ::2], *c), (x, *cs))


def _saved(op, x, cs):
    """What the backward operator takes besides grad: x, or the result."""
    return operator(op)(x, *cs).detach() if op.saves == "result" else x


def test_operators_are_differentiable(op, device):
    """The operators carry their own derivatives (csrc/autograd.cpp): forward, backward and
    the backward's backward, called as torch.ops.torchext.* with nothing from Python."""
    x = make_x((4, 5), torch.float64, device)
    cs = coefs(op, torch.float64, device, [(5,), ()])
    assert gradcheck(operator(op), (x, *cs))
    assert gradgradcheck(operator(op), (x, *cs))
    g = randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    bwd = operator(op, backward=True)
    assert gradcheck(bwd, (g, _saved(op, x, cs), *cs))
    assert gradgradcheck(bwd, (g, _saved(op, x, cs), *cs))


# torch before 2.13 made a C++ Function's node itself (`new CppNode<F>`): there the nodes keep
# that C++ type's name (csrc/autograd.cpp, "the nodes' names").
NAMED_NODES = torch.torch_version.TorchVersion(torch.__version__) >= (2, 13)


def node_name(cls):
    """An autograd node's name as grad_fn.name(), anomaly mode and the profiler give it: bare, as
    torch's own (not torch::autograd::CppNode<torchext::...>, the C++ Function's default)."""
    return cls if NAMED_NODES else f"torch::autograd::CppNode<torchext::{cls}>"


def test_autograd_nodes_are_named_after_the_op(op, device):
    """grad_fn names as torch's own (MulBackward0): <Op>Backward0, <Op>BackwardBackward0 for the
    backward's own node, <Op>_Backward0 in place; not the Function templates' mangled types."""
    x = make_x((4, 5), torch.float64, device)
    cs = coefs(op, torch.float64, device)
    y = function(op)(x, *cs)
    assert y.grad_fn.name() == node_name(f"{op.cls}Backward0")
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
    assert dx.grad_fn.name() == node_name(f"{op.cls}BackwardBackward0")
    if op.inplace:
        h = x * 1
        function(op)(h, inplace=True)
        assert h.grad_fn.name() == node_name(f"{op.cls}_Backward0")


def test_anomaly_mode_and_profiler_name_the_node(op, device):
    x = make_x((4, 5), torch.float32, device)
    cs = coefs(op, torch.float32, device)
    g = torch.full((4, 5), float("nan"), device=device)
    with pytest.warns(UserWarning), torch.autograd.detect_anomaly(check_nan=True):
        y = function(op)(x, *cs)
        with pytest.raises(RuntimeError, match=re.escape(f"'{node_name(op.cls + 'Backward0')}' "
                                                         "returned nan values")):
            y.backward(g)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        function(op)(x, *cs).backward(torch.ones(4, 5, device=device))
    names = {e.name for e in prof.events()}
    assert f"autograd::engine::evaluate_function: {node_name(op.cls + 'Backward0')}" in names


def test_no_grad_and_inference_mode(op, fn, device):
    """Nothing recorded, the same values (the kernels skip the autograd Function there)."""
    x = make_x((33,), torch.float32, device)
    cs = coefs(op, torch.float32, device)
    y = fn(x, *cs)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            y_mode = fn(x, *cs)
        assert y_mode.grad_fn is None and not y_mode.requires_grad
        assert torch.equal(y_mode, y)


def test_saves_only_what_the_backward_reads(coef_op, device):
    """A coefficient whose value no formula needs (a) is not saved: changing it in place after the
    forward, or passing an inference-mode tensor, is as fine as in eager."""
    x = make_x((6,), torch.float32, device)
    cs = coefs(coef_op, torch.float32, device)
    y = coef_op_call(coef_op, x, cs)
    with torch.no_grad():
        cs[0].add_(1.0)
    grads = torch.autograd.grad(y.sum(), [x, *cs])
    assert grads[1].item() == pytest.approx(6.0)  # da = Σg
    with torch.inference_mode():
        a = torch.tensor(0.5, device=device)
    y = coef_op_call(coef_op, x, [a, *cs[1:]])
    (gx,) = torch.autograd.grad(y.sum(), [x])
    assert gx.shape == x.shape


# ---- torch.func and forward-mode AD --------------------------------------------------------------
# Every transform through the function, the Function class and the module (torch.func's way to a
# module: functional_call), against the same transform of the eager reference, with one-element
# and per-channel coefficients; vmap by batching rules, never torch's slow per-sample fallback
# (its warning is an error here).

FUNC_COEFS = {"one-element": [()], "per channel": [(4,), (), (1, 4), (4,)],
              "per channel, 1-d x": [(4,), (), (1,), (4,)]}


@pytest.fixture(params=["function", "Function.apply", "module"])
def entry(request, op):
    """(x, *coefficients) -> y through one of the three ways in."""
    if request.param == "function":
        return function(op)
    if request.param == "Function.apply":
        return function_class(op).apply
    module = getattr(torchext.nn, op.cls)().to("meta")

    def call(x, *cs):
        return torch.func.functional_call(module, dict(zip(op.coefs, cs, strict=True)), (x,))

    return call


def func_inputs(op, device, coef_case="one-element"):
    x = randn(3, 4, dtype=torch.float64, device=device, seed=21)
    return x, coefs(op, torch.float64, device, FUNC_COEFS[coef_case], requires_grad=False,
                    seed=22)


def assert_trees_close(got, want):
    got, want = torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def eager(op):
    return reference.EAGER[op.name]


@pytest.fixture(autouse=False)
def no_slow_vmap():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*performance drop.*")
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated",
                                category=FutureWarning)
        yield


@pytest.mark.parametrize("coef_case", ["one-element", "per channel"])
def test_func_grad_vjp_jvp(op, entry, device, coef_case, no_slow_vmap):
    x, cs = func_inputs(op, device, coef_case)
    argnums = tuple(range(1 + len(cs)))

    def loss(f):
        return lambda *args: (f(*args) * torch.arange(12.0, device=device).view(3, 4)).sum()

    assert_trees_close(torch.func.grad(loss(entry), argnums)(x, *cs),
                       torch.func.grad(loss(eager(op)), argnums)(x, *cs))
    cot = randn(3, 4, dtype=torch.float64, device=device, seed=23)
    assert_trees_close(torch.func.vjp(entry, x, *cs)[1](cot),
                       torch.func.vjp(eager(op), x, *cs)[1](cot))
    tangents = (randn(3, 4, dtype=torch.float64, device=device, seed=24),
                *[randn(*c.shape, dtype=torch.float64, device=device, seed=25) for c in cs])
    assert_trees_close(torch.func.jvp(entry, (x, *cs), tangents),
                       torch.func.jvp(eager(op), (x, *cs), tangents))


@pytest.mark.parametrize("coef_case", ["one-element", "per channel, 1-d x"])
def test_func_jacobians_and_hessian(op, entry, device, coef_case, no_slow_vmap):
    """jacrev, jacfwd and hessian (forward over reverse) in every argument, and the reverse over
    reverse Hessian: every derivative order the second-order operator gives."""
    x, cs = func_inputs(op, device, coef_case)
    x = x[0]  # a Jacobian of a (4,) output
    argnums = tuple(range(1 + len(cs)))
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        assert_trees_close(transform(entry, argnums)(x, *cs),
                           transform(eager(op), argnums)(x, *cs))

    def total(f):
        return lambda *args: f(*args).sum()

    assert_trees_close(torch.func.hessian(total(entry), argnums)(x, *cs),
                       torch.func.hessian(total(eager(op)), argnums)(x, *cs))
    rev_rev = torch.func.jacrev(torch.func.jacrev(total(entry), argnums), argnums)(x, *cs)
    assert_trees_close(rev_rev, torch.func.hessian(total(eager(op)), argnums)(x, *cs))


def test_forward_mode_ad(op, fn, device):
    """torch.autograd.forward_ad: dual inputs give the eager expression's tangents."""
    x, cs = func_inputs(op, device, "per channel" if op.coefs else "one-element")
    tangents = [randn(*t.shape, dtype=torch.float64, device=device, seed=30 + i)
                for i, t in enumerate([x, *cs])]
    with torch.autograd.forward_ad.dual_level():
        duals = [torch.autograd.forward_ad.make_dual(t, d) for t, d in zip([x, *cs], tangents,
                                                                           strict=True)]
        y = torch.autograd.forward_ad.unpack_dual(fn(*duals))
    want = torch.func.jvp(eager(op), (x, *cs), tuple(tangents))
    torch.testing.assert_close(y.primal, want[0])
    torch.testing.assert_close(y.tangent, want[1])


VMAPS = {
    # name: (in_dims for x, in_dims for each coefficient, out_dims)
    "x batched": (0, None, 0),
    "x batched on dim 1, out on dim 1": (1, None, 1),
    "coefficients batched": (None, 0, 0),
    "both": (0, 0, 0),
}


@pytest.mark.parametrize("how", list(VMAPS))
def test_vmap(op, entry, device, how, no_slow_vmap):
    x_dim, c_dim, out_dim = VMAPS[how]
    if c_dim is not None and not op.coefs:
        pytest.skip(f"{op.name} has no coefficients")
    x, cs = func_inputs(op, device, "per channel" if op.coefs else "one-element")
    xs = torch.stack([x + i for i in range(5)], dim=x_dim) if x_dim is not None else x
    cbs = [torch.stack([c * (1 + i) for i in range(5)]) if c_dim is not None else c for c in cs]
    in_dims = (x_dim, *[c_dim] * len(cs))
    got = torch.vmap(entry, in_dims=in_dims, out_dims=out_dim)(xs, *cbs)
    want = torch.vmap(eager(op), in_dims=in_dims, out_dims=out_dim)(xs, *cbs)
    torch.testing.assert_close(got, want)


def test_per_sample_gradients(op, entry, device, no_slow_vmap):
    """vmap(grad(...)): each sample's gradients of x and of the coefficients (shared by all
    samples), as a loop over the samples computes them."""
    x, cs = func_inputs(op, device, "per channel, 1-d x" if op.coefs else "one-element")
    argnums = tuple(range(1 + len(cs)))

    def loss(f):
        return lambda x, *c: (f(x, *c) ** 2).sum()

    in_dims = (0, *[None] * len(cs))
    got = torch.vmap(torch.func.grad(loss(entry), argnums), in_dims=in_dims)(x, *cs)
    want = [torch.func.grad(loss(eager(op)), argnums)(row, *cs) for row in x]
    for i, g in enumerate(got):
        torch.testing.assert_close(g, torch.stack([w[i] for w in want]))


@pytest.mark.parametrize("way", ["function", "module"])
def test_func_transforms_in_place(op, way, device, no_slow_vmap):
    """<name>(x, inplace=True) and the module with inplace=True under torch.func's transforms and
    forward-mode AD give what the eager expression written into x (x.copy_(...), which is what
    torch.relu_ is for relu) gives there, and write into x: a model with in-place ReLUs takes
    grad, vmap and jvp as torch's own does."""
    if not op.inplace:
        pytest.skip(f"{op.name} has no in-place form")
    if way == "module":
        fn = getattr(torchext.nn, op.cls)(inplace=True)
    else:
        def fn(x):
            return function(op)(x, inplace=True)

    def ours(x):
        return fn(x * 1)

    def want(x):
        y = x * 1
        return y.copy_(eager(op)(y))

    x = func_inputs(op, device)[0]
    t = torch.ones_like(x)
    assert_trees_close(torch.func.grad(lambda v: (ours(v) ** 2).sum())(x),
                       torch.func.grad(lambda v: (want(v) ** 2).sum())(x))
    assert_trees_close(torch.func.vjp(ours, x)[1](t), torch.func.vjp(want, x)[1](t))
    assert_trees_close(torch.func.jvp(ours, (x,), (t,)), torch.func.jvp(want, (x,), (t,)))
    assert_trees_close(torch.func.jacfwd(ours)(x[0]), torch.func.jacfwd(want)(x[0]))
    assert_trees_close(torch.vmap(torch.func.grad(lambda v: ours(v).sum()))(x),
                       torch.vmap(torch.func.grad(lambda v: want(v).sum()))(x))
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, t)
        got = torch.autograd.forward_ad.unpack_dual(ours(dual))
    assert_trees_close((got.primal, got.tangent), torch.func.jvp(want, (x,), (t,)))
    xs = x.clone()  # vmap writing into its own input
    torch.testing.assert_close(torch.vmap(fn)(xs), eager(op)(x))
    torch.testing.assert_close(xs, eager(op)(x))


def test_operators_have_vmap_rules(op, device, no_slow_vmap):
    """torch.vmap over the operators themselves (as C++ callers and the second-order formulas
    reach them) takes their batching rules."""
    x, cs = func_inputs(op, device, "per channel" if op.coefs else "one-element")
    xs = torch.stack([x, 2 * x])
    in_dims = (0, *[None] * len(cs))
    torch.testing.assert_close(torch.vmap(operator(op), in_dims=in_dims)(xs, *cs),
                               torch.stack([operator(op)(t, *cs) for t in xs]))
    g = torch.ones_like(xs)
    saved = torch.stack([_saved(op, t, cs) for t in xs])
    in_dims = (0, 0, *[None] * len(cs))
    got = torch.vmap(operator(op, backward=True), in_dims=in_dims)(g, saved, *cs)
    got = got if isinstance(got, tuple) else (got,)
    for i in range(len(xs)):
        want = operator(op, backward=True)(g[i], saved[i], *cs)
        want = want if isinstance(want, tuple) else (want,)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a[i], b)


def test_ensemble_of_modules(coef_op, device, no_slow_vmap):
    """torch.func.stack_module_state + vmap(functional_call): an ensemble of per-channel modules
    in one call, values and gradients as each module alone."""
    module = getattr(torchext.nn, coef_op.cls)
    models = [module(num_parameters=4, dim=-1, dtype=torch.float64, device=device)
              for _ in range(3)]
    params, buffers = torch.func.stack_module_state(models)
    base = module(num_parameters=4, dim=-1, dtype=torch.float64).to("meta")
    x = randn(5, 4, dtype=torch.float64, device=device)

    def run(p, b):
        return torch.func.functional_call(base, (p, b), (x,))

    torch.testing.assert_close(torch.vmap(run)(params, buffers),
                               torch.stack([m(x) for m in models]))
    grads = torch.vmap(torch.func.grad(lambda p, b: run(p, b).sum()))(params, buffers)
    for name in coef_op.coefs:
        want = torch.stack([torch.autograd.grad(m(x).sum(), getattr(m, name))[0] for m in models])
        torch.testing.assert_close(grads[name], want)


def test_fx_symbolic_trace(op):
    """torch.fx.symbolic_trace (torchvision's feature extraction, FX quantization) of a model
    using the module and the function records them as calls, and the traced module computes what
    the model computes."""
    module = getattr(torchext.nn, op.cls)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module(num_parameters=4, dim=-1) if op.coefs else module()

        def forward(self, x):
            return self.inner(x) + function(op)(x, *[0.5] * len(op.coefs))

    model = Model()
    traced = torch.fx.symbolic_trace(model)
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert targets.count(function(op)) == 2
    x = randn(3, 4)
    torch.testing.assert_close(traced(x), model(x))


# ---- operator registration -----------------------------------------------------------------------


def op_samples(op, device):
    """(operator, args) for the forward and backward operators, for opcheck: dtypes, shapes,
    per-channel coefficients and layouts."""
    fwd, bwd = operator(op), operator(op, backward=True)
    samples = []
    cases = [((3, 4), torch.float32, [()]), ((0,), torch.float64, [()]), ((), torch.bfloat16, [()]),
             ((2, 3, 4), torch.float32, [(4,), (3, 1), ()]),
             ((2, 3, 4, 5), torch.float64, [(3, 1, 1)])]
    for shape, dtype, coef_shapes in cases:
        x = randn(*shape, dtype=dtype, device=device)
        cs = coefs(op, dtype, device, coef_shapes, requires_grad=False)
        g = randn(*shape, dtype=dtype, device=device)
        samples += [(fwd, (x, *cs)), (bwd, (g, _saved(op, x, cs), *cs))]
    x = randn(2, 3, 4, 5, device=device).contiguous(memory_format=torch.channels_last)
    samples.append((fwd, (x, *coefs(op, torch.float32, device, [(3, 1, 1)], requires_grad=False))))
    samples.append((fwd, (randn(5, 6, device=device).t(), *coefs(op, requires_grad=False,
                                                                  device=device))))
    # Inputs that require grad: opcheck then also traces the backward with AOTAutograd and
    # compares its gradients with eager's, and checks that no autograd formula hides at a
    # backend key. (That an autograd kernel exists at all, test_operators_are_differentiable
    # checks: opcheck passes an operator without one.)
    x = make_x((3, 4), torch.float64, device)
    cs = coefs(op, torch.float64, device, [(4,), ()])
    g = randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    saved = _saved(op, x, cs).requires_grad_() if op.saves == "result" else x
    samples += [(fwd, (x, *cs)), (bwd, (g, saved, *cs))]
    return samples


def test_opcheck_output_mask(coef_op, device):
    """The backward operator with an output_mask: Meta kernels, layouts (the unwanted results
    expanded zeros) and its own backward checked as the rest."""
    bwd = operator(coef_op, backward=True)
    for shape, coef_shapes, requires_grad in [((3, 4), [(4,), ()], False),
                                              ((2, 3, 4), [(3, 1)], False),
                                              ((3, 4), [(4,), ()], True)]:
        x = randn(*shape, dtype=torch.float64, device=device, requires_grad=requires_grad)
        cs = coefs(coef_op, torch.float64, device, coef_shapes, requires_grad=requires_grad)
        g = randn(*shape, dtype=torch.float64, device=device, requires_grad=requires_grad, seed=3)
        for mask in ([False, True, False, True, True], [True] + [False] * len(cs)):
            torch.library.opcheck(bwd, (g, x, *cs, mask))


def test_opcheck(op, device):
    for target, args in op_samples(op, device):
        torch.library.opcheck(target, args)


def test_meta(op, fn):
    x = randn(3, 5, device="meta")
    cs = coefs(op, torch.float32, "meta", [(3,)], requires_grad=False)
    y = fn(x.t(), *cs)
    assert y.device.type == "meta" and y.shape == (5, 3) and y.stride() == (1, 5)
    outs = operator(op, backward=True)(torch.empty_like(x.t()), x.t(), *cs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert [o.shape for o in outs] == [(5, 3)] + [c.shape for c in cs]


# ---- torch.compile -------------------------------------------------------------------------------


@pytest.mark.parametrize("coef_shape", [(), (257,)], ids=["one-element", "per channel"])
def test_compile_fullgraph(op, fn, device, coef_shape):
    """The op traced whole by torch.compile (Inductor); AOTAutograd compiles its backward."""
    if coef_shape and not op.coefs:
        pytest.skip(f"{op.name} has no coefficients")
    x = make_x((3, 257), torch.float32, device)
    cs = coefs(op, torch.float32, device, coef_shape)
    g = randn(3, 257, device=device, seed=5)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    y_c, y_e = compiled(x, *cs), fn(x, *cs)
    torch.testing.assert_close(y_c, y_e)
    grads_c = torch.autograd.grad(y_c, [x, *cs], g)
    grads_e = torch.autograd.grad(y_e, [x, *cs], g)
    for a, b in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(a, b)


# ---- only the gradients wanted ---------------------------------------------------------------


MASK_CASES = [((6, 1031), [()]), ((4, 9, 77), [(77,), ()]), ((3, 13, 9, 5), [(13, 1, 1)]),
              ((4, 9, 8, 6), [(8, 1)]), ((2, 70000), [(2, 1), ()])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("mask", ["no dx", "dx only", "dx and one", "one"])
def test_output_mask_computes_the_wanted_results_as_without_it(coef_op, device, dtype, mask):
    """With output_mask the wanted results are bit for bit those of the full backward (one
    element, per channel last and first, grouped, runs), the others zeros expanded from one
    element: no memory written for them."""
    n = len(coef_op.coefs)
    wanted = {"no dx": [False] + [True] * n, "dx only": [True] + [False] * n,
              "dx and one": [True, False, True] + [False] * (n - 2),
              "one": [False] * n + [True]}[mask]
    bwd = operator(coef_op, backward=True)
    for shape, coef_shapes in MASK_CASES:
        x = randn(*shape, dtype=dtype, device=device)
        g = randn(*shape, dtype=dtype, device=device, seed=1)
        cs = coefs(coef_op, dtype, device, coef_shapes, requires_grad=False)
        full = bwd(g, x, *cs)
        got = bwd(g, x, *cs, output_mask=wanted)
        for i, (a, b, w) in enumerate(zip(got, full, wanted, strict=True)):
            assert a.shape == b.shape and a.dtype == b.dtype, (shape, i)
            if w:
                assert torch.equal(bits(a), bits(b)), (shape, i)
            else:
                assert set(a.stride()) <= {0} and not a.any(), (shape, i)


def test_output_mask_of_the_wrong_length_names_the_op(coef_op):
    x = randn(3, 4)
    with pytest.raises(RuntimeError, match=f"torchext.{coef_op.name}_backward: 'output_mask' "
                                           f"must have {len(coef_op.coefs) + 1} entries"):
        operator(coef_op, backward=True)(x, x, *coefs(coef_op, requires_grad=False),
                                         output_mask=[True, False])


class _BackwardMasks(TorchDispatchMode):
    """The output_mask of every backward operator called under it."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.name().endswith("_backward"):
            n = len(func._schema.arguments)
            self.masks.append(kwargs.get("output_mask", args[n - 1] if len(args) == n else None))
        return func(*args, **kwargs)


@pytest.mark.parametrize("entry", ["function", "Function", "module"])
@pytest.mark.parametrize("needs", ["x", "coefficients", "x and a", "all"])
def test_autograd_asks_only_for_the_gradients_it_needs(coef_op, entry, needs):
    """The backward operator is asked (output_mask) for the gradients of the inputs that require
    them, and those are the eager expression's: no dx for an x that needs none (the tutorial's),
    no sums for coefficients that need none (numbers, frozen parameters)."""
    n = len(coef_op.coefs)
    x_grad = needs != "coefficients"
    coef_grads = {"x": [False] * n, "coefficients": [True] * n,
                  "x and a": [True] + [False] * (n - 1), "all": [True] * n}[needs]
    x = randn(4, 6, dtype=torch.float64, requires_grad=x_grad)
    cs = [c.requires_grad_(r) for c, r in
          zip(coefs(coef_op, torch.float64, shape=[(6,), ()]), coef_grads, strict=True)]
    if entry == "function":
        f = function(coef_op)
    elif entry == "Function":
        f = function_class(coef_op).apply
    else:
        module = getattr(torchext.nn, coef_op.cls)(6, dim=-1, dtype=torch.float64)
        for p, c, r in zip(module.parameters(), cs, coef_grads, strict=True):
            p.data.copy_(c.detach().expand(6))
            p.requires_grad_(r)
        cs = list(module.parameters())
        f = lambda x, *_: module(x)  # noqa: E731
    inputs = [t for t in (x, *cs) if t.requires_grad]
    g = randn(4, 6, dtype=torch.float64, seed=2)
    with _BackwardMasks() as seen:
        got = torch.autograd.grad(f(x, *cs), inputs, g)
    assert seen.masks == [[x_grad, *coef_grads]]
    want = torch.autograd.grad(reference.EAGER[coef_op.name](x, *cs), inputs, g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("needs", ["x", "coefficients"])
def test_double_backward_through_a_masked_backward(coef_op, coef_fn, needs):
    """Second order through a backward that left results out (dx, or the coefficients'
    gradients): gradgradcheck in the inputs that need a gradient, the others held."""
    x = randn(3, 5, dtype=torch.float64)
    cs = coefs(coef_op, torch.float64, shape=[(5,), ()], requires_grad=False)
    if needs == "x":
        assert gradgradcheck(lambda x: coef_fn(x, *cs), (x.requires_grad_(),))
    else:
        assert gradgradcheck(lambda *c: coef_fn(x, *c), tuple(c.requires_grad_() for c in cs))


def test_backward_with_output_mask_is_differentiable(coef_op):
    """gradcheck of the backward operator called with a mask: its results left out are zeros
    whatever the inputs, so their gradients add nothing."""
    bwd = operator(coef_op, backward=True)
    g = randn(3, 5, dtype=torch.float64, requires_grad=True, seed=4)
    x = randn(3, 5, dtype=torch.float64, requires_grad=True)
    cs = coefs(coef_op, torch.float64, shape=[(5,), ()])
    n = len(coef_op.coefs)
    for mask in ([False] + [True] * n, [True, False] * (n // 2) + [True] * (n % 2 + 1)):
        assert gradcheck(lambda *t, m=mask: bwd(*t, output_mask=m), (g, x, *cs))
