"""Shared test axes: devices, dtypes with their tolerances, and input makers.

CUDA cases run wherever a GPU is visible and torchext was built with CUDA kernels, and are skipped
with the reason where not.
"""

import math
import platform

import pytest
import torch

import torchext
from torchext.functional import OPS as _TABLE

# The op table: every parametrization over ops reads it (a new op gets every shared check).
OPS = list(_TABLE.values())
COEF_OPS = [op for op in OPS if op.coefs]


def _cuda_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("torchext::cubic", "CUDA"):
        return "torchext was built without CUDA kernels"
    return None


CUDA_SKIP = _cuda_skip_reason()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))),
]

# dtype -> (atol, rtol) for values and gradients against a float64 reference, on inputs of
# magnitude ~1 and coefficients ~1.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (1e-1, 2e-2),
    torch.float16: (1e-2, 2e-3),
}
DTYPES = list(TOLERANCES)

# Odd sizes (vector tails, parallel chunk edges) and the CPU reduction chunk boundary.
SIZES = [1, 7, 33, 1000, 2000, 16385, 100_003]


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global random state, whatever ran before it (randn below
    without a seed, modules' initial values): a failure reproduces when the test runs alone."""
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=OPS, ids=lambda op: op.name)
def op(request):
    return request.param


@pytest.fixture(params=COEF_OPS, ids=lambda op: op.name)
def coef_op(request):
    return request.param


def function(op):
    """torchext.<name>: the operator, differentiated in C++."""
    return getattr(torchext, op.name)


def function_class(op):
    """torchext.<cls>Function: the Python autograd.Function over the same operators."""
    return getattr(torchext, f"{op.cls}Function")


def operator(op, backward=False):
    return getattr(torch.ops.torchext, op.name + ("_backward" if backward else "")).default


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request):
    return request.param


class EveryOp(torch.nn.Module):
    """Every op of the table, each as its module (one-element parameters where it has
    coefficients) on the same x, summed: a model whose programs (exported, compiled, saved) must
    hold every operator."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            getattr(torchext.nn, op.cls)(**({"num_parameters": 1} if op.coefs else {}))
            for op in OPS)

    def forward(self, x):
        return sum(layer(x) for layer in self.layers)


def randn(*shape, dtype=torch.float32, device="cpu", requires_grad=False, seed=None):
    """Random normal values (never zeros: they hide unwritten outputs)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else torch.default_generator
    t = torch.randn(shape, dtype=torch.float64, generator=gen).to(dtype=dtype, device=device)
    return t.requires_grad_(requires_grad)


def coefs(op, dtype=torch.float32, device="cpu", shape=(), requires_grad=True, seed=0):
    """Random coefficients for op: one per name in op.coefs. shape: one shape for all, or a list
    of shapes taken in turn."""
    gen = torch.Generator().manual_seed(seed)
    shapes = shape if isinstance(shape, list) else [shape]
    return [
        torch.randn(shapes[i % len(shapes)], dtype=torch.float64, generator=gen)
        .to(dtype=dtype, device=device)
        .requires_grad_(requires_grad)
        for i in range(len(op.coefs))
    ]


def assert_close(actual, expected, dtype, scale=1.0):
    """Compare with the dtype's tolerance; `scale` widens it for results that are sums."""
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.double().cpu(), expected.double().cpu(), atol=atol * scale, rtol=rtol * scale,
        equal_nan=True,
    )


def sum_errors(sums, terms):
    """(ours, torch's): the mean error of the gradients ``sums``, and of torch.sum of the same
    terms, against the exact sums (math.fsum) of ``terms`` (each gradient's terms: the gradient of
    a coefficient of x's own shape), relative to the terms' magnitudes (the measure summation
    error bounds use). One sum per column: per channel, dim 1 of [N, C, P]."""
    err_ours, err_torch = [], []
    for got, t in zip(sums, terms, strict=True):
        columns = t.reshape(-1, 1) if t.dim() == 1 else t.transpose(1, -1).reshape(-1, t.shape[1])
        terms64 = columns.double().cpu()
        exact = torch.tensor([math.fsum(col) for col in terms64.t().tolist()])
        magnitude = terms64.abs().sum(dim=0)
        err_ours.append((got.reshape(-1).double().cpu() - exact).abs() / magnitude)
        err_torch.append((columns.sum(dim=0).double().cpu() - exact).abs() / magnitude)
    return torch.cat(err_ours).mean().item(), torch.cat(err_torch).mean().item()


def bits(t):
    """The tensor's bits, as integers of its width (compared with torch.equal, NaNs included)."""
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().view(ints)


# torch's CPU relu keeps -0.0 on x86-64. On aarch64 (seen with torch 2.10) it turns -0.0
# into +0.0 in its vectorized body and keeps it in its scalar tail, so an element's sign depends
# on where it lies; torchext.relu keeps -0.0 on every CPU, as torch does on x86-64.
X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def torch_relu(x):
    """torch.relu(x) as torchext.relu promises it bit for bit: torch's own on x86-64 and on CUDA;
    on other CPUs with the zeros' signs of x's (see X86_64). Differentiable as torch.relu."""
    y = torch.relu(x)
    if X86_64 or x.device.type != "cpu" or not x.is_floating_point():
        return y
    return torch.where(x == 0, x.detach(), y)


def same_bits(a, b):
    """Bitwise equality of every non-NaN value (so the sign of zero too), and NaN in the same
    places. NaN payloads are not compared: torch's own bfloat16 relu and threshold_backward
    rewrite them in their vectorized paths (0x7FC0 in, 0xFFFF out), while torchext returns the NaN
    it got."""
    nan = torch.isnan(a)
    if a.shape != b.shape or not torch.equal(nan, torch.isnan(b)):
        return False
    return torch.equal(bits(a[~nan]), bits(b[~nan]))
