"""No memory leaks: thousands of forward+backward calls of every op leave resident memory (CPU) and
allocated device memory (CUDA) where they were.

On the CPU the measure is VmRSS (/proc/self/status) after a warm-up (the allocator's caches, lazy
initialisation, autograd's thread pool); the slack allows for the allocator's noise, far below what
a leak of one tensor per call would add (5000 calls x 4096 float32 = 80 MB).
"""

import gc
import os

import pytest
import torch
from conftest import CUDA_SKIP

import torchext

N = 4096
ITERATIONS = 5000
SLACK_MB = 20


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _step(x, cs):
    """Every op, forward and backward, coefficient gradients included: with tensor coefficients
    (one-element, and per channel) and with Python numbers."""
    y = 0
    for op in torchext.functional.OPS.values():
        f, n = getattr(torchext, op.name), len(op.coefs)
        y = y + f(x, *cs[:n]) + f(x, *[0.5] * n)
        if n:
            y = y + f(x.view(-1, 16), *[c.expand(16) for c in cs[:n]]).view(-1)
    y.sum().backward()


def _inputs(device):
    x = torch.randn(N, device=device, requires_grad=True)
    cs = [torch.randn((), device=device, requires_grad=True) for _ in range(4)]
    return x, cs


def _run(x, cs, iterations):
    for _ in range(iterations):
        _step(x, cs)
        x.grad = None
        for c in cs:
            c.grad = None


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_cpu_resident_memory_does_not_grow():
    x, cs = _inputs("cpu")
    _run(x, cs, 500)  # warm-up
    gc.collect()
    before = _rss_mb()
    _run(x, cs, ITERATIONS)
    gc.collect()
    growth = _rss_mb() - before
    assert growth < SLACK_MB, f"VmRSS grew by {growth:.1f} MB over {ITERATIONS} iterations"


def test_cpu_double_backward_does_not_leak():
    """create_graph=True keeps graphs alive by design; dropping them must free everything."""
    x, cs = _inputs("cpu")

    def run(iterations):
        for _ in range(iterations):
            y = torchext.cubic(x, *cs) + torchext.affine_legendre_p3(x, *cs)
            (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
            gx.sum().backward()
            x.grad = None
            for c in cs:
                c.grad = None

    run(200)
    gc.collect()
    before = _rss_mb()
    run(1500)
    gc.collect()
    growth = _rss_mb() - before
    assert growth < SLACK_MB, f"VmRSS grew by {growth:.1f} MB"


@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
def test_cuda_allocated_memory_returns_to_start():
    x, cs = _inputs("cuda")
    _run(x, cs, 50)
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    _run(x, cs, ITERATIONS)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == start
