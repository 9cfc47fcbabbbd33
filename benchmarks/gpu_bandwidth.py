"""Device-memory bandwidth of every torchext op, forward and backward, beside ``y.copy_(x)``,
``torch.neg`` (one read, one write: the forward's bytes) and ``torch.mul`` (two reads, one write:
the backward's), measured in the same run, interleaved, with CUDA events.

    python benchmarks/gpu_bandwidth.py --out OUT              # float32, bfloat16; 2^24..2^28
    python benchmarks/gpu_bandwidth.py --device cpu --sizes 2^10 --out OUT   # a smoke run

Per (dtype, n) cell every contender takes ``--rounds`` turns (after one warm-up turn); a turn
times ``k`` back-to-back calls between two CUDA events, ``k`` sized for ~2 ms of copy traffic,
behind a short ``torch.cuda._sleep`` so that the host has queued the calls before the first one
starts (the times are the GPU's, not the Python overhead's). A contender's time is the median
over its turns. Cells run from the most telling down: float32 at the largest n first (the goals),
then the other dtypes, one misaligned cell (x = base[1:], g too: the scalar path), then smaller n.
Rows go to ``OUT/gpu_bandwidth.csv`` as each cell ends (flushed); ``OUT/gpu_bandwidth.md``, the
goals of issue 17 and the table, is written at the end, also when interrupted (Ctrl-C / SIGINT).

Bytes counted: forward 2·n·itemsize (read x, write y), backward 3·n·itemsize (read g and x,
write dx; the coefficient sums stay on chip), copy and neg 2, mul 3. The forward calls the op
with its coefficients as 0-dim float32 tensors; the backward calls the backward operator.
Columns: op (``floor`` for copy, neg and mul), impl (torchext, copy, neg, mul), pass (fwd, bwd,
copy), dtype, n, aligned, median_us, gbps, copy_fraction (of the copy's GB/s in the same cell).

Estimated GPU time on an H200 (~4.3 TB/s): every turn moves ~2 ms of copy traffic, so a cell
is 11 contenders x 11 turns x ~2 ms plus the sleeps, ~0.5 s, and the 7 cells of the default run
~4 s; with start-up and filling the inputs, ~15 s.
"""

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

import gpu_cases
import torch

COLUMNS = ("op", "impl", "pass", "dtype", "n", "aligned", "median_us", "gbps", "copy_fraction")
BYTES = {"fwd": 2, "bwd": 3, "copy": 2}
GOALS = {"fwd": ("neg", 0.90), "bwd": ("mul", 0.85)}  # pass -> (peer, fraction of copy)
TURN_BYTES = 2e-3 * 4.3e12  # ~2 ms of an H200's copy bandwidth per turn
SLEEP_CYCLES_PER_CALL = 60_000  # 30 µs at 2 GHz: longer than the host takes to queue a call


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSV and markdown")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (default); cpu: a smoke run timed with perf_counter")
    parser.add_argument("--sizes", default="2^28,2^26,2^24",
                        help="comma list, largest first (default 2^28,2^26,2^24)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="default float32,bfloat16")
    parser.add_argument("--rounds", type=int, default=10, help="timed turns per contender")
    args = parser.parse_args(argv)
    args.sizes = sorted({gpu_cases.size(s) for s in args.sizes.split(",")}, reverse=True)
    args.dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible to torch (use --device cpu for a smoke run)")
    return args


def contenders(dtype, n: int, aligned: bool, device: str) -> dict:
    """{(op, impl, pass): a call}, the floors first."""
    offset = 0 if aligned else 1
    gen = torch.Generator(device).manual_seed(n)
    x, g = (torch.randn(n + offset, generator=gen, device=device, dtype=dtype)[offset:]
            for _ in range(2))
    out = torch.empty_like(x)
    calls = {
        ("floor", "copy", "copy"): lambda: out.copy_(x),
        ("floor", "neg", "fwd"): lambda: torch.neg(x),
        ("floor", "mul", "bwd"): lambda: torch.mul(g, x),
    }
    for op, n_coefs in gpu_cases.ops().items():
        cs = [torch.full((), v, device=device) for v in (0.5, -1.25, 0.75, 0.3)[:n_coefs]]
        fwd, bwd = gpu_cases.function(op), gpu_cases.backward_operator(op)
        calls[op, "torchext", "fwd"] = lambda fwd=fwd, cs=cs: fwd(x, *cs)
        calls[op, "torchext", "bwd"] = lambda bwd=bwd, cs=cs: bwd(g, x, *cs)
    return calls


def time_turn(call, k: int, device: str) -> float:
    """Seconds per call, over k back-to-back calls."""
    if device == "cpu":
        start = time.perf_counter()
        for _ in range(k):
            call()
        return (time.perf_counter() - start) / k
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(SLEEP_CYCLES_PER_CALL * k)
    begin.record()
    for _ in range(k):
        call()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3 / k


def measure_cell(dtype, n: int, aligned: bool, args) -> list[dict]:
    calls = contenders(dtype, n, aligned, args.device)
    k = max(3, min(50, math.ceil(TURN_BYTES / (2 * n * dtype.itemsize))))
    times = {key: [] for key in calls}
    for turn in range(args.rounds + 1):  # turn 0 warms up
        for key, call in calls.items():
            t = time_turn(call, k, args.device)
            if turn:
                times[key].append(t)

    def gbps(pass_, ts):
        return BYTES[pass_] * n * dtype.itemsize / statistics.median(ts) / 1e9

    copy_gbps = gbps("copy", times["floor", "copy", "copy"])
    rows = []
    for (op, impl, pass_), ts in times.items():
        median = statistics.median(ts)
        rows.append(dict(op=op, impl=impl, dtype=str(dtype).removeprefix("torch."), n=n,
                         aligned=aligned, median_us=median * 1e6, gbps=gbps(pass_, ts),
                         copy_fraction=gbps(pass_, ts) / copy_gbps, **{"pass": pass_}))
    return rows


def cells(args):
    """(dtype, n, aligned) from the most telling down."""
    middle = args.sizes[len(args.sizes) // 2]
    first = [(d, args.sizes[0], True) for d in args.dtypes]
    rest = [(d, n, True) for n in args.sizes[1:] for d in args.dtypes]
    return first + [(args.dtypes[0], middle, False)] + rest


def _row_text(r):
    return {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()}


def goals_markdown(rows, device_name: str) -> list[str]:
    """The goals of issue 17 at float32 and the largest aligned n measured, then every row."""
    lines = [f"# GPU bandwidth: {device_name}, torch {torch.__version__}", ""]
    f32 = [r for r in rows if r["dtype"] == "float32" and r["aligned"]]
    if f32:
        n = max(r["n"] for r in f32)
        idx = {(r["op"], r["impl"], r["pass"]): r for r in f32 if r["n"] == n}
        note = "" if n == 2**28 else f" (the goals are set at 2^28; this run's largest is {n})"
        lines += [f"## Goals: float32, n = {n}{note}", "",
                  "| op | pass | GB/s | of copy | peer | peer of copy | goal | verdict |",
                  "|---|---|---:|---:|---|---:|---|---|"]
        for (op, impl, pass_), r in idx.items():
            if impl != "torchext":
                continue
            peer_name, least = GOALS[pass_]
            peer = idx.get(("floor", peer_name, pass_))
            if peer is None:
                continue
            target = max(least, peer["copy_fraction"])
            verdict = "met" if r["copy_fraction"] >= target else "missed"
            lines.append(f"| {op} | {pass_} | {r['gbps']:.0f} | {r['copy_fraction']:.1%} | "
                         f"{peer_name} | {peer['copy_fraction']:.1%} | ≥ {peer_name}'s and "
                         f"≥ {least:.0%} | {verdict} |")
        lines.append("")
    lines += ["## All cells", "", "| " + " | ".join(COLUMNS) + " |",
              "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(_row_text(r)[c]) for c in COLUMNS) + " |" for r in rows]
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (smoke run)"
    rows, interrupted = [], False
    start = time.perf_counter()
    with open(args.out / "gpu_bandwidth.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        f.flush()
        try:
            for dtype, n, aligned in cells(args):
                cell = measure_cell(dtype, n, aligned, args)
                writer.writerows(_row_text(r) for r in cell)
                f.flush()
                rows += cell
                print(f"{str(dtype).removeprefix('torch.')} n={n} aligned={aligned}: "
                      f"{len(cell)} rows ({time.perf_counter() - start:.1f} s)")
        except KeyboardInterrupt:
            interrupted = True
    md = goals_markdown(rows, name)
    (args.out / "gpu_bandwidth.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[: md.index("## All cells")]))
    missed = sum("| missed |" in line for line in md)
    print(f"gpu_bandwidth: {len(rows)} rows{' (interrupted)' if interrupted else ''}, "
          f"{missed} goals missed, {time.perf_counter() - start:.1f} s")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
