"""Beyond 32-bit indexing: one forward and one backward of every op at 2^31 + 5 elements
(float16 and bfloat16: ~4 GB a tensor). Every element of y and dx is checked against torch's
float64 on the device (the outputs land in freed blocks first filled with NaN, so an unwritten
element fails), each coefficient gradient against torch's float64 sum of its terms, and sampled
elements around the 2^31 boundary and over the range against float64 on the host.

    python benchmarks/gpu_large.py                        # on CUDA: ~40 GB of device memory
    python benchmarks/gpu_large.py --device cpu --n 2^12+5  # a smoke run of the same checks
"""

import argparse
import sys
import time

import gpu_cases
import torch

COEFS = (0.5, -1.25, 0.75, 0.3)  # a, b, c, d: |c + d·x| stays small, so float16 P3 is finite
CHUNK = 2**27


def sample_indices(n: int, gen) -> torch.Tensor:
    edges = [0, 1, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**32, n - 2, n - 1]
    spread = torch.linspace(0, n - 1, 64, dtype=torch.float64).long()
    drawn = torch.randint(0, n, (64,), generator=gen)
    return torch.cat([torch.tensor([i for i in edges if 0 <= i < n]), spread, drawn]).unique()


def poison(n: int, dtype, device: str, count: int) -> None:
    """Leave ``count`` freed blocks of n elements filled with NaN in the caching allocator, so
    that the outputs allocated next reuse them: an element a kernel fails to write stays NaN."""
    blocks = [torch.full((n,), float("nan"), dtype=dtype, device=device) for _ in range(count)]
    del blocks


def count_bad(got, want, atol: float, rtol: float):
    """How many elements of ``got`` miss ``want`` (NaN always does), as a 0-dim device tensor."""
    excess = (got.double() - want).abs() - (atol + rtol * want.abs())
    return (~(excess <= 0)).sum()


def check_op(op: str, n: int, dtype, device: str, gen) -> list[str]:
    """What is wrong with one forward and backward of ``op`` at n elements (empty: nothing)."""
    x = torch.randn(n, dtype=dtype, device=device)
    g = torch.randn(n, dtype=dtype, device=device)
    cs = [torch.tensor(v, device=device, requires_grad=True) for v in COEFS[: gpu_cases.ops()[op]]]
    poison(n, dtype, device, 2)
    x.requires_grad_()
    y = gpu_cases.function(op)(x, *cs)
    dx, *coef_grads = torch.autograd.grad(y, [x, *cs], g)
    x, y = x.detach(), y.detach()
    atol, rtol = gpu_cases.TOLERANCES[dtype]
    problems = []
    # Every element, against torch's float64 on the device, chunk by chunk; the coefficient
    # gradients against torch's sums of their terms.
    bad_y = bad_dx = 0
    sums = None
    for start in range(0, n, CHUNK):
        part = slice(start, start + CHUNK)
        y_ref, dx_ref, grads = gpu_cases.reference(op, x[part], cs, g[part])
        bad_y = bad_y + count_bad(y[part], y_ref, atol, rtol)
        bad_dx = bad_dx + count_bad(dx[part], dx_ref, atol, rtol)
        sums = grads if sums is None else [
            (s + s2, b + b2) for (s, b), (s2, b2) in zip(sums, grads, strict=True)]
    for name, bad in (("y", bad_y), ("dx", bad_dx)):
        if int(bad):
            problems.append(f"{name}: {int(bad)} of {n} elements wrong or unwritten")
    for name, got, (want, bound) in zip("abcd"[: len(cs)], coef_grads, sums or [], strict=True):
        if why := gpu_cases.mismatch(got, want, 0.0, torch.finfo(got.dtype).eps, bound):
            problems.append(f"grad of {name}: {why}")
    # A few elements, around 2^31 and spread over the range, against float64 on the host: the
    # device's reference is torch's own CUDA kernels, at the same sizes.
    idx = sample_indices(n, gen).to(device)
    y_ref, dx_ref, _ = gpu_cases.reference(op, x[idx].cpu(), [c.detach().cpu() for c in cs],
                                           g[idx].cpu())
    for name, got, want in (("y", y[idx], y_ref), ("dx", dx[idx], dx_ref)):
        if why := gpu_cases.mismatch(got, want, atol, rtol, where=idx):
            problems.append(f"{name} (host) {why}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--n", type=gpu_cases.size, default=2**31 + 5,
                        help="elements (default 2^31+5)")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="default float16,bfloat16")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible to torch (use --device cpu --n 2^12+5)")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    start, failed, runs = time.perf_counter(), 0, 0
    for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
        for op in gpu_cases.ops():
            problems = check_op(op, args.n, dtype, args.device, gen)
            runs += 1
            failed += bool(problems)
            verdict = "; ".join(problems) or "ok"
            print(f"{op} {str(dtype).removeprefix('torch.')} n={args.n}: {verdict} "
                  f"({time.perf_counter() - start:.1f} s)")
            if args.device == "cuda":
                torch.cuda.empty_cache()
    print(f"gpu_large: {runs} forward+backward at n={args.n}, {failed} failed, "
          f"{time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
