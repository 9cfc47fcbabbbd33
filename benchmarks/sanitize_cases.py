"""Every CUDA kernel path of torchext once, lean enough to run under compute-sanitizer in seconds,
and checked against the float64 reference.

Per op and dtype: a vectorized (16-byte aligned) run with a tail, the same misaligned (x and g
one element into their buffers: the scalar path), both again at a size beyond one full wave of
blocks (3·2^20+5 elements: more than one grid-stride iteration on 132 SMs), a length shorter than
one vector, and a 0-dim x. Per op: an empty x, double backward; per coefficient op: float16,
bfloat16 and float64 coefficients, Python numbers, per-channel / per-group coefficients, and
per-slot ones beside one-element ones (whose gradients are added over the slots: by two blocks
and a second stage beyond 4096 slots).

The GPU work of all cases is queued first, with no host synchronization between cases; one
synchronization, then every result is compared on the host with the reference (computed on the
host, in float64, from the same rounded inputs). Exit code 1 if any case is wrong.

    python benchmarks/sanitize_cases.py                         # on CUDA
    compute-sanitizer --tool memcheck --kernel-name kns=torchext \
        python benchmarks/sanitize_cases.py
    python benchmarks/sanitize_cases.py --device cpu --dry-run  # the case list on the CPU, small

``--control`` instead reads uninitialized device memory in one torchext kernel: initcheck must
flag it, which shows that its ``--kernel-name`` filter reaches our kernels (a filter that matches
nothing reports "0 errors" too).
"""

import argparse
import math
import sys
import time
from dataclasses import dataclass

import gpu_cases
import torch

WAVE_N = 3 * 2**20 + 5  # > 132 SMs x 2048 threads x 4 float32 (or 8 16-bit) elements
DRY_WAVE_N = 2**12 + 5


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple
    dtype: torch.dtype = torch.float32
    offset: int = 0  # elements into x's and g's buffers: 0 aligned, 1 misaligned
    coef_shape: tuple | list | None = ()  # None: Python numbers; a list: shapes taken in turn
    coef_dtype: torch.dtype = torch.float32
    double_backward: bool = False

    def __str__(self):
        dtype = str(self.dtype).removeprefix("torch.")
        parts = [self.op, f"x{list(self.shape)}", dtype]
        if self.offset:
            parts.append(f"offset {self.offset}")
        if gpu_cases.ops()[self.op]:
            if self.coef_shape is None:
                parts.append("number coefficients")
            elif self.coef_shape or self.coef_dtype != torch.float32:
                coef_dtype = str(self.coef_dtype).removeprefix("torch.")
                parts.append(f"coefficients {list(self.coef_shape)} {coef_dtype}")
        if self.double_backward:
            parts.append("double backward")
        return " ".join(parts)


def cases(wave_n: int, tensor_coefs_only: bool) -> tuple[list[Case], list[str]]:
    """(the cases, a note per skipped one)."""
    out, notes = [], []
    for op in gpu_cases.ops():
        for dtype in gpu_cases.DTYPES:
            for n, offset in [(4099, 0), (4099, 1), (wave_n, 0), (wave_n, 1), (13, 0)]:
                out.append(Case(op, (n,), dtype, offset))
            out.append(Case(op, (), dtype))
        out += [Case(op, (0,)), Case(op, (3, 0)), Case(op, (4099,), double_backward=True)]
    for op in gpu_cases.coef_ops():
        for coef_dtype in (torch.float16, torch.bfloat16, torch.float64):
            out.append(Case(op, (4099,), coef_dtype=coef_dtype))
        if tensor_coefs_only:
            notes.append(f"{op} with number coefficients: skipped (--tensor-coefs-only)")
        else:
            out.append(Case(op, (4099,), coef_shape=None))
        for x_shape, coef_shape in gpu_cases.PER_CHANNEL.values():
            big = (-(-wave_n // math.prod(x_shape[1:])), *x_shape[1:])
            out += [Case(op, x_shape, coef_shape=coef_shape),
                    Case(op, x_shape, torch.bfloat16, offset=1, coef_shape=coef_shape),
                    Case(op, big, coef_shape=coef_shape)]
        # Per channel beside one-element (64 terms a slot: the reference's bound covers their
        # rounding), on 100 and on 4100 slots.
        out += [Case(op, (64, 100), coef_shape=[(100,), ()]),
                Case(op, (64, 4100), coef_shape=[(4100,), ()])]
    return out, notes


def launch(case: Case, device: str, seed: int):
    """Queue the case on the device; return what the host needs to check it."""
    x_h, x = gpu_cases.randn(case.shape, case.dtype, device, seed, case.offset)
    g_h, g = gpu_cases.randn(case.shape, case.dtype, device, seed + 1, case.offset)
    if case.coef_shape is None:
        cs_h = cs = [0.5, -1.25, 0.75, 0.3][: gpu_cases.ops()[case.op]]
    else:
        cs_h, cs = gpu_cases.coefs(case.op, case.coef_shape, case.coef_dtype, device, seed + 2)
        cs = [c.requires_grad_() for c in cs]
    x.requires_grad_()
    y = gpu_cases.function(case.op)(x, *cs)
    tensor_cs = [c for c in cs if isinstance(c, torch.Tensor)]
    if not case.double_backward:
        grads = torch.autograd.grad(y, [x, *tensor_cs], g)
        return (x_h, cs_h, g_h), [y.detach(), *grads]
    # d/dx of <dx, h>, with dx = g·f'(x): the backward's own backward, x-part.
    h_h, h = gpu_cases.randn(case.shape, case.dtype, device, seed + 3)
    (dx,) = torch.autograd.grad(y, x, g, create_graph=True)
    (ddx,) = torch.autograd.grad(dx, x, h)
    return (x_h, cs_h, g_h, h_h), [ddx]


def check(case: Case, host_inputs, results) -> str | None:
    """None if the case's results match the float64 reference, else what is wrong."""
    atol, rtol = gpu_cases.TOLERANCES[case.dtype]
    if case.double_backward:
        x_h, cs_h, g_h, h_h = host_inputs
        x64 = x_h.double().requires_grad_()
        c64 = [c.double() for c in cs_h]
        y = gpu_cases.eager(case.op)(x64, *c64)
        (dx,) = torch.autograd.grad(y, x64, g_h.double(), create_graph=True)
        (want,) = torch.autograd.grad(dx, x64, h_h.double())
        why = gpu_cases.mismatch(results[0], want, 10 * atol, 10 * rtol)
        return why and f"ddx {why}"
    x_h, cs_h, g_h = host_inputs
    y, dx, grads = gpu_cases.reference(case.op, x_h, cs_h, g_h)
    for name, got, want in [("y", results[0], y), ("dx", results[1], dx)]:
        if why := gpu_cases.mismatch(got, want, atol, rtol):
            return f"{name} {why}"
    tensor_cs = [c for c in cs_h if isinstance(c, torch.Tensor)]
    for k, (got, (want, bound), c) in enumerate(zip(results[2:], grads, tensor_cs, strict=True)):
        if got.dtype != c.dtype or got.shape != c.shape:
            return f"grad of {'abcd'[k]}: {got.dtype} {tuple(got.shape)}, not the coefficient's"
        if why := gpu_cases.mismatch(got, want, 0.0, torch.finfo(c.dtype).eps, bound):
            return f"grad of {'abcd'[k]} {why}"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"multi-wave cases at {DRY_WAVE_N} elements (for a CPU smoke run)")
    parser.add_argument("--tensor-coefs-only", action="store_true",
                        help="leave out Python-number coefficients (for initcheck: torch's fill "
                             "kernel writes them, and --kernel-name leaves it uninstrumented)")
    parser.add_argument("--control", action="store_true",
                        help="only run torchext.relu on uninitialized memory (initcheck's "
                             "positive control)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible to torch (use --device cpu --dry-run)")
    if args.control:
        gpu_cases.function("relu")(torch.empty(4096, device=args.device)).sum().item()
        print("sanitize_cases: control ran torchext.relu on 4096 uninitialized floats")
        return 0
    start = time.perf_counter()
    todo, notes = cases(DRY_WAVE_N if args.dry_run else WAVE_N, args.tensor_coefs_only)
    for note in notes:
        print(note)
    pending = [(case, *launch(case, args.device, seed)) for seed, case in enumerate(todo)]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    failed = 0
    for case, host_inputs, results in pending:
        if why := check(case, host_inputs, results):
            failed += 1
            print(f"FAIL {case}: {why}")
    print(f"sanitize_cases: {len(todo)} cases on {args.device}, {failed} failed, "
          f"{len(notes)} skipped, {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
