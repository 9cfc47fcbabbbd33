"""The CUDA kernels' own code, run without a GPU: csrc/cuda/loops.cuh (its host driver, tilings,
kernels and sums) built as host code (tests/emulated_cuda: a block's CUDA threads are fibers
that switch at __syncthreads and at the warp shuffles, a launch runs its blocks one at a time,
unwritten dynamic shared memory reads as NaN). Each case goes through a path of the CUDA build
(16-byte and scalar loads, grid-stride loops that go round, run tiles and column tiles, lanes of
rows, every coefficient layout, in place, strided and expanded inputs, the output mask) and is
checked against the float64 reference and its error bounds (benchmarks/gpu_cases.py, which
gpu_validate.sh's cases use on a GPU), for determinism, and for the accuracy of the sums.

What a GPU alone shows (timing, its memory model, FMA contraction, the sanitizers) waits for
benchmarks/gpu_validate.sh. Slow: the module builds on first use (about half a minute) into
build/emulated_cuda."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import torchext

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_cases  # noqa: E402
from conftest import coefs, sum_errors  # noqa: E402
from test_ops import COEF_CASES, make_x  # noqa: E402

_spec = importlib.util.spec_from_file_location("emulated_cuda_build",
                                               ROOT / "tests" / "emulated_cuda" / "build.py")
emulated_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(emulated_build)

pytestmark = pytest.mark.slow

OPS = gpu_cases.ops()
COEF_OPS = gpu_cases.coef_ops()
SAVES_RESULT = {name for name, op in torchext.functional.OPS.items() if op.saves == "result"}

# name -> (x shape, coefficient shape, offset of x and g into their buffers), each a path of
# loops.cuh (its kTileSizes: runs from 1024 elements, column tiles of at most 1024 columns and 256
# rows; its threads: 256 a block, 4 columns each).
LAYOUTS = {
    # The flat kernels: a grid of two blocks (the emulated GPU's wave), so each thread's
    # grid-stride loop goes round; 16-byte loads and a tail, or (one element in) scalar loads.
    "one-element": ((4 * 1024 + 7,), (), 0),
    "one-element, misaligned": ((3 * 1024 + 5,), (), 1),
    # Column tiles: 300 columns (threads 0-43 take a second column), two slots of runs of 600
    # (a column tile each: 1024 columns at most; threads 0-87 take a third column), 40 columns
    # (six lanes of rows per column: ncols < 256), 16 channels first on 7x7 maps (P = 49).
    "(300,) on [B, L, C]": ((2, 9, 300), (300,), 0),
    "(2, 1) on runs of 600": ((3, 2, 600), (2, 1), 0),
    "(40,) on [B, L, C], lanes": ((4, 70, 40), (40,), 0),
    # 38 row tiles: more partials a slot than kFewPartials, so a block adds each slot's (with
    # fewer, as in the other layouts, a thread does).
    "(40,) on [B, L, C], 38 row tiles": ((4, 2400, 40), (40,), 0),
    "(16, 1, 1) on 7x7 maps": ((3, 16, 7, 7), (16, 1, 1), 0),
    "(4, 1) per group": ((2, 9, 4, 24), (4, 1), 0),
    "(3, 20) per element": ((5, 3, 20), (3, 20), 0),
    # Run tiles: runs of 1600 (16-byte loads), of 1089 (not a multiple of a vector: scalar), of
    # 5000 (two segments of up to 4096), and misaligned.
    "(3, 1, 1) on 40x40 maps, runs": ((2, 3, 40, 40), (3, 1, 1), 0),
    "(3, 1, 1) on 33x33 maps, runs": ((2, 3, 33, 33), (3, 1, 1), 0),
    "(2, 1) on runs of 5000": ((2, 2, 5000), (2, 1), 0),
    "(3, 1, 1) runs, misaligned": ((2, 3, 40, 40), (3, 1, 1), 1),
}
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def kernels():
    return emulated_build.load(ROOT / "build" / "emulated_cuda")


def run(kernels, op, x, cs, g):
    """[y, dx, each coefficient's gradient] from the emulated CUDA kernels."""
    y = kernels.forward(op, x, cs, False)
    v = y if op in SAVES_RESULT else x
    return [y, *kernels.backward(op, g, v, cs, [True] * (len(cs) + 1))]


def check(got, op, x, cs, g):
    """got ([y, dx, gradients]) against the float64 reference: y and dx within gpu_cases'
    tolerances, each gradient within its summation bound and one rounding to its dtype."""
    y, dx, grads = gpu_cases.reference(op, x, cs, g)
    compare(got, op, x, cs, [y, dx, *[want for want, _ in grads]], [bound for _, bound in grads])


def check_against_cpu(got, op, x, cs, g):
    """got against torchext's CPU kernels, each gradient within twice its summation bound (both
    sum the same float32 terms, in their own orders). Not against the float64 reference as check
    does: a coefficient per element has one term per gradient value, whose own rounding the bound
    does not cover where the term cancels (affine P3's u = c + d·x near P3's roots)."""
    xx = x.clone().requires_grad_()
    cc = [c.clone().requires_grad_() for c in cs]
    y = getattr(torchext, op)(xx, *cc)
    want = [y.detach(), *torch.autograd.grad(y, [xx, *cc], g)]
    compare(got, op, x, cs, want, [2 * bound for _, bound in gpu_cases.reference(op, x, cs, g)[2]])


def compare(got, op, x, cs, want, bounds):
    """got against want ([y, dx, gradients]): y and dx within gpu_cases' tolerances, gradient i
    in its coefficient's dtype and shape, within bounds[i] and one rounding to its dtype."""
    atol, rtol = gpu_cases.TOLERANCES[x.dtype]
    for name, a, b in [("y", got[0], want[0]), ("dx", got[1], want[1])]:
        assert a.dtype == x.dtype and a.shape == x.shape, name
        problem = gpu_cases.mismatch(a, b, atol, rtol)
        assert problem is None, f"{op} {name}: {problem}"
    assert len(got) == len(want)
    for i, (a, c, b, bound) in enumerate(zip(got[2:], cs, want[2:], bounds, strict=True)):
        assert a.dtype == c.dtype and a.shape == c.shape, f"grad {i}"
        problem = gpu_cases.mismatch(a, b, 0.0, torch.finfo(a.dtype).eps, bound)
        assert problem is None, f"{op} grad {i}: {problem}"


def inputs(op, layout, dtype, seed=0):
    shape, coef_shape, offset = LAYOUTS[layout]
    _, x = gpu_cases.randn(shape, dtype, "cpu", seed, offset)
    _, g = gpu_cases.randn(shape, dtype, "cpu", seed + 1, offset)
    cs = [c for _, c in [gpu_cases.randn(coef_shape, dtype, "cpu", seed + 2 + k)
                         for k in range(OPS[op])]]
    return x, cs, g


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("op", COEF_OPS)
def test_coefficient_layouts(kernels, op, layout):
    x, cs, g = inputs(op, layout, torch.float32)
    got = run(kernels, op, x, cs, g)
    check(got, op, x, cs, g)
    again = run(kernels, op, x, cs, g)
    for a, b in zip(got, again, strict=True):
        assert torch.equal(a, b), "not the same bits on a second run"


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("op", COEF_OPS)
def test_dtypes(kernels, op, dtype, layout):
    """float64 and the 16-bit types (computed in float32; 16-byte loads of 2 and 8 elements)."""
    x, cs, g = inputs(op, layout, dtype)
    check(run(kernels, op, x, cs, g), op, x, cs, g)


@pytest.mark.parametrize("x_dtype, coef_dtype", [(torch.bfloat16, torch.float32),
                                                 (torch.float32, torch.float64),
                                                 (torch.float64, torch.float16)], ids=str)
@pytest.mark.parametrize("layout", ["one-element", "(300,) on [B, L, C]", "(4, 1) per group"])
@pytest.mark.parametrize("op", COEF_OPS)
def test_coefficients_in_another_dtype(kernels, op, layout, x_dtype, coef_dtype):
    """Coefficients read in their dtype, their gradients written in it."""
    x, cs, g = inputs(op, layout, x_dtype)
    cs = [c.to(coef_dtype) for c in cs]
    check(run(kernels, op, x, cs, g), op, x, cs, g)


@pytest.mark.parametrize("case", list(COEF_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", COEF_OPS)
def test_coefficient_cases(kernels, op, dtype, case):
    """tests/test_ops.py's coefficient shapes and x layouts, which its test_coefficient_shapes
    runs on the CPU (and a GPU): coefficients of different shapes in one call (a one-element one
    beside per-slot ones: read by pointer, and summed over the slots by finish_coefs_kernel),
    more slots than a block, x strided, transposed or expanded; float32 and bfloat16."""
    shape, coef_shapes, layout = COEF_CASES[case]
    x = make_x(shape, dtype, layout=layout, seed=0).detach()
    cs = [c.detach() for c in coefs(torchext.functional.OPS[op], dtype, shape=coef_shapes, seed=2)]
    _, g = gpu_cases.randn(x.shape, dtype, "cpu", 1, 0)
    check_against_cpu(run(kernels, op, x, cs, g), op, x, cs, g)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", [op for op in OPS if op not in COEF_OPS])
def test_ops_without_coefficients(kernels, op, dtype):
    x, cs, g = inputs(op, "one-element", dtype)
    check(run(kernels, op, x, cs, g), op, x, cs, g)


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_every_tail(kernels, op, dtype, offset):
    """The flat kernels' tails: every n below two 16-byte loads a thread (16 elements of 16 bits),
    after none and after whole vectors, aligned and not; 0-dim and empty x."""
    for shape in [*[(n,) for n in [*range(1, 18), *range(1024, 1024 + 17)]], (), (0, 3)]:
        _, x = gpu_cases.randn(shape, dtype, "cpu", 0, offset)
        _, g = gpu_cases.randn(shape, dtype, "cpu", 1, offset)
        cs = [gpu_cases.randn((), dtype, "cpu", 2 + k)[1] for k in range(OPS[op])]
        check(run(kernels, op, x, cs, g), op, x, cs, g)


@pytest.mark.parametrize("layout", ["one-element", "(300,) on [B, L, C]",
                                    "(3, 1, 1) on 40x40 maps, runs"])
@pytest.mark.parametrize("op", COEF_OPS)
def test_in_place_strided_and_expanded(kernels, op, layout):
    """In place (x is the result's memory), x transposed (copied to the result's layout first),
    the gradient expanded from one element (read with stride 0): each as the plain call."""
    x, cs, g = inputs(op, layout, torch.float32)
    y = kernels.forward(op, x, cs, False)
    inplace = x.clone()
    assert kernels.forward(op, inplace, cs, True).data_ptr() == inplace.data_ptr()
    assert torch.equal(inplace, y)
    if x.dim() > 1 and cs[0].dim() <= 1:
        xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
        assert torch.equal(kernels.forward(op, xt, cs, False), y)
    g1 = torch.tensor(0.75).expand(x.shape)
    got = [y, *kernels.backward(op, g1, x, cs, [True] * (len(cs) + 1))]
    check(got, op, x, cs, g1)


@pytest.mark.parametrize("layout", ["one-element", "(300,) on [B, L, C]",
                                    "(3, 1, 1) on 40x40 maps, runs"])
@pytest.mark.parametrize("op", COEF_OPS)
def test_output_mask(kernels, op, layout):
    """Each output_mask: the results not wanted are zeros (the kernels skip them: no dx written,
    no sums taken), the wanted ones the same bits as when all are."""
    x, cs, g = inputs(op, layout, torch.float32)
    full = kernels.backward(op, g, x, cs, [True] * (len(cs) + 1))
    masks = [[False] * (len(cs) + 1), [True] + [False] * len(cs), [False] + [True] * len(cs),
             [False] + [i % 2 == 0 for i in range(len(cs))]]
    for wanted in masks:
        part = kernels.backward(op, g, x, cs, wanted)
        for w, a, b in zip(wanted, part, full, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert torch.equal(a, b) if w else not a.any(), wanted


@pytest.mark.parametrize("shape, coef_shape", [((1 << 16,), ()), ((4096, 64), (64,)),
                                               ((16384, 64), (64,)), ((64, 2, 2048), (2, 1)),
                                               ((512, 8, 37), (8, 1))],
                         ids=["one-element", "column tiles, lanes", "64 row tiles", "runs",
                              "short runs"])
@pytest.mark.parametrize("op", COEF_OPS)
def test_sums_as_accurate_as_torch_sum(kernels, op, shape, coef_shape):
    """As tests/test_ops.py's test_coefficient_gradients_as_accurate_as_torch_sum, for the CUDA
    kernels' order of sums: against math.fsum of the very terms (the float32 terms of a
    per-element coefficient), the mean error relative to the terms' magnitudes is no larger than
    torch.sum's (the CPU's: the emulation has no CUDA torch.sum) of the same terms
    (conftest.sum_errors)."""
    x = gpu_cases.randn(shape, torch.float32, "cpu", 11)[1]
    g = gpu_cases.randn(shape, torch.float32, "cpu", 12)[1]
    cs = [gpu_cases.randn(coef_shape, torch.float32, "cpu", 13 + k)[1] for k in range(OPS[op])]
    ours = kernels.backward(op, g, x, cs, [True] * (len(cs) + 1))[1:]
    # The terms from the CPU kernels (the same float32 products: neither contracts to FMAs here);
    # per element on the emulated GPU, a block per slot would take minutes.
    per_element = [c.expand(shape).contiguous() for c in cs]
    terms = gpu_cases.backward_operator(op)(g, x, *per_element)[1:]
    ours_mean, torch_mean = sum_errors(ours, terms)
    assert ours_mean <= torch_mean, (ours_mean, torch_mean)
