"""``python -m torchext bench``: time torchext against the pure-Python tutorial Functions, the eager
expression and ``torch.compile`` of it, with ``y.copy_(x)`` and ``torch.neg`` as floors.

    python -m torchext bench            # all ops, 2^10..2^24 (x4) and 2000, float32 and bfloat16
    python -m torchext bench --quick    # a CI-sized run (well under 2 minutes on 2 cores)
    python -m torchext bench --ops cubic,relu --sizes 2000,2^20 --dtypes float32 --passes fwdbwd
    python -m torchext bench --device cuda --out benchmarks/results

Contenders are interleaved: for each dtype, size, op and pass, the op's four contenders and the
floors (``torch.neg`` for the pass, and the copy) alternate a block of calls at a time (about a
millisecond of calls, at least one), in reversed order every other pass, after a warm-up, until
each has run ``--min-run-time`` seconds and at least ``--rounds`` blocks. A contender's time is
the median over its blocks, so the host's load, which on a shared machine changes from second to
second, falls on all contenders alike, and every ratio compares times taken side by side. The
floors' rows merge their blocks with every op. Inputs are seeded random
normals; ``x`` and the coefficients (0-dim float32) require grad, and the forward pass runs with
grad enabled, as in training.

Host memory: by default (``--malloc keep``) the bench first tells glibc's malloc to keep freed
memory for reuse (``mallopt``: no ``mmap``, no trimming), as a caching allocator (jemalloc,
tcmalloc) does once its heap has settled, so that the times measure the ops. With glibc's defaults
(``--malloc system``) whether a call's outputs of 128 KB and more come fresh from the OS, and are
page-faulted in by their first touch, depends on the heap's history: the same loop of two
``torch.neg`` calls at 2^20 faulted 2016 times a call in one process and never in another, 4.0
against 0.39 ms, and a fault's cost on a shared VM varies several-fold from minute to minute
(benchmarks/NOTES.md §7, §8). The ratios between contenders then follow the allocator, not the ops.

Output in ``--out``: ``results.csv``, ``results.md`` (tables for reading) and one PNG per
(pass, dtype). Columns of ``results.csv``:
  device, device_name, torch, threads   where it ran (CPU model or GPU name, torch version, threads)
  malloc      the process's C allocator: "keep" (freed memory kept; the default) or "system"
  op          an op of torchext.functional.OPS; ``floor`` for the floors
  impl        torchext, tutorial (torchext.reference.TUTORIAL), eager (torchext.reference.EAGER),
              compile (torch.compile of eager, static shapes; for bwd a second compile with
              donated buffers off, as retain_graph=True requires); floors: copy (y.copy_(x)), neg
  pass        fwd (forward), bwd (autograd.grad of a graph built once, retain_graph=True),
              fwdbwd (forward then autograd.grad)
  dtype, n    dtype of x (coefficients stay float32) and its number of elements
  shape       per-channel rows only: the CHANNEL_CASES key (x's shape); their impl is torchext,
              torchext-1 (one-element coefficients on the same x), eager or compile
  median_us, iqr_us   median time per call and its interquartile range over the
              timed blocks, microseconds
  blocks      how many timed blocks (of one or more calls) they come from; with one the IQR is 0
  gbps        GB/s counted from the fewest bytes the pass must move: fwd reads x and writes y
              (2 n itemsize), bwd reads g and x and writes dx (3), fwdbwd both (5), copy 2
  copy_fraction       gbps / the copy floor's GB/s at the same n and dtype
  peak_mem_mb         fwdbwd rows only: peak memory allocated during one forward+backward, the
              inputs (x, g, coefficients) excluded, the output and gradients included (CUDA:
              max_memory_allocated; CPU: the running sum of the profiler's allocation events)
  compile_s   compile rows only: seconds of the first forward+backward call (trace and compile;
              on-disk inductor caches allowed, and the run's first compile also loads inductor),
              the same on each pass's row
"""

import argparse
import contextlib
import csv
import ctypes
import gc
import itertools
import math
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch

import torchext
from torchext import _cli
from torchext.functional import OPS as TABLE
from torchext.reference import EAGER, TUTORIAL

OPS = tuple(TABLE)
COEF_OPS = tuple(name for name, op in TABLE.items() if op.coefs)
CONTENDERS = ("torchext", "tutorial", "eager", "compile")
# Per-channel coefficients (the ops with coefficients): x's shape and the coefficients' shape. The
# contenders: torchext, torchext with one-element coefficients on the same x (the goal: per
# channel costs at most CHANNEL_GOAL times that), the eager broadcast expression, torch.compile.
CHANNEL_CASES = {
    "32x197x768": ((32, 197, 768), (768,)),  # a ViT's [B, L, C], channels last
    "1x197x768": ((1, 197, 768), (768,)),  # the same for one image: in the caches
    "8x197x3072": ((8, 197, 3072), (3072,)),  # its MLP's hidden activations: wide rows
    "64x64x56x56": ((64, 64, 56, 56), (64, 1, 1)),  # a ResNet's [N, C, H, W], channels first
    # A MobileNet's early activations as channels_last memory lays them out ([N, H, W, C]): rows
    # of 32 columns, narrow
    "8x112x112x32": ((8, 112, 112, 32), (32,)),
    # A ResNet's last stage: runs of 49, short runs (16-bit ones: column tiles, whose rows
    # prefetch; cpu/loops.h's tile_sizes and prefetch_rows)
    "64x512x7x7": ((64, 512, 7, 7), (512, 1, 1)),
    # A Kolmogorov-Arnold Transformer's group-rational activation: 8 groups of 96 channels, x
    # viewed as [B, L, G, C/G]
    "32x197x8x96": ((32, 197, 8, 96), (8, 1)),
}
QUICK_CHANNEL_CASES = {"4x16x32": ((4, 16, 32), (32,)), "2x8x8x8": ((2, 8, 8, 8), (8, 1, 1))}
CHANNEL_CONTENDERS = ("torchext", "torchext-1", "eager", "compile")
CHANNEL_GOAL = 1.3
PASSES = ("fwd", "bwd", "fwdbwd")
DTYPES = ("float32", "bfloat16", "float16", "float64")
DEFAULT_DTYPES = ("float32", "bfloat16")
# Multiples of n * itemsize that each pass must move at least.
BYTES = {"fwd": 2, "bwd": 3, "fwdbwd": 5, "copy": 2}
PASS_TITLES = {"fwd": "forward", "bwd": "backward", "fwdbwd": "forward + backward"}
TUTORIAL_N = 2000
MALLOC_NOTES = {
    "keep": "freed memory kept for reuse (glibc mallopt: M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1), "
            "as with a caching allocator: outputs do not page-fault once the heap has settled",
    "system": "the C allocator's defaults (glibc: whether blocks of 128 KB and more come fresh "
              "from the OS, to be page-faulted in by their first touch, depends on the heap's "
              "history; see --malloc)",
}
QUICK = {"sizes": [2**10, 2**14], "dtypes": ["float32"], "min_run_time": 0.02, "rounds": 2}
ROUNDS = 5
# How long a timed block of calls lasts: short, so that the contenders alternate often.
BLOCK_SECONDS = 1e-3
COLUMNS = (
    "device", "device_name", "torch", "threads", "malloc", "op", "impl", "pass", "dtype", "n",
    "shape", "median_us", "iqr_us", "blocks", "gbps", "copy_fraction", "peak_mem_mb", "compile_s",
)


# ---- command line --------------------------------------------------------------------------------


def _size(text: str) -> int:
    base, _, exp = text.partition("^")
    n = int(base) ** int(exp) if exp else int(text)
    if not 1 <= n < 2**62:  # beyond, no tensor could hold it (torch's sizes are int64)
        raise ValueError(text)
    return n


def _sizes(text: str) -> list[int]:
    try:
        return [_size(s.strip()) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid size list {text!r}: use positive integers below 2^62 or powers like "
            "2^20, separated by commas"
        ) from None


def _choices(allowed):
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",")]
        bad = [s for s in names if s not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, bad))}: choose from {', '.join(allowed)}"
            )
        return names

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=_cli.device(indexed=False), default="cpu",
                        metavar="DEVICE", help="cpu or cuda (default: cpu)")
    parser.add_argument("--ops", type=_choices(OPS), action="extend", metavar="LIST",
                        help=f"comma list, repeatable (default: {','.join(OPS)})")
    parser.add_argument("--sizes", type=_sizes, action="extend", metavar="LIST",
                        help="comma list of n, e.g. 2000,2^20 (default: 2^10..2^24 step x4 and "
                             "2000 on CPU, 2^10..2^28 and 2000 on CUDA)")
    parser.add_argument("--dtypes", type=_choices(DTYPES), action="extend", metavar="LIST",
                        help=f"dtype of x, of {','.join(DTYPES)} "
                             f"(default: {','.join(DEFAULT_DTYPES)})")
    parser.add_argument("--passes", type=_choices(PASSES), action="extend", metavar="LIST",
                        help="fwd, bwd, fwdbwd (default: all)")
    parser.add_argument("--channels", type=_choices(tuple(CHANNEL_CASES) + ("none",)),
                        action="extend", metavar="LIST",
                        help=f"per-channel cases, of {','.join(CHANNEL_CASES)}, or none (default: "
                             "all; with --quick, small ones)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), metavar="DIR",
                        help="output folder (default: bench-out)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny CI run: sizes 2^10,2^14, float32, short timing "
                             "(explicit --sizes/--dtypes/--min-run-time still win)")
    _cli.add_threads(parser)
    parser.add_argument("--malloc", choices=("keep", "system"), default="keep",
                        help="keep (default): make glibc's malloc keep freed memory for reuse (no "
                             "mmap, no trimming), so that outputs do not page-fault; system: the "
                             "C library's defaults")
    parser.add_argument("--min-run-time", type=_cli.positive(float), metavar="SECONDS",
                        help="seconds of timing per cell (default 0.2; 0.02 with --quick)")
    parser.add_argument("--rounds", type=_cli.positive(int), metavar="N",
                        help=f"fewest timed blocks per contender (default {ROUNDS}; "
                             f"{QUICK['rounds']} with --quick)")


def _settings(args) -> argparse.Namespace:
    """The arguments with defaults filled in (``--quick`` changes some defaults)."""
    top = 24 if args.device == "cpu" else 28
    sizes = QUICK["sizes"] if args.quick else [2**k for k in range(10, top + 1, 2)] + [TUTORIAL_N]
    dtypes = QUICK["dtypes"] if args.quick else DEFAULT_DTYPES
    channels = QUICK_CHANNEL_CASES if args.quick else CHANNEL_CASES
    if args.channels:
        channels = {k: CHANNEL_CASES[k] for k in args.channels if k != "none"}
    return argparse.Namespace(
        channels=channels,
        device=args.device,
        ops=list(dict.fromkeys(args.ops or OPS)),
        sizes=sorted(set(args.sizes or sizes)),
        dtypes=list(dict.fromkeys(args.dtypes or dtypes)),
        passes=[p for p in PASSES if p in (args.passes or PASSES)],
        out=args.out,
        min_run_time=args.min_run_time or (QUICK["min_run_time"] if args.quick else 0.2),
        rounds=args.rounds or (QUICK["rounds"] if args.quick else ROUNDS),
    )


# ---- measuring -----------------------------------------------------------------------------------


def keep_freed_memory() -> str:
    """Tell glibc's malloc to serve every block from its heap and never give the heap back, so
    that a freed output's pages are reused, already mapped, by the next call; "keep" if done,
    "system" where the C library is not glibc."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return "system"
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    return "keep" if ok else "system"


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({os.cpu_count()} logical CPUs)"


def _inputs(op: str, n, dtype: str, device: str, coef_shape=()):
    """Seeded random x of n elements (or of shape n), the op's coefficients (float32, of
    coef_shape), all requiring grad, and g."""
    shape = (n,) if isinstance(n, int) else n
    gen = torch.Generator(device).manual_seed(math.prod(shape))
    x, g = (torch.randn(shape, generator=gen, dtype=getattr(torch, dtype), device=device)
            for _ in range(2))
    coefs = [torch.randn(coef_shape, generator=gen, device=device).requires_grad_()
             for _ in (TABLE[op].coefs if op in TABLE else ())]
    return (x.requires_grad_(), *coefs), g


def _pass_fn(fn, inputs, g, pass_: str):
    """The statement to time for one pass."""
    if pass_ == "fwd":
        return lambda: fn(*inputs)
    if pass_ == "bwd":
        y = fn(*inputs)
        return lambda: torch.autograd.grad(y, inputs, g, retain_graph=True)
    return lambda: torch.autograd.grad(fn(*inputs), inputs, g)


def _time_rounds(stmts: dict, min_run_time: float, rounds: int, warmup: int = 3) -> dict:
    """{key: the per-call seconds of every timed block} for ``stmts`` ({key: statement}). After a
    warm-up (``warmup`` calls each, at least one: the fastest sizes the blocks), the statements
    alternate block by block, in reversed order every other pass (each
    then follows a different one), a block being as many calls as take about BLOCK_SECONDS (at
    least one), until each has run for ``min_run_time`` and at least ``rounds`` blocks; one that
    has, sits out the passes left. A shared machine's load changes from second to second: turns
    of a fifth of ``min_run_time`` each caught one contender in a burst and the next out of it,
    and moved a ratio of two by up to 30% between runs (benchmarks/NOTES.md §23, §24); block by
    block, the load falls on all alike."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def timed(stmt, calls: int) -> float:  # without the garbage collector, as timeit times
        sync()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(calls):
                stmt()
            sync()
            return time.perf_counter() - start
        finally:
            gc.enable()

    calls = {}
    for key, stmt in stmts.items():  # warm-up (allocator caches, lazy initialisation), and a
        one = min(timed(stmt, 1) for _ in range(max(1, warmup)))  # call's time, for the block
        calls[key] = max(1, round(BLOCK_SECONDS / max(one, 1e-9)))
    times = {key: [] for key in stmts}
    spent = dict.fromkeys(stmts, 0.0)
    keys = list(stmts)
    for p in itertools.count():
        due = [key for key in (keys if p % 2 == 0 else keys[::-1])
               if spent[key] < min_run_time or len(times[key]) < rounds]
        if not due:
            return times
        for key in due:
            seconds = timed(stmts[key], calls[key])
            times[key].append(seconds / calls[key])
            spent[key] += seconds


def _peak_mem_mb(stmt, device: str) -> float:
    """Peak memory allocated while ``stmt`` runs, beyond what was allocated before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        stmt()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        stmt()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()  # negative for frees
        peak = max(peak, running)
    return peak / 2**20


def _compile(op: str, inputs, g, retain_graph: bool = False):
    """torch.compile of the eager expression (static shapes), and the time of its first forward +
    backward call, which compiles both.

    By default AOTAutograd lets the compiled backward reuse saved buffers ("donated buffers"), which
    forbids ``retain_graph=True``. The bwd pass needs that, so it gets a compile of its own with
    donation off, of a copy of the function: dynamo caches compiled code per code object."""
    from torch._functorch import config

    fn = EAGER[op]
    no_donation = contextlib.nullcontext()
    if retain_graph:
        fn = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__)
        no_donation = config.patch(donated_buffer=False)
    compiled = torch.compile(fn, dynamic=False)
    with no_donation:
        start = time.perf_counter()
        torch.autograd.grad(compiled(*inputs), inputs, g, retain_graph=retain_graph)
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
    return compiled, time.perf_counter() - start


def _contenders(op: str, inputs, g, passes) -> tuple[dict, float]:
    """{pass: {impl: function}} and torch.compile's first-call time."""
    # Fresh compiles for every (op, dtype, n): past dynamo's recompile limit for a function, calls
    # would silently run eagerly.
    torch._dynamo.reset()
    compiled, compile_s = _compile(op, inputs, g)
    fns = {"torchext": getattr(torchext, op), "tutorial": TUTORIAL[op], "eager": EAGER[op],
           "compile": compiled}
    per_pass = {p: fns for p in passes}
    if "bwd" in passes:
        per_pass["bwd"] = dict(fns, compile=_compile(op, inputs, g, retain_graph=True)[0])
    return per_pass, compile_s


def _row(meta, op, impl, pass_, dtype, n, times, **extra) -> dict:
    """One CSV row from the per-call seconds of the timed blocks."""
    median = statistics.median(times)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (median,) * 3
    gbps = BYTES[pass_] * n * getattr(torch, dtype).itemsize / median / 1e9
    extra.setdefault("shape", "")
    return dict(meta, op=op, impl=impl, dtype=dtype, n=n, median_us=median * 1e6,
                iqr_us=(q3 - q1) * 1e6, blocks=len(times), gbps=gbps, **{"pass": pass_}, **extra)


def _floor_stmts(floor_inputs, pass_: str, with_copy: bool) -> dict:
    """The floors that join every op's passes: torch.neg for the pass, and the copy."""
    (x,), g = floor_inputs
    stmts = {("floor", "neg", pass_): _pass_fn(torch.neg, (x,), g, pass_)}
    if with_copy:
        src, dst = x.detach(), torch.empty_like(x)
        stmts["floor", "copy", "copy"] = lambda: dst.copy_(src)
    return stmts


def _measure_op(cfg, meta, op, dtype, n, floor_inputs, floor_times, progress) -> list[dict]:
    """Rows for every contender and pass of one op; the floors' blocks go to ``floor_times``.
    Statements are keyed (op, impl, pass) as the rows are."""
    inputs, g = _inputs(op, n, dtype, cfg.device)
    progress.step(f"compile {op} {dtype} n={n}", advance=0)
    per_pass, compile_s = _contenders(op, inputs, g, cfg.passes)
    rows = []
    for pass_, fns in per_pass.items():
        progress.step(f"{op} {pass_} {dtype} n={n}")
        stmts = {(op, impl, pass_): _pass_fn(fn, inputs, g, pass_) for impl, fn in fns.items()}
        stmts.update(_floor_stmts(floor_inputs, pass_, with_copy=pass_ == cfg.passes[0]))
        times = _time_rounds(stmts, cfg.min_run_time, cfg.rounds)
        for key, t in times.items():
            if key[0] == "floor":
                floor_times.setdefault(key, []).extend(t)
                continue
            extra = {"compile_s": compile_s} if key[1] == "compile" else {}
            if pass_ == "fwdbwd":
                extra["peak_mem_mb"] = _peak_mem_mb(stmts[key], cfg.device)
            rows.append(_row(meta, *key, dtype, n, t, **extra))
    return rows


def _floor_rows(cfg, meta, dtype, n, floor_inputs, floor_times) -> list[dict]:
    """The floors' rows: their blocks with every op, together."""
    rows = []
    for key, times in floor_times.items():
        extra = {}
        if key[2] == "fwdbwd":
            stmt = _floor_stmts(floor_inputs, "fwdbwd", with_copy=False)[key]
            extra["peak_mem_mb"] = _peak_mem_mb(stmt, cfg.device)
        rows.append(_row(meta, *key, dtype, n, times, **extra))
    return rows


def _with_copy_fraction(rows: list[dict]) -> list[dict]:
    copy = {(r["dtype"], r["n"], r["shape"]): r["gbps"] for r in rows if r["impl"] == "copy"}
    return [dict(r, copy_fraction=r["gbps"] / copy[r["dtype"], r["n"], r["shape"]])
            for r in rows]


def _measure_channels(cfg, meta, op, dtype, case, floor_inputs, floor_times, progress):
    """Rows for one op with per-channel coefficients on one x (cfg.channels[case]): torchext,
    torchext with one-element coefficients on the same x, eager, compile; every pass."""
    shape, coef_shape = cfg.channels[case]
    inputs, g = _inputs(op, shape, dtype, cfg.device, coef_shape)
    one_element = (inputs[0], *_inputs(op, shape, dtype, cfg.device)[0][1:])
    progress.step(f"compile {op} {dtype} {case}", advance=0)
    torch._dynamo.reset()
    compiled, compile_s = _compile(op, inputs, g)
    fns = {"torchext": getattr(torchext, op), "eager": EAGER[op], "compile": compiled}
    rows = []
    for pass_ in cfg.passes:
        progress.step(f"{op} {pass_} {dtype} {case}")
        if pass_ == "bwd":
            fns = dict(fns, compile=_compile(op, inputs, g, retain_graph=True)[0])
        stmts = {(op, impl, pass_): _pass_fn(fn, inputs, g, pass_) for impl, fn in fns.items()}
        stmts[op, "torchext-1", pass_] = _pass_fn(getattr(torchext, op), one_element, g, pass_)
        stmts.update(_floor_stmts(floor_inputs, pass_, with_copy=pass_ == cfg.passes[0]))
        for key, t in _time_rounds(stmts, cfg.min_run_time, cfg.rounds).items():
            if key[0] == "floor":
                floor_times.setdefault(key, []).extend(t)
                continue
            extra = {"compile_s": compile_s} if key[1] == "compile" else {}
            if pass_ == "fwdbwd":
                extra["peak_mem_mb"] = _peak_mem_mb(stmts[key], cfg.device)
            rows.append(_row(meta, *key, dtype, math.prod(shape), t, shape=case, **extra))
    return rows


def _measure(cfg, meta, progress) -> list[dict]:
    rows = []
    for dtype in cfg.dtypes:
        for n in cfg.sizes:
            floor_inputs, floor_times = _inputs("neg", n, dtype, cfg.device), {}
            for op in cfg.ops:
                rows += _measure_op(cfg, meta, op, dtype, n, floor_inputs, floor_times, progress)
            rows += _floor_rows(cfg, meta, dtype, n, floor_inputs, floor_times)
        for case, (shape, _) in cfg.channels.items():
            floor_inputs, floor_times = _inputs("neg", shape, dtype, cfg.device), {}
            for op in _channel_ops(cfg):
                rows += _measure_channels(cfg, meta, op, dtype, case, floor_inputs, floor_times,
                                          progress)
            rows += [dict(r, shape=case) for r in _floor_rows(
                cfg, meta, dtype, math.prod(shape), floor_inputs, floor_times)]
    return _with_copy_fraction(rows)


def _channel_ops(cfg) -> list[str]:
    return [op for op in cfg.ops if op in COEF_OPS]


class _Progress:
    """A one-line bar on stderr when it is a terminal; otherwise a plain line every 10 seconds."""

    def __init__(self, total: int):
        self.total, self.done, self.stream = total, 0, sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.last = time.monotonic()

    def step(self, label: str, advance: int = 1) -> None:
        self.done += advance
        now = time.monotonic()
        count = f"{self.done}/{self.total} ({now - self.start:.0f} s)"
        if self.tty:
            bar = "#" * (30 * self.done // self.total)
            self.stream.write(f"\r[{bar:<30}] {count} {label:<50.50}")
        elif now - self.last >= 10:
            self.stream.write(f"bench: {count} {label}\n")
            self.last = now
        self.stream.flush()

    def close(self) -> None:
        end = "\n" if self.tty else ""
        took = time.monotonic() - self.start
        self.stream.write(f"{end}bench: {self.total} timings in {took:.0f} s\n")


# ---- reporting -----------------------------------------------------------------------------------


def _write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})


def fmt(value: float) -> str:
    """Three significant digits without exponents: 0.123, 1.23, 12.3, 123, 12345."""
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}" if value else "0"


def _index(rows) -> dict:
    """The rows of the 1-D sizes, keyed (op, impl, pass, dtype, n)."""
    return {(r["op"], r["impl"], r["pass"], r["dtype"], r["n"]): r for r in rows
            if not r.get("shape")}


def _channel_index(rows) -> dict:
    """The per-channel rows, keyed (op, impl, pass, dtype, case)."""
    return {(r["op"], r["impl"], r["pass"], r["dtype"], r["shape"]): r for r in rows
            if r.get("shape")}


def _speed_table(cfg, idx, op, pass_, dtype) -> list[str]:
    head = ["n", *(f"{c} µs" for c in CONTENDERS), "neg µs", "torchext GB/s", "of copy",
            *(f"vs {c}" for c in CONTENDERS[1:]), "neg/torchext"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for n in cfg.sizes:
        t = {c: idx[op, c, pass_, dtype, n]["median_us"] for c in CONTENDERS}
        mine, neg = idx[op, "torchext", pass_, dtype, n], idx["floor", "neg", pass_, dtype, n]
        cells = [str(n), *(fmt(t[c]) for c in CONTENDERS), fmt(neg["median_us"]),
                 fmt(mine["gbps"]), f"{mine['copy_fraction']:.2f}",
                 *(f"{t[c] / t['torchext']:.2f}×" for c in CONTENDERS[1:]),
                 f"{neg['median_us'] / t['torchext']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _memory_table(cfg, idx, dtype) -> list[str]:
    lines = ["| op | n | " + " | ".join(CONTENDERS) + " | neg |", "|---|" + "---:|" * 6]
    for op in cfg.ops:
        for n in cfg.sizes:
            mb = [idx[op, c, "fwdbwd", dtype, n]["peak_mem_mb"] for c in CONTENDERS]
            mb.append(idx["floor", "neg", "fwdbwd", dtype, n]["peak_mem_mb"])
            lines.append(f"| {op} | {n} | " + " | ".join(fmt(m) for m in mb) + " |")
    return lines


def _channel_table(cfg, cidx, pass_, dtype) -> list[str]:
    head = ["op", "x", "coefficients", "torchext µs", "one-element µs", "per channel / one-element",
            "eager µs", "compile µs", "vs eager", "vs compile", "torchext GB/s", "of copy"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for op in _channel_ops(cfg):
        for case, (_, coef_shape) in cfg.channels.items():
            t = {c: cidx[op, c, pass_, dtype, case] for c in CHANNEL_CONTENDERS}
            us = {c: r["median_us"] for c, r in t.items()}
            mine = t["torchext"]
            lines.append("| " + " | ".join([
                op, case, str(coef_shape), fmt(us["torchext"]), fmt(us["torchext-1"]),
                f"{us['torchext'] / us['torchext-1']:.2f}", fmt(us["eager"]), fmt(us["compile"]),
                f"{us['eager'] / us['torchext']:.2f}×", f"{us['compile'] / us['torchext']:.2f}×",
                fmt(mine["gbps"]), f"{mine['copy_fraction']:.2f}"]) + " |")
    return lines


def _compile_table(cfg, idx) -> list[str]:
    lines = ["| op | dtype | " + " | ".join(f"n={n}" for n in cfg.sizes) + " |",
             "|---|---|" + "---:|" * len(cfg.sizes)]
    first = cfg.passes[0]
    for op in cfg.ops:
        for dtype in cfg.dtypes:
            secs = [idx[op, "compile", first, dtype, n]["compile_s"] for n in cfg.sizes]
            lines.append(f"| {op} | {dtype} | " + " | ".join(f"{s:.1f}" for s in secs) + " |")
    return lines


# ---- goals ---------------------------------------------------------------------------------------
# The project's targets (its benchmark issue; benchmarks/NOTES.md §3 keeps their history), checked
# on every run that measures their cells. Speed and memory: forward + backward, float32, on the
# CPU; bandwidth: float32 on a GPU, at the run's largest size. Beside each figure, what an op
# exactly as cheap as torch.neg (in time, or in memory: its output and gradient) would score: a
# goal that it misses too asks for an op cheaper than the simplest differentiable one. (It is a
# yardstick, not a bound: a fused op moving about neg's bytes lands a little either side of it.)
SPEEDUP_GOALS = (  # (op, n, versus, torchext at least this many times faster than versus)
    ("cubic", 2**20, "tutorial", 15),
    ("affine_legendre_p3", 2**20, "tutorial", 15),
    ("legendre_p3", 2**20, "tutorial", 8),
    ("relu", 2**20, "tutorial", 4),
    ("cubic", 2**20, "compile", 1.5),
    ("cubic", TUTORIAL_N, "tutorial", 2.5),
    ("legendre_p3", TUTORIAL_N, "tutorial", 2),
    ("affine_legendre_p3", TUTORIAL_N, "tutorial", 3),
    ("relu", TUTORIAL_N, "tutorial", 1.2),
)
NEG_GOAL = 1.5  # every op at every size: at most this many times torch.neg's time (CPU)
MEMORY_GOAL = (2**24, 0.5)  # at this n, peak memory at most this fraction of eager's (CPU)
BANDWIDTH_GOALS = {"fwd": 0.8, "bwd": 0.7}  # fraction of the copy's GB/s (GPU)


def n_text(n: int) -> str:
    """A size as the tables write it: 2^k for powers of two from 1024 on, else the number."""
    return f"2^{n.bit_length() - 1}" if n >= 1024 and n & (n - 1) == 0 else str(n)


def _goal(text, measured, as_neg, target, unit, higher_is_better=True) -> list[str]:
    """One row of the goals table: the goal, what this run measured, what an op as cheap as
    torch.neg would have (None where that means nothing) and a verdict."""
    reaches = (lambda v: v >= target) if higher_is_better else (lambda v: v <= target)
    verdict = ("met" if reaches(measured) else
               "missed, as by torch.neg" if as_neg is not None and not reaches(as_neg) else
               "missed")
    # Two decimals, rounded away from the goal, so that a figure shown as meeting it does.
    def fmt(v):
        v = (math.floor if higher_is_better else math.ceil)(round(v * 100, 6)) / 100
        return f"{v:.0%}" if unit == "%" else f"{v:.2f}{unit}"

    return [text, fmt(measured), "—" if as_neg is None else fmt(as_neg), verdict]


def _cell(idx, op, impl, n, pass_="fwdbwd"):
    """A float32 row of the run, or None where it was not measured."""
    return idx.get((op, impl, pass_, "float32", n))


def _speedup_goals(idx) -> list[list[str]]:
    rows = []
    for op, n, versus, times in SPEEDUP_GOALS:
        mine, theirs = _cell(idx, op, "torchext", n), _cell(idx, op, versus, n)
        neg = _cell(idx, "floor", "neg", n)
        if mine and theirs and neg:
            us = theirs["median_us"]
            text = f"{op}, n = {n_text(n)}: ≥ {times:g}× {versus}"
            rows.append(_goal(text, us / mine["median_us"], us / neg["median_us"], times, "×"))
    return rows


def _neg_goals(cfg, idx) -> list[list[str]]:
    rows = []
    for op in cfg.ops:
        ratios = [(_cell(idx, op, "torchext", n)["median_us"]
                   / _cell(idx, "floor", "neg", n)["median_us"], n)
                  for n in cfg.sizes if _cell(idx, op, "torchext", n)]
        if ratios:
            worst, n = max(ratios)
            text = f"{op}, every size: ≤ {NEG_GOAL:g}× torch.neg (worst: n = {n_text(n)})"
            rows.append(_goal(text, worst, None, NEG_GOAL, "×", higher_is_better=False))
    return rows


def _memory_goals(cfg, idx) -> list[list[str]]:
    n, fraction, rows = *MEMORY_GOAL, []
    for op in cfg.ops:
        mine, eager = _cell(idx, op, "torchext", n), _cell(idx, op, "eager", n)
        neg = _cell(idx, "floor", "neg", n)
        if mine and eager and neg:
            mine_, neg_ = (r["peak_mem_mb"] / eager["peak_mem_mb"] for r in (mine, neg))
            text = f"{op}, n = {n_text(n)}: peak memory ≤ {fraction:g} of eager's"
            rows.append(_goal(text, mine_, neg_, fraction, "", higher_is_better=False))
    return rows


def _bandwidth_goals(cfg, idx) -> list[list[str]]:
    n, rows = max(cfg.sizes), []
    for pass_, fraction in BANDWIDTH_GOALS.items():
        for op in cfg.ops:
            mine = _cell(idx, op, "torchext", n, pass_)
            if mine:
                text = f"{op} {PASS_TITLES[pass_]}, n = {n_text(n)}: ≥ {fraction:.0%} of copy"
                rows.append(_goal(text, mine["copy_fraction"], None, fraction, "%"))
    return rows


def _channel_goals(cfg, cidx) -> list[list[str]]:
    rows = []
    for dtype in cfg.dtypes:
        for op in _channel_ops(cfg):
            for case in cfg.channels:
                mine = cidx.get((op, "torchext", "fwdbwd", dtype, case))
                one = cidx.get((op, "torchext-1", "fwdbwd", dtype, case))
                if mine and one:
                    text = (f"{op} per channel, {case} {dtype}: ≤ {CHANNEL_GOAL:g}× one-element "
                            "coefficients")
                    rows.append(_goal(text, mine["median_us"] / one["median_us"], None,
                                      CHANNEL_GOAL, "×", higher_is_better=False))
    return rows


def _goal_rows(cfg, idx, cidx=None) -> list[list[str]]:
    """The goals of the run's device whose cells it measured."""
    channels = _channel_goals(cfg, cidx) if cidx else []
    if cfg.device == "cpu":
        return _speedup_goals(idx) + _neg_goals(cfg, idx) + _memory_goals(cfg, idx) + channels
    return _bandwidth_goals(cfg, idx) + channels


def _goals_section(rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    return ["## Goals", "",
            "The project's targets, for the cells this run measured. *as torch.neg*: what an "
            "op exactly as cheap as `torch.neg` would score (in time; in memory, its output and "
            "gradient). A goal that it misses too (*missed, as by torch.neg*) asks for an op "
            "cheaper than the simplest differentiable one; a fused op that moves about neg's "
            "bytes lands a little either side of it. At small n the ops with coefficients have "
            "a higher floor than `torch.neg`'s, the cost of five differentiable inputs: "
            "`benchmarks/overhead_floor.py` measures it (benchmarks/NOTES.md §6).", "",
            "| goal | measured | as torch.neg | |", "|---|---:|---:|---|",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _command(cfg, meta) -> str:
    """The command line that repeats this run."""
    lists = {"ops": cfg.ops, "sizes": cfg.sizes, "dtypes": cfg.dtypes, "passes": cfg.passes,
             "channels": list(cfg.channels) or ["none"]}
    args = " ".join(f"--{k} {','.join(map(str, v))}" for k, v in lists.items())
    return (f"python -m torchext bench --device {cfg.device} {args} --threads {meta['threads']} "
            f"--min-run-time {cfg.min_run_time} --rounds {cfg.rounds}"
            + f" --malloc {meta['malloc']}")


def _header(cfg, meta, load) -> list[str]:
    return [
        "# torchext benchmark", "",
        "| | |", "|---|---|",
        f"| machine | {platform.machine()}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()} |",
        f"| device | {cfg.device}: {meta['device_name']} |",
        f"| torch | {meta['torch']} |",
        f"| threads | {meta['threads']} |",
        f"| host memory | {MALLOC_NOTES[meta['malloc']]} |",
        f"| load average | {load[0]:.1f} at the start, {load[1]:.1f} at the end (1 minute; other "
        "processes competing for the cores make every time longer and noisier) |",
        f"| timing | for each op and pass, its contenders and the floors alternate blocks of "
        f"calls (about {BLOCK_SECONDS * 1e3:g} ms each, at least one call), until each has run "
        f"{cfg.min_run_time:g} s and {cfg.rounds} blocks; the median over a contender's blocks "
        "(interquartile ranges and block counts in results.csv) |",
        f"| command | `{_command(cfg, meta)}` |", "",
        "µs: median time per call. *vs X*: X's time / torchext's (above 1: torchext is faster). "
        "*neg/torchext*: `torch.neg`'s time for the same pass / torchext's (1: as cheap as the "
        "simplest differentiable op). GB/s counts the fewest bytes the pass must move (forward: x "
        "and y; backward: g, x and dx); *of copy*: the fraction of `y.copy_(x)`'s GB/s. "
        "tutorial: the pure-Python `autograd.Function`s; eager: the composite expression; "
        "compile: `torch.compile` of it (static shapes).", "",
    ]


def _write_markdown(cfg, meta, rows, path: Path, load: tuple[float, float]) -> None:
    idx, cidx = _index(rows), _channel_index(rows)
    lines = _header(cfg, meta, load) + _goals_section(_goal_rows(cfg, idx, cidx))
    for pass_ in sorted(cfg.passes, key=lambda p: p != "fwdbwd"):
        lines += [f"## {PASS_TITLES[pass_].capitalize()}", ""]
        for op in cfg.ops:
            for dtype in cfg.dtypes:
                lines += [f"### {op}, {dtype}", "", *_speed_table(cfg, idx, op, pass_, dtype), ""]
    if cfg.channels and _channel_ops(cfg):
        lines += ["## Per-channel coefficients", "",
                  "Every coefficient of the op per channel, on the x shown; *one-element*: "
                  "torchext with one-element coefficients on the same x (the goal: per channel "
                  f"costs at most {CHANNEL_GOAL:g} times that); eager: the broadcast expression.",
                  ""]
        for pass_ in sorted(cfg.passes, key=lambda p: p != "fwdbwd"):
            for dtype in cfg.dtypes:
                lines += [f"### {PASS_TITLES[pass_]}, {dtype}", "",
                          *_channel_table(cfg, cidx, pass_, dtype), ""]
    if "fwdbwd" in cfg.passes:
        lines += ["## Peak memory of one forward + backward (MB)", "",
                  "Allocated beyond the inputs (x, g, coefficients): outputs, saved tensors, "
                  "temporaries and gradients.", ""]
        for dtype in cfg.dtypes:
            lines += [f"### {dtype}", "", *_memory_table(cfg, idx, dtype), ""]
    lines += ["## torch.compile: first forward + backward call (s)", "",
              "Tracing and compiling for each size (static shapes); inductor's on-disk caches "
              "may shorten repeated runs.", "", *_compile_table(cfg, idx), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _plot(cfg, meta, rows, out: Path) -> list[Path]:
    """One PNG per (pass, dtype): a row of two panels (time, GB/s) per op."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx, paths = _index(rows), []
    for pass_ in cfg.passes:
        for dtype in cfg.dtypes:
            fig, axes = plt.subplots(len(cfg.ops), 2, figsize=(12, 1 + 3.4 * len(cfg.ops)),
                                     squeeze=False, layout="constrained")
            for op, (ax_t, ax_b) in zip(cfg.ops, axes, strict=True):
                _plot_op(cfg, idx, op, pass_, dtype, ax_t, ax_b)
            where = f"{meta['device_name']}, {meta['threads']} threads, torch {meta['torch']}"
            fig.suptitle(f"torchext bench: {PASS_TITLES[pass_]}, {dtype}, {cfg.device} ({where})")
            fig.legend(*axes[0, 1].get_legend_handles_labels(), loc="outside lower center",
                       ncols=6)
            paths.append(out / f"{pass_}-{dtype}.png")
            fig.savefig(paths[-1], dpi=90)
            plt.close(fig)
    return paths


def _plot_op(cfg, idx, op, pass_, dtype, ax_t, ax_b) -> None:
    ns = cfg.sizes
    lines = [(c, op, c, "-o") for c in CONTENDERS] + [("neg (floor)", "floor", "neg", "--")]
    for label, key_op, impl, style in lines:
        cells = [idx[key_op, impl, pass_, dtype, n] for n in ns]
        ax_t.plot(ns, [c["median_us"] for c in cells], style, label=label, ms=3)
        ax_b.plot(ns, [c["gbps"] for c in cells], style, label=label, ms=3)
    ax_b.plot(ns, [idx["floor", "copy", "copy", dtype, n]["gbps"] for n in ns], ":k",
              label="copy: y.copy_(x)")
    where = f"{op} ({pass_}, {dtype}, {cfg.device})"
    ax_t.set(title=f"{where}: time per call", ylabel="median µs (lower is better)")
    ax_b.set(title=f"{where}: bandwidth",
             ylabel=f"GB/s of {BYTES[pass_]}·n·itemsize bytes (higher is better)")
    for ax in (ax_t, ax_b):
        ax.set_xscale("log", base=2)
        ax.set(yscale="log", xlabel="n (elements of x)")
        ax.minorticks_off()  # they cost seconds per figure and add nothing
        ax.grid(True, alpha=0.3)


# ---- entry point ---------------------------------------------------------------------------------


def run(args) -> int:
    error = _cli.missing("matplotlib", "bench (its plots)")
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cfg = _settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Quiet the profiler's per-session log lines (used for CPU peak memory) unless asked for.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    malloc = keep_freed_memory() if args.malloc == "keep" else "system"
    meta = {"device": cfg.device, "device_name": _device_name(cfg.device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "malloc": malloc}
    cfg.out.mkdir(parents=True, exist_ok=True)
    cells = len(cfg.sizes) * len(cfg.ops) + len(cfg.channels) * len(_channel_ops(cfg))
    progress = _Progress(len(cfg.dtypes) * cells * len(cfg.passes))
    load = os.getloadavg()[0]
    try:
        rows = _measure(cfg, meta, progress)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, torch.OutOfMemoryError) and "allocate" not in str(e):
            raise
        progress.close()
        print(f"error: python -m torchext bench: out of memory on {cfg.device}; measure smaller "
              f"--sizes or --channels ({str(e).splitlines()[0]})", file=sys.stderr)
        return 1
    progress.close()
    _write_csv(rows, cfg.out / "results.csv")
    _write_markdown(cfg, meta, rows, cfg.out / "results.md", (load, os.getloadavg()[0]))
    pngs = _plot(cfg, meta, rows, cfg.out)
    print(f"wrote {cfg.out / 'results.csv'}, {cfg.out / 'results.md'} and {len(pngs)} plots")
    verdicts = [row[-1] for row in _goal_rows(cfg, _index(rows), _channel_index(rows))]
    if verdicts:
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
        print(f"goals: {counts} (results.md, section Goals)")
    return 0
