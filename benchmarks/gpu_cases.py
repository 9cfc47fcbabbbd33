"""What the GPU validation (gpu_validate.sh and its scripts) and tests/test_cuda.py share: the ops,
read from torchext's op table in one place (``ops``), the per-channel coefficient layouts, seeded
inputs made on the host, and the float64 reference with the error bound of each coefficient
gradient.

Inputs are drawn on the host and copied to the device, so that every byte a torchext kernel
reads was written by a copy: compute-sanitizer's initcheck sees copies, whatever kernels
``--kernel-name`` leaves uninstrumented.

    python benchmarks/gpu_cases.py kernels [--key CUDA] [--sanitizer-filter torchext]
"""

import argparse
import contextlib
import io
import math
import sys

import torch

import torchext
from torchext import reference as _reference

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# dtype -> (atol, rtol) for values and x-gradients against the float64 reference from the same
# rounded inputs of magnitude ~1. Computed in the op-math type (float32 for 16-bit x), a result
# is off by that type's rounding of terms up to ~100, then by one rounding to its dtype: at most
# half a unit in its last place, 2^-8 of it for bfloat16 and 2^-11 for float16 (tolerances twice
# that, and more where x is 16-bit; tests/conftest.py's TOLERANCES are looser for bfloat16 and
# float16).
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (1e-4, 2**-7),
    torch.float16: (1e-4, 2**-10),
}

# Per-channel and per-group coefficients (DESIGN.md §1): name -> (x shape, coefficient shape).
PER_CHANNEL = {
    "channels (C,) on [B, L, C]": ((4, 8, 24), (24,)),
    "NCHW (C, 1, 1) on [N, C, H, W]": ((2, 6, 5, 7), (6, 1, 1)),
    "groups (G, 1) on [B, L, G, C/G]": ((4, 8, 3, 8), (3, 1)),
}


def size(text: str) -> int:
    """An element count written as an integer, a power or a sum of them: 4099, 2^28, 2^31+5."""
    total = 0
    for term in text.split("+"):
        base, _, exp = term.partition("^")
        total += int(base) ** int(exp) if exp else int(base)
    return total


def ops() -> dict[str, int]:
    """{op name: its number of coefficients}: the one place the GPU validation reads the op
    table."""
    return {name: len(op.coefs) for name, op in torchext.functional.OPS.items()}


def coef_ops() -> list[str]:
    return [op for op, n in ops().items() if n]


def eager(op: str):
    """The op's eager expression (torchext.reference): the numerical reference."""
    return _reference.EAGER[op]


def function(op: str):
    return getattr(torchext, op)


def backward_operator(op: str):
    return getattr(torch.ops.torchext, f"{op}_backward").default


def randn(shape, dtype, device, seed: int, offset: int = 0):
    """(host tensor, device tensor): the same seeded standard normals (never zeros: they hide
    unwritten outputs), drawn in float64 and rounded to ``dtype``. With ``offset``, each is a
    view starting ``offset`` elements into its buffer, so that its data pointer is misaligned."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(math.prod(shape) + offset, generator=gen, dtype=torch.float64).to(dtype)
    return base[offset:].view(shape), base.to(device)[offset:].view(shape)


def coefs(op: str, shape, dtype, device, seed: int):
    """(host, device) lists of the op's coefficients, seeded normals shaped ``shape`` (one shape
    for all, or a list of shapes taken in turn)."""
    shapes = shape if isinstance(shape, list) else [shape]
    pairs = [randn(shapes[k % len(shapes)], dtype, device, seed + k) for k in range(ops()[op])]
    return [h for h, _ in pairs], [d for _, d in pairs]


def reference(op: str, x, cs, g):
    """The float64 eager reference of ``op`` (on x's device) at x and coefficients ``cs``
    (tensors or numbers), differentiated against g: ``(y, dx, [(grad, bound)...])`` with one
    pair per tensor coefficient.

    Each tensor coefficient enters expanded to its broadcast with x, so that autograd returns its
    per-element terms g·∂y/∂c: their sum is the gradient, and ``bound`` = 16 ε Σ|terms| (ε of
    the op-math type, float32 or float64) bounds the error of any summation order in that type,
    including the rounding of each term, with a wide margin: a dropped block of a few dozen
    elements still exceeds it. Not the rounding of a term that cancels, though (affine P3's
    g·P3(u) with u = c + d·x rounded near a root of P3): where a slot has only a few terms (a
    coefficient per element), compare with the CPU kernels' gradients instead, which sum the same
    terms (tests/test_cuda_emulated.py's check_against_cpu)."""
    x64 = x.detach().double().requires_grad_()
    full = [c.detach().double().expand(torch.broadcast_shapes(x.shape, c.shape))
            .clone().requires_grad_() if isinstance(c, torch.Tensor) else c for c in cs]
    y = eager(op)(x64, *full).reshape(x.shape)
    leaves = [x64] + [c for c in full if isinstance(c, torch.Tensor)]
    dx, *terms = torch.autograd.grad(y, leaves, g.double())
    tensor_cs = [c for c in cs if isinstance(c, torch.Tensor)]
    eps = torch.finfo(torch.float64 if x.dtype == torch.float64 else torch.float32).eps
    grads = [(t.sum_to_size(c.shape), 16 * eps * t.abs().sum_to_size(c.shape))
             for t, c in zip(terms, tensor_cs, strict=True)]
    return y.detach(), dx, grads


def mismatch(got, want, atol: float, rtol: float, bound=0.0, where=None) -> str | None:
    """None where ``|got - want| <= atol + rtol |want| + bound`` everywhere (NaN never passes),
    else a short description of the worst element (named by its index in ``where``, if given:
    the indices that ``got`` was gathered from)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    if got.numel() == 0:
        return None
    bound = torch.as_tensor(bound, dtype=torch.float64).cpu()
    excess = (got - want).abs() - (atol + rtol * want.abs() + bound)
    excess = torch.where(torch.isnan(excess), torch.inf, excess)
    worst = int(excess.flatten().argmax())
    if excess.flatten()[worst] <= 0:
        return None
    name = worst if where is None else int(where.flatten()[worst])
    return (f"element {name}: got {got.flatten()[worst].item():.6g}, "
            f"want {want.flatten()[worst].item():.6g}")


def check_kernels(key: str) -> int:
    """Every operator, forward and backward, has a kernel for dispatch key ``key``."""
    names = [f"torchext::{op}{s}" for op in ops() for s in ("", "_backward")]
    missing = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(n, key)]
    print(f"build: {torch.ops.torchext._build_info()}; torch {torch.__version__}")
    if missing:
        print(f"kernels: MISSING for {key}: {', '.join(missing)}")
        return 1
    print(f"kernels: all {len(names)} operators have {key} kernels")
    return 0


def check_sanitizer_filter(substring: str) -> int:
    """Every kernel (entry function) in torchext's library's device code has ``substring`` in its
    mangled name, so that ``compute-sanitizer --kernel-name kns=SUBSTRING`` checks them all.
    Needs cuobjdump (skipped, saying so, without). Exit code 3 where it does not."""
    import shutil
    import subprocess

    library = torchext.library_path()

    if not shutil.which("cuobjdump"):
        print("sanitizer filter: not checked (no cuobjdump on PATH)")
        return 0
    listing = subprocess.run(["cuobjdump", "-symbols", library], capture_output=True,
                             text=True).stdout
    kernels = [ln.split()[-1] for ln in listing.splitlines() if "STO_ENTRY" in ln]
    outside = [k for k in kernels if substring not in k]
    print(f"sanitizer filter kns={substring}: matches {len(kernels) - len(outside)} of "
          f"{len(kernels)} kernels in {library}")
    for k in outside:
        print(f"  NOT matched: {k}")
    return 3 if outside or not kernels else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    kernels = sub.add_parser("kernels", help="every operator has a kernel for --key (exit code "
                             "1 if not; 3 if only the sanitizer filter misses kernels)")
    kernels.add_argument("--key", default="CUDA", help="dispatch key (default CUDA)")
    kernels.add_argument("--sanitizer-filter", metavar="SUBSTRING",
                         help="also check that every device kernel's mangled name contains it")
    args = parser.parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = check_kernels(args.key)
        if args.sanitizer_filter and check_sanitizer_filter(args.sanitizer_filter) and not rc:
            rc = 3
    lines = out.getvalue().splitlines()
    print("\n".join(lines))
    # The last line sums up: the kernels' line and the filter's.
    print("; ".join(ln for ln in lines if ln.startswith(("kernels:", "sanitizer filter"))))
    return rc


if __name__ == "__main__":
    sys.exit(main())
