"""``python -m torchext info``: what to paste into a bug report. Versions, the kernels compiled in,
the build's CUDA architectures and OpenMP, the devices and threads, then a self-check of every op
on every available device against the float64 reference; the exit code is non-zero if any fails.
"""

import argparse
import os
import platform
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

import torchext
from torchext import reference
from torchext.functional import OPS

OPERATORS = tuple(f"{op}{suffix}" for op in OPS for suffix in ("", "_backward"))
ENVIRONMENT = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCHEXT_CPU_ISA", "CUDA_VISIBLE_DEVICES",
    "TORCH_CUDA_ARCH_LIST",
)


@dataclass(frozen=True)
class Check:
    """One op of the self-check: the function under test, its reference, and how many
    coefficients (a, b, c, d) follow x."""

    function: Callable
    reference: Callable
    coefficients: int


# The self-check's table, from the op table: op name -> what it runs (tests patch it to simulate a
# broken kernel).
CHECKS = {name: Check(getattr(torchext, name), reference.EAGER[name], len(op.coefs))
          for name, op in OPS.items()}
CHECK_SHAPE = (33, 65)  # odd sizes: vector tails
# (x's shape, the coefficients' shape) an op with coefficients is checked with: one element, and
# per channel the ways the kernels tile it: along x's last dim (column tiles of single columns;
# the CPU folds these rows of 65 two to a row, the last cut short), along its first with short
# rows (grouped coefficients: short runs of 65 on the CPU, column tiles of whole rows on CUDA),
# and with rows long enough to be runs on the CPU and on CUDA (1024 elements and more).
CHECK_CASES = ((CHECK_SHAPE, ()), (CHECK_SHAPE, (CHECK_SHAPE[1],)),
               (CHECK_SHAPE, (CHECK_SHAPE[0], 1)), ((5, 1031), (5, 1)))
CHECK_DTYPE = torch.float32
# The largest error allowed, relative to max(|expected|, 1) per output: float32 against float64
# is good to ~1e-6 here; a wrong kernel is off by O(1).
CHECK_TOLERANCE = 1e-4


# ---- the report ----------------------------------------------------------------------------------


def has_kernel(op: str, key: str) -> bool | None:
    """Whether operator ``torchext::op`` has a kernel for dispatch key ``key``; None when there is
    no such operator (a _C built from other sources than this Python package)."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"torchext::{op}", key)
    except RuntimeError:
        return None


def _ask(function, *args):
    """``function(*args)``, or what went wrong: the report goes on either way."""
    try:
        return function(*args)
    except Exception as e:  # a bug report needs the rest of the report all the more
        return f"unavailable ({type(e).__name__}: {e})"


def build_info() -> dict[str, str]:
    """``torch.ops.torchext._build_info()`` (``cuda_archs=8.0;9.0+PTX;openmp=1;cpu_isa=avx2``) as a
    dict, with the raw string under "raw". Fields are ``name=value`` separated by ';'; the
    architectures are themselves ';'-separated, so a piece without '=' continues the last value."""
    raw = _ask(lambda: torch.ops.torchext._build_info())
    fields = {}
    last = None
    for piece in raw.split(";"):
        name, eq, value = piece.partition("=")
        if eq and name.isidentifier():
            last, fields[name] = name, value
        elif last is not None:
            fields[last] += ";" + piece
    return {"raw": raw, **fields}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def arch_support(capability: tuple[int, int], archs: str) -> str:
    """Whether kernels built for ``archs`` (e.g. ``8.0;9.0+PTX``) run on a GPU of ``capability``:
    a cubin runs on the same major version with an equal or higher minor; PTX is compiled by the
    driver for any equal or newer GPU."""
    entries = [e for e in re.split(r"[;\s]+", archs) if e]
    parsed = []
    for entry in entries:
        m = re.fullmatch(r"(\d+)\.(\d+)\w*(\+PTX)?", entry)
        if m is None:
            return f"unknown (build archs {archs!r})"
        parsed.append((int(m[1]), int(m[2]), bool(m[3])))
    sass = [f"{major}.{minor}" for major, minor, _ in parsed
            if major == capability[0] and minor <= capability[1]]
    if sass:
        return f"yes (sm_{sass[-1].replace('.', '')} binary)"
    ptx = [f"{major}.{minor}" for major, minor, has_ptx in parsed
           if has_ptx and (major, minor) <= capability]
    if ptx:
        return f"yes (PTX {ptx[-1]}, compiled by the driver on first use)"
    cap = f"{capability[0]}.{capability[1]}"
    return f"NO: rebuild with TORCH_CUDA_ARCH_LIST={cap}"


def cuda_devices() -> list[torch.device]:
    if not torch.cuda.is_available():
        return []
    return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]


def report_lines() -> list[str]:
    """Everything but the self-check."""
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
    lines = [
        f"torchext {torchext.__version__}  ({os.path.dirname(torchext.__file__)})",
        f"torch {torch.__version__}  ({cuda}, debug={torch.version.debug})",
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.platform()}",
        "",
    ]

    build = build_info()
    archs = build.get("cuda_archs")
    openmp = {"1": "on", "0": "OFF (parallel_for runs serially)"}
    described = {
        "cuda_archs": ("CUDA architectures", archs or "none (built without CUDA kernels)"),
        "openmp": ("OpenMP", openmp.get(build.get("openmp"), build.get("openmp"))),
        "cpu_isa": ("CPU instruction set of the kernels", build.get("cpu_isa")),
    }
    lines.append(f"build: {build['raw']}")
    for name, value in build.items():
        if name != "raw":
            lines.append("  {}: {}".format(*described.get(name, (name, value))))
    lines += [
        "",
        f"{'kernels':<32}{'CPU':<6}CUDA",
    ]
    for op in OPERATORS:
        cpu, gpu = ({True: "yes", False: "no", None: "MISSING"}[has_kernel(op, key)]
                    for key in ("CPU", "CUDA"))
        lines.append(f"  {op:<30}{cpu:<6}{gpu}")

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines += ["", "devices", f"  cpu: {cpu_model()}, {os.cpu_count()} logical cores "
                             f"({usable} usable by this process)"]
    if not torch.cuda.is_available():
        lines.append("  cuda: none (torch.cuda.is_available() is False)")
    for device in cuda_devices():
        p = _ask(torch.cuda.get_device_properties, device)
        if isinstance(p, str):
            lines.append(f"  {device}: {p}")
            continue
        capability = (p.major, p.minor)
        runs = arch_support(capability, archs) if archs not in (None, "", "detected") else (
            "no CUDA kernels" if archs == "" else "built for the GPU visible at build time")
        lines.append(f"  {device}: {p.name}, capability {p.major}.{p.minor}, "
                     f"{p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs; "
                     f"torchext kernels for it: {runs}")

    lines += [
        "",
        "threads",
        f"  torch.get_num_threads(): {torch.get_num_threads()}",
        "  torchext parallel_for used: "
        f"{_ask(lambda: torch.ops.torchext._parallel_threads())} thread(s)",
    ]
    env = [f"  {name}={os.environ[name]}" for name in ENVIRONMENT if name in os.environ]
    lines += ["", "environment"] + (env or ["  (none of " + ", ".join(ENVIRONMENT) + " is set)"])
    return lines


# ---- the self-check ------------------------------------------------------------------------------


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.shape != expected.shape:
        return float("inf")
    if actual.numel() == 0:
        return 0.0
    diff = (actual.double().cpu() - expected.cpu()).abs().max().item()
    scale = max(expected.abs().max().item(), 1.0)
    return diff / scale if diff == diff else float("nan")


def _forward_backward(function, *inputs_and_grad):
    *inputs, grad = inputs_and_grad
    y = function(*inputs)
    return y.detach(), torch.autograd.grad(y, inputs, grad)


def check_cases(name: str) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """The (x shape, coefficient shape) cases op ``name`` is checked with."""
    return CHECK_CASES if CHECKS[name].coefficients else ((CHECK_SHAPE, ()),)


def check(name: str, device: torch.device, seed: int = 0, shape: tuple[int, ...] = CHECK_SHAPE,
          coef_shape: tuple[int, ...] = ()) -> tuple[bool, str]:
    """Runs op ``name`` of CHECKS forward and backward on ``device`` in CHECK_DTYPE, x of
    ``shape`` and coefficients of ``coef_shape``, and compares it with its reference in float64;
    returns (passed, details)."""
    entry = CHECKS[name]
    gen = torch.Generator().manual_seed(seed)
    # Drawn in float64, rounded to CHECK_DTYPE, and the reference computed in float64 on the
    # rounded values: the errors are the op's own.
    x, grad, *coefs = (t.to(CHECK_DTYPE) for t in (
        torch.randn(shape, dtype=torch.float64, generator=gen),
        torch.randn(shape, dtype=torch.float64, generator=gen),
        *(torch.randn(coef_shape, dtype=torch.float64, generator=gen)
          for _ in range(entry.coefficients)),
    ))

    def leaves(dtype, where):
        return [t.to(dtype=dtype, device=where).requires_grad_() for t in (x, *coefs)]

    y, grads = _forward_backward(entry.function, *leaves(CHECK_DTYPE, device), grad.to(device))
    ry, rgrads = _forward_backward(entry.reference, *leaves(torch.float64, "cpu"), grad.double())

    errors = {"forward": _relative_error(y, ry)}
    for n, g, r in zip(["x", *OPS[name].coefs][: len(grads)], grads, rgrads, strict=True):
        errors[f"d{n}"] = _relative_error(g, r)
    details = (f"forward {errors['forward']:.1e}  "
               f"backward {max(e for n, e in errors.items() if n != 'forward'):.1e}")
    failed = [f"{n} off by {e:.1e}" for n, e in errors.items() if not e <= CHECK_TOLERANCE]
    if (y.dtype, y.device) != (CHECK_DTYPE, device):
        failed.append(f"result is {y.dtype} on {y.device}")
    if failed:
        details += f"  ({'; '.join(failed)}; tolerance {CHECK_TOLERANCE:.0e})"
    return not failed, details


def _describe(e: Exception) -> str:
    message = str(e).strip().splitlines()
    where = traceback.extract_tb(e.__traceback__)[-1]
    return (f"raised {type(e).__name__}: {message[0] if message else ''}  "
            f"(at {os.path.basename(where.filename)}:{where.lineno})")


def self_check_devices() -> tuple[list[torch.device], list[str]]:
    """The devices to check, and why any visible one is left out."""
    devices, skipped = [torch.device("cpu")], []
    for device in cuda_devices():
        if has_kernel(next(iter(OPS)), "CUDA"):
            devices.append(device)
        else:
            skipped.append(f"{device}: SKIP (torchext was built without CUDA kernels)")
    return devices, skipped


def self_check() -> tuple[list[str], int]:
    """Every op of CHECKS on every device; returns the lines and the number of failures."""
    devices, skipped = self_check_devices()
    dtype = str(CHECK_DTYPE).removeprefix("torch.")
    lines = [f"self-check: each op forward and backward in {dtype} on random x and coefficients "
             "(one-element and per channel),",
             "against torchext.reference.EAGER in float64 (error relative to max(|expected|, 1))"]
    failures = total = 0
    for device in devices:
        for name in CHECKS:
            for shape, coef_shape in check_cases(name):
                try:
                    passed, details = check(name, device, shape=shape, coef_shape=coef_shape)
                except Exception as e:  # a crashing op is a failed check, not a crashed command
                    passed, details = False, _describe(e)
                failures += not passed
                total += 1
                coefs = f"coefficients {coef_shape!s:<8}" if CHECKS[name].coefficients else ""
                what = f"x {shape!s:<10}{coefs:<21}"
                lines.append(f"  {name:<20}{str(device):<8}{'PASS' if passed else 'FAIL'}  "
                             f"{what}{details}")
    lines += [f"  {s}" for s in skipped]
    lines.append(f"{total - failures} of {total} checks passed" + (
        "" if not failures else f"; {failures} FAILED"))
    return lines, failures


# ---- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Exits with 1 if any check fails."


def run(args: argparse.Namespace) -> int:
    for line in report_lines():
        print(line)
    print()
    lines, failures = self_check()
    for line in lines:
        print(line)
    sys.stdout.flush()
    return 1 if failures else 0
