"""The CUDA paths the shared checks (test_ops.py) do not reach, each result compared with the CPU
kernels on the same inputs: misaligned inputs (the scalar path: every other CUDA test input is
16-byte aligned), sizes beyond one full wave of blocks (more than one grid-stride iteration),
0-dim, every tail shorter than a vector, a side stream, no host synchronization, a second GPU,
and per-channel and per-group coefficients.

The ops come from benchmarks/gpu_cases.py, which reads the op table. Skipped, with the reason,
where CUDA is not usable. ``TORCHEXT_TEST_CUDA_DEVICE=cpu`` runs the tests that need no CUDA API
on the CPU instead, against itself: a check of the tests, not of the kernels, for machines
without a GPU.
"""

import math
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import CUDA_SKIP

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_cases  # noqa: E402

DEVICE = os.environ.get("TORCHEXT_TEST_CUDA_DEVICE", "cuda")
OPS = list(gpu_cases.ops())
COEF_OPS = gpu_cases.coef_ops()
# More than one grid-stride iteration: a full wave on 132 SMs is ~1.1 M float32 or ~2.2 M 16-bit
# elements.
WAVES = [3 * 2**20 + 5, 5 * 2**20 + 3]
# Every tail shorter than a thread's loads (up to 2 x 16 bytes: 16 elements of 16 bits), alone
# and after full vectors.
TAILS = [*range(1, 34), *range(4096, 4096 + 33)]
NUMBERS = (0.5, -1.25, 0.75, 0.3)
# dtype -> (atol, rtol) between the device's and the CPU's y and dx. Both compute in the op-math
# type: float32 and float64 results may differ by rounding (e.g. fused multiply-adds) of terms
# up to ~100 (|x| up to ~4); a 16-bit result by one rounding of nearly equal float32 values, at
# most one unit in its last place: 2^-7 of it for bfloat16, 2^-10 for float16.
VS_CPU = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (1e-4, 2**-6),
    torch.float16: (1e-4, 2**-9),
}

pytestmark = pytest.mark.skipif(DEVICE == "cuda" and CUDA_SKIP is not None, reason=str(CUDA_SKIP))
needs_cuda_api = pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA streams and devices")


def inputs(op, shape, dtype, *, offset=0, coef_shape=(), seed=0, device=DEVICE):
    """((x, coefficients, g) on the host, the same on ``device``); with ``offset``, x and g start
    that many elements into their buffers (misaligned)."""
    x_h, x = gpu_cases.randn(shape, dtype, device, seed, offset)
    g_h, g = gpu_cases.randn(shape, dtype, device, seed + 1, offset)
    cs_h, cs = gpu_cases.coefs(op, coef_shape, torch.float32, device, seed + 2)
    return (x_h, cs_h, g_h), (x, cs, g)


def run(op, x, cs, g):
    """[y, dx, and the gradient of each tensor coefficient] of ``op`` at x."""
    x = x.detach().requires_grad_()
    cs = [c.detach().requires_grad_() if isinstance(c, torch.Tensor) else c for c in cs]
    y = gpu_cases.function(op)(x, *cs)
    grads = torch.autograd.grad(y, [x, *[c for c in cs if isinstance(c, torch.Tensor)]], g)
    return [y.detach(), *grads]


def assert_same_as_cpu(op, host, got, dtype):
    """``got`` (from the device) against the CPU kernels on the host inputs: y and dx within
    VS_CPU, each coefficient gradient within twice its rounding bound (gpu_cases.reference)."""
    want = run(op, *host)
    assert len(got) == len(want)
    atol, rtol = VS_CPU[dtype]
    for name, a, b in zip(["y", "dx"], got, want, strict=False):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a.cpu(), b, atol=atol, rtol=rtol,
                                   msg=lambda m, n=name: f"{n}: {m}")
    _, _, bounds = gpu_cases.reference(op, *host)
    for name, a, b, (_, bound) in zip("abcd", got[2:], want[2:], bounds, strict=False):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        err = (a.double().cpu() - b.double()).abs()
        tol = 2 * bound + 2 * torch.finfo(b.dtype).eps * b.double().abs()
        assert (err <= tol).all(), f"grad of {name}: {a.tolist()} vs CPU {b.tolist()}"


def check(op, shape, dtype, **kwargs):
    host, dev = inputs(op, shape, dtype, **kwargs)
    got = run(op, *dev)
    assert all(t.device == dev[0].device for t in got)
    assert_same_as_cpu(op, host, got, dtype)


# ---- the paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n, offset", [(4099, 1), (4099, 3), (WAVES[0], 1)])
@pytest.mark.parametrize("op", OPS)
def test_misaligned(op, dtype, n, offset):
    """x and g one (or three) elements into their buffers: not 16-byte aligned."""
    check(op, (n,), dtype, offset=offset)


@pytest.mark.parametrize("n", WAVES)
@pytest.mark.parametrize("op", OPS)
def test_beyond_one_wave(op, dtype, n):
    check(op, (n,), dtype)


@pytest.mark.parametrize("op", OPS)
def test_zero_dim(op, dtype):
    check(op, (), dtype)


@pytest.mark.parametrize("op", OPS)
def test_every_tail(op, dtype):
    for n in TAILS:
        check(op, (n,), dtype, seed=n)


# ---- streams, synchronization, devices ----------------------------------------------------------


@needs_cuda_api
@pytest.mark.parametrize("op", OPS)
def test_side_stream(op):
    """Forward and backward under ``torch.cuda.stream(side)`` run on ``side``: with the default
    stream held busy, synchronizing ``side`` alone is enough for correct results. (A kernel
    queued on the default stream would not have run yet.)"""
    host, dev = inputs(op, (WAVES[0],), torch.float32, seed=17)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # the inputs are ready for it
    torch.cuda._sleep(500_000_000)  # ~0.25 s of the default stream at 2 GHz
    with torch.cuda.stream(side):
        got = [t.cpu() for t in run(op, *dev)]  # copies on side, then side.synchronize()
    default_busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert default_busy, "the default stream was idle before the check: make it sleep longer"
    assert_same_as_cpu(op, host, got, torch.float32)


@needs_cuda_api
@pytest.mark.parametrize("coefs", ["tensors", "numbers"])
@pytest.mark.parametrize("op", OPS)
def test_no_host_sync(op, coefs):
    """Forward and backward under ``torch.cuda.set_sync_debug_mode("error")``: any host-device
    synchronization (``.item()``, a blocking copy) raises."""
    (x_h, cs_h, g_h), (x, cs, g) = inputs(op, (4099,), torch.float32, seed=23)
    if coefs == "numbers":
        cs_h = cs = list(NUMBERS[: len(cs)])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = run(op, x, cs, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_same_as_cpu(op, (x_h, cs_h, g_h), got, torch.float32)


@needs_cuda_api
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU (cuda:1)")
@pytest.mark.parametrize("op", OPS)
def test_second_gpu(op):
    """Inputs on cuda:1 while cuda:0 is current: the kernels run there (device guard) and every
    result lives there."""
    torch.cuda.set_device(0)
    check(op, (WAVES[0],), torch.float32, device="cuda:1")
    assert torch.cuda.current_device() == 0


# ---- per-channel coefficients ---------------------------------------------------------------


@pytest.mark.parametrize("variant", ["small", "misaligned bfloat16", "beyond one wave"])
@pytest.mark.parametrize("layout", list(gpu_cases.PER_CHANNEL))
@pytest.mark.parametrize("op", COEF_OPS)
def test_per_channel_coefficients(op, layout, variant):
    x_shape, coef_shape = gpu_cases.PER_CHANNEL[layout]
    dtype, offset = (torch.bfloat16, 1) if variant == "misaligned bfloat16" else (torch.float32, 0)
    if variant == "beyond one wave":
        x_shape = (-(-WAVES[0] // math.prod(x_shape[1:])), *x_shape[1:])
    check(op, x_shape, dtype, offset=offset, coef_shape=coef_shape)
