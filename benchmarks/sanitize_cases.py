"""Every CUDA kernel path of torchext, once each, small enough to run under compute-sanitizer.

Covers: each op forward and backward; every dtype; vectorized (aligned) and scalar (unaligned:
offset by one element) paths; tails; empty and 0-dim tensors; coefficient dtypes; a size above
one full wave of blocks (grid-stride loop); double backward. Exits non-zero on a wrong result.
Run: compute-sanitizer --tool memcheck python benchmarks/sanitize_cases.py
"""

import sys

import torch

import torchext
from torchext import reference

OPS = ["cubic", "legendre_p3", "affine_legendre_p3", "relu"]
COEF_OPS = {"cubic", "affine_legendre_p3"}


def run_case(op, n, dtype, offset, coef_dtype):
    base = torch.randn(n + offset, device="cuda", dtype=torch.float64).to(dtype)
    x = base[offset:].requires_grad_()
    cs = [torch.randn((), device="cuda", dtype=coef_dtype, requires_grad=True)
          for _ in range(4 if op in COEF_OPS else 0)]
    y = getattr(torchext, op)(x, *cs)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *cs], g)
    x64 = x.detach().double().requires_grad_()
    c64 = [c.detach().double().requires_grad_() for c in cs]
    y_ref = reference.EAGER[op](x64, *c64).reshape(x.shape)
    grads_ref = torch.autograd.grad(y_ref, [x64, *c64], g.double())
    tol = 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2
    ok = torch.allclose(y.double(), y_ref, rtol=tol, atol=tol)
    ok &= torch.allclose(grads[0].double(), grads_ref[0], rtol=tol, atol=tol)
    for a, b in zip(grads[1:], grads_ref[1:], strict=True):
        ok &= torch.allclose(a.double(), b, rtol=1e-3, atol=1e-3 * max(n, 1) ** 0.5)
    return bool(ok)


def main():
    failures = []
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    for op in OPS:
        for dtype in dtypes:
            for n in [0, 1, 7, 4099, (1 << 20) + 3]:
                for offset in [0, 1]:
                    if not run_case(op, n, dtype, offset, torch.float32):
                        failures.append((op, n, dtype, offset))
        if op in COEF_OPS:
            for coef_dtype in [torch.float16, torch.bfloat16, torch.float64]:
                if not run_case(op, 1000, torch.float32, 0, coef_dtype):
                    failures.append((op, "coef", coef_dtype))
        x = torch.randn(3, 5, device="cuda", dtype=torch.float64, requires_grad=True)
        cs = [torch.randn((), device="cuda", dtype=torch.float64, requires_grad=True)
              for _ in range(4 if op in COEF_OPS else 0)]
        fn = getattr(torchext, op)
        if not torch.autograd.gradgradcheck(fn, (x, *cs)):
            failures.append((op, "gradgradcheck"))
    torch.cuda.synchronize()
    print("failures:", failures or "none")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
