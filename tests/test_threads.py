"""Concurrency and determinism on the CPU.

- Thread safety: many Python threads calling the ops at once, each on its own inputs, get bitwise
  the results that the same calls give one at a time.
- Determinism: values and gradients (coefficient gradients are reductions) are bitwise the same on
  every run, and with any intra-op thread count: the CPU backward sums fixed chunks of 2^14
  elements whatever the number of threads and adds the chunks in index order.

Sizes are above 2^16 so that the kernels take their parallel path (at::parallel_for with grain
2^15, several reduction chunks).
"""

import threading
from contextlib import contextmanager

import pytest
import torch
from conftest import DTYPES, assert_close, bits

import torchext
from torchext.functional import OPS as TABLE
from torchext.reference import EAGER

N = 2**17 + 2**14 + 3  # several reduction tiles, a partial last one, a vector tail
OPS = list(TABLE)
COEF_OPS = [name for name, op in TABLE.items() if op.coefs]
# How x is shaped and the coefficients vary: one element; per channel along rows of 1000
# (column tiles); per row-block of 2^14 (run tiles).
# "narrow channels": rows of 7, which the CPU folds 19 to a row of 133 columns (make_tiling's
# fold_cols), in 13 row tiles, the last folded row cut short. "short runs": channels first on
# maps of 74 elements (make_tiling's short_run, 16-bit types included), in 9 row tiles.
# "runs of 49": short runs in float32 and float64, two column tiles in 16-bit types, whose rows
# prefetch where a thread's share of the call is over 1 MB (prefetch_rows, csrc/cpu/loops.h): a
# forward of 1.6 MB with 1 thread but not 2 or 4, a backward of 2.4 MB with 1 or 2 but not 4.
LAYOUTS = {"one-element": ((N,), ()), "per channel": ((151, 1000), (1000,)),
           "per block": ((9, 1 << 14), (9, 1)), "narrow channels": ((30011, 7), (7,)),
           "short runs": ((45, 40, 74), (40, 1)), "runs of 49": ((64, 128, 49), (128, 1))}


def _inputs(op, dtype, seed, n=N, layout="one-element"):
    gen = torch.Generator().manual_seed(seed)
    shape, coef_shape = LAYOUTS[layout] if layout != "one-element" else ((n,), ())
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    # Coefficients of mixed dtypes and shapes, as users may pass them.
    dtypes = (torch.float32, dtype, torch.float64, dtype)
    cs = [torch.randn(coef_shape, generator=gen, dtype=torch.float64).to(dtypes[i % 4])
          for i in range(len(TABLE[op].coefs))]
    if len(cs) > 1 and layout == "one-element":
        cs[1] = cs[1].reshape(1)
    return x, [c.requires_grad_() for c in cs], g


def _run(op, x, cs, g):
    """Forward and backward; returns the output and every gradient, detached."""
    y = getattr(torchext, op)(x, *cs)
    grads = torch.autograd.grad(y, [x, *cs], g)
    return [y.detach(), *grads]


def _assert_bitwise(results, expected, what):
    assert len(results) == len(expected)
    for i, (r, e) in enumerate(zip(results, expected, strict=True)):
        assert r.dtype == e.dtype and r.shape == e.shape, f"{what}: output {i}"
        assert torch.equal(bits(r), bits(e)), f"{what}: output {i} differs bitwise"


@contextmanager
def num_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_parallel_path_is_parallel():
    """The premise of the thread-count tests: with 2 threads the extension's parallel_for really
    runs on 2 threads (it silently runs serially when built without OpenMP)."""
    with num_threads(2):
        assert torch.ops.torchext._parallel_threads() == 2
    with num_threads(1):
        assert torch.ops.torchext._parallel_threads() == 1


# ---- thread safety -------------------------------------------------------------------------------


def test_many_python_threads_at_once():
    """8 Python threads x 3 rounds, each thread its own op, dtype and inputs (some large, some
    small), all started together: every result is bitwise the sequential one."""
    jobs = []
    for i in range(8):
        op = OPS[i % 4]
        dtype = DTYPES[(i // 4 + i) % 4]
        n = N if i % 2 == 0 else 1000 + i
        jobs.append((op, dtype, _inputs(op, dtype, seed=100 + i, n=n)))
    expected = [_run(op, *inp) for op, _, inp in jobs]

    barrier = threading.Barrier(len(jobs))
    results = [None] * len(jobs)
    errors = []

    def work(i):
        op, _, inp = jobs[i]
        try:
            barrier.wait(timeout=60)
            for _ in range(3):
                results[i] = _run(op, *inp)
                _assert_bitwise(results[i], expected[i], f"thread {i}")
        except Exception as e:  # noqa: BLE001  (reported below, with the thread)
            errors.append((i, e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors

    # And the sequential results are right (against eager in float64).
    for (op, dtype, (x, cs, _)), res in zip(jobs, expected, strict=True):
        ref = EAGER[op](x.detach().double(), *[c.detach().double() for c in cs])
        assert_close(res[0], ref, dtype)


def test_threads_sharing_inputs():
    """Threads reading the same x and coefficients at once (autograd saves them in each graph)."""
    x, cs, g = _inputs("affine_legendre_p3", torch.float32, seed=7)
    expected = _run("affine_legendre_p3", x, cs, g)
    errors = []

    def work():
        try:
            for _ in range(5):
                _assert_bitwise(_run("affine_legendre_p3", x, cs, g), expected, "shared inputs")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors


# ---- determinism ---------------------------------------------------------------------------------


def _cases():
    """(op, layout): every op with one-element coefficients, the ops with coefficients per
    channel and per block too."""
    return [(op, "one-element") for op in OPS] + [
        (op, layout) for op in COEF_OPS for layout in LAYOUTS if layout != "one-element"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("op, layout", _cases())
def test_bitwise_identical_across_runs(op, layout, dtype):
    x, cs, g = _inputs(op, dtype, seed=1, layout=layout)
    first = _run(op, x, cs, g)
    for run in range(4):
        _assert_bitwise(_run(op, x, cs, g), first, f"run {run + 2}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("op, layout", _cases())
def test_bitwise_identical_across_thread_counts(op, layout, dtype):
    """1, 2 and 4 intra-op threads (4 > the cores here: more tasks than cores) give bitwise the
    same values and gradients; the thread count is restored afterwards."""
    before = torch.get_num_threads()
    x, cs, g = _inputs(op, dtype, seed=2, layout=layout)
    with num_threads(1):
        expected = _run(op, x, cs, g)
    for n in (2, 4):
        with num_threads(n):
            _assert_bitwise(_run(op, x, cs, g), expected, f"{n} threads vs 1")
    assert torch.get_num_threads() == before


def test_module_training_is_deterministic_across_thread_counts():
    """End to end: 20 SGD steps of the tutorial's affine-P3 model on 2^17 points end at bitwise the
    same parameters with 1 and 2 threads."""

    def train():
        torch.manual_seed(0)
        model = torchext.nn.AffineLegendreP3()
        x = torch.linspace(-3.14159, 3.14159, 2**17)
        y = torch.sin(x)
        for _ in range(20):
            loss = (model(x) - y).pow(2).mean()
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.05 * p.grad
        return [p.detach().clone() for p in model.parameters()]

    with num_threads(1):
        one = train()
    with num_threads(2):
        two = train()
    _assert_bitwise(two, one, "trained parameters, 2 threads vs 1")
