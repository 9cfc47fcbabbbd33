"""``python -m torchext bench``: a quick run end to end (CSV, markdown, plots), the defaults, and
argparse errors for bad options."""

import argparse
import csv
import math
import os
import platform
import subprocess
import sys
import time

import pytest
import torch
from conftest import CUDA_SKIP

from torchext import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_SIZES = (2**10, 2**14)
PROMISED = ("device", "torch", "op", "impl", "pass", "dtype", "n", "median_us", "gbps",
            "copy_fraction", "peak_mem_mb")


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m torchext bench")
    bench.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    pytest.importorskip("matplotlib")  # the bench extra's: the bench draws its plots
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [sys.executable, "-m", "torchext", "bench", "--quick", "--ops", "cubic", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        return out, reader.fieldnames, list(reader)


def one(rows, **where):
    found = [r for r in rows if all(r[k] == str(v) for k, v in where.items())]
    assert len(found) == 1, (where, len(found))
    return found[0]


@pytest.mark.slow
def test_quick_csv_has_every_contender_pass_and_floor(quick_run):
    _, columns, rows = quick_run
    assert set(PROMISED) <= set(columns)
    assert {r["device"] for r in rows} == {"cpu"}
    glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert {r["malloc"] for r in rows} == {"keep" if glibc else "system"}
    for n in QUICK_SIZES:
        for pass_ in bench.PASSES:
            for impl in bench.CONTENDERS:
                one(rows, op="cubic", impl=impl, dtype="float32", n=n, shape="",
                    **{"pass": pass_})
            one(rows, op="floor", impl="neg", dtype="float32", n=n, shape="", **{"pass": pass_})
        assert float(one(rows, impl="copy", n=n, shape="")["copy_fraction"]) == 1
    for case, (shape, _) in bench.QUICK_CHANNEL_CASES.items():
        for pass_ in bench.PASSES:
            for impl in bench.CHANNEL_CONTENDERS:
                one(rows, op="cubic", impl=impl, dtype="float32", n=math.prod(shape), shape=case,
                    **{"pass": pass_})
        assert float(one(rows, impl="copy", shape=case)["copy_fraction"]) == 1
    cells = len(QUICK_SIZES) * (1 + len(bench.PASSES) * (1 + len(bench.CONTENDERS)))
    cells += len(bench.QUICK_CHANNEL_CASES) * (
        1 + len(bench.PASSES) * (1 + len(bench.CHANNEL_CONTENDERS)))
    assert len(rows) == cells


@pytest.mark.slow
def test_quick_numbers_are_positive_and_finite(quick_run):
    _, _, rows = quick_run
    for r in rows:
        for column in ("median_us", "gbps", "copy_fraction"):
            assert 0 < float(r[column]) < math.inf, (column, r)
        assert int(r["blocks"]) >= bench.QUICK["rounds"], r  # a block per turn at least


@pytest.mark.slow
def test_quick_peak_memory_holds_output_and_gradient(quick_run):
    # During forward+backward y and dx are alive at once: at least 2 * n * 4 bytes beyond inputs.
    _, _, rows = quick_run
    for r in rows:
        if r["pass"] == "fwdbwd":
            assert float(r["peak_mem_mb"]) >= 2 * int(r["n"]) * 4 / 2**20, r
        else:
            assert r["peak_mem_mb"] == "", r
        assert (r["compile_s"] != "") == (r["impl"] == "compile"), r


@pytest.mark.slow
def test_quick_writes_markdown_and_plots(quick_run):
    out, _, rows = quick_run
    md = (out / "results.md").read_text()
    for text in (rows[0]["torch"], rows[0]["device_name"], "threads", "### cubic, float32",
                 "vs tutorial", "neg/torchext", "Peak memory", "torch.compile", "## Goals",
                 "| cubic, every size: ≤ 1.5× torch.neg", "## Per-channel coefficients",
                 "| cubic | 4x16x32 | (32,) |", "| cubic per channel, 4x16x32 float32: ≤ 1.3×"):
        assert text in md
    for pass_ in bench.PASSES:
        png = out / f"{pass_}-float32.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_it_fails_before_timing(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setattr(bench, "_measure", lambda *args: pytest.fail("timed without matplotlib"))
    assert bench.run(parse(["--quick", "--out", str(tmp_path)])) == 2
    assert capsys.readouterr().err == (
        "error: bench (its plots) needs matplotlib: pip install matplotlib (or torchext[bench])\n")
    assert list(tmp_path.iterdir()) == []


def test_out_of_memory_is_an_error_not_a_traceback(monkeypatch, capsys, tmp_path):
    """A size that does not fit (as a CPU allocator says it: RuntimeError "can't allocate
    memory") ends the run with a message naming the options to change, exit status 1."""
    pytest.importorskip("matplotlib")  # without it the run stops before measuring (exit 2)
    def measure(*args):
        torch.empty(2**62, dtype=torch.uint8)  # asks the allocator for 4 EiB: refused

    monkeypatch.setattr(bench, "_measure", measure)
    assert bench.run(parse(["--quick", "--out", str(tmp_path)])) == 1
    err = capsys.readouterr().err
    assert "error: python -m torchext bench: out of memory on cpu" in err, err
    assert "--sizes" in err and "allocate" in err


def test_contenders_alternate_block_by_block(monkeypatch):
    # After a warm-up of each, the statements alternate a block at a time, in reversed order every
    # other pass, until each has run min_run_time and `rounds` blocks; each time is one block's.
    # Blocks of one call each (a block's length is a call's, calibrated by the warm-up, which a
    # busy machine may stretch): the calls are then the blocks, in order.
    monkeypatch.setattr(bench, "BLOCK_SECONDS", 1e-12)
    calls = []
    stmts = {key: (lambda key=key: calls.append(key)) for key in ("a", "b", "c")}
    times = bench._time_rounds(stmts, min_run_time=0.0, rounds=4)
    assert calls[:9] == list("aaabbbccc")  # the warm-up, three calls each
    assert calls[9:] == list("abc" "cba" "abc" "cba")
    assert {key: len(t) for key, t in times.items()} == dict.fromkeys(stmts, 4)
    assert all(min(t) > 0 for t in times.values())


def test_a_slow_contender_sits_out_once_timed():
    # A statement that has run min_run_time takes no more blocks: the fast ones go on alone.
    calls = []
    stmts = {"slow": lambda: (time.sleep(0.005), calls.append("slow")),
             "fast": lambda: calls.append("fast")}
    times = bench._time_rounds(stmts, min_run_time=0.01, rounds=2)
    assert len(times["slow"]) < len(times["fast"])
    assert calls.count("slow") == 3 + len(times["slow"])  # the warm-up, then one call a block
    assert calls[-1] == "fast"


FAULTS_ONCE_SETTLED = """
import resource, sys, torch
from torchext import bench
print(bench.keep_freed_memory() if sys.argv[1] == "keep" else "system")
for _ in range(12):  # 64 MB each, freed at once: malloc's heap settles
    torch.ones(2**24)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.ones(2**24)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow  # two subprocesses, 640 MB each: 6 s
@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="the bench sets glibc's malloc only")
def test_kept_memory_is_reused_without_page_faults():
    # With glibc's defaults a 64 MB block is mmapped and unmapped: each new allocation faults its
    # pages in again. --malloc keep (the default) makes malloc keep them: once its heap has
    # settled (it can take a few allocations of the same size), allocations reuse mapped pages.
    faults = {}
    for mode in ("keep", "system"):
        result = subprocess.run([sys.executable, "-c", FAULTS_ONCE_SETTLED, mode],
                                capture_output=True, text=True, timeout=120, check=True)
        reported, count = result.stdout.split()
        assert reported == mode
        faults[mode] = int(count)
    pages = 8 * 2**24 * 4 // 4096
    assert faults["keep"] < pages // 100 and faults["keep"] < faults["system"], faults


def test_default_sizes_include_the_tutorials():
    cpu = bench._settings(parse([])).sizes
    assert cpu == sorted([2**k for k in range(10, 25, 2)] + [2000])
    quick = bench._settings(parse(["--quick"]))
    assert (quick.sizes, quick.dtypes) == (list(QUICK_SIZES), ["float32"])
    rounds = bench._settings(parse([])).rounds, quick.rounds
    assert rounds == (bench.ROUNDS, bench.QUICK["rounds"])
    assert bench._settings(parse(["--quick", "--sizes", "2000,2^3", "--sizes", "5"])).sizes == [
        5, 8, 2000
    ]


def test_channel_goal_compares_with_one_element_coefficients():
    # Per channel at most 1.3x the one-element time on the same x (forward + backward).
    rows = [dict(timing("cubic", impl, 4096, us), shape=case)
            for impl, us, case in (("torchext", 125, "a"), ("torchext-1", 100, "a"),
                                   ("torchext", 140, "b"), ("torchext-1", 100, "b"))]
    cfg = argparse.Namespace(device="cpu", ops=["cubic"], sizes=[], dtypes=["float32"],
                             channels={"a": None, "b": None})
    goals = {text: rest for text, *rest in bench._goal_rows(cfg, {}, bench._channel_index(rows))}
    assert goals == {
        "cubic per channel, a float32: ≤ 1.3× one-element coefficients": ["1.25×", "—", "met"],
        "cubic per channel, b float32: ≤ 1.3× one-element coefficients": ["1.40×", "—", "missed"],
    }


def test_memory_is_kept_unless_asked_otherwise():
    assert parse([]).malloc == "keep"
    assert parse(["--malloc", "system"]).malloc == "system"


def timing(op, impl, n, us, pass_="fwdbwd", **extra):
    return dict(op=op, impl=impl, n=n, dtype="float32", median_us=us, **{"pass": pass_}, **extra)


def test_goals_say_met_missed_or_missed_as_by_neg():
    # A goal is met, or missed; and where an op exactly as cheap as torch.neg (its time; its
    # memory) would miss it too, the verdict says so. Figures are rounded away from the goal.
    rows = [
        timing("cubic", "torchext", 2**20, 100), timing("cubic", "tutorial", 2**20, 1600),
        timing("cubic", "compile", 2**20, 120), timing("floor", "neg", 2**20, 90),
        timing("cubic", "torchext", 2000, 100), timing("cubic", "tutorial", 2000, 200),
        timing("floor", "neg", 2000, 50),
        timing("cubic", "torchext", 2**24, 1000, peak_mem_mb=128),
        timing("cubic", "eager", 2**24, 3000, peak_mem_mb=384),
        timing("floor", "neg", 2**24, 999, peak_mem_mb=160),
        timing("relu", "torchext", 2**24, 1000, peak_mem_mb=128),
        timing("relu", "eager", 2**24, 1000, peak_mem_mb=128),
    ]
    cfg = argparse.Namespace(device="cpu", ops=["cubic", "relu"], sizes=[2000, 2**20, 2**24])
    idx = bench._index(rows)
    goals = {text: rest for text, *rest in bench._goal_rows(cfg, idx)}
    assert goals == {
        "cubic, n = 2^20: ≥ 15× tutorial": ["16.00×", "17.77×", "met"],
        "cubic, n = 2^20: ≥ 1.5× compile": ["1.20×", "1.33×", "missed, as by torch.neg"],
        "cubic, n = 2000: ≥ 2.5× tutorial": ["2.00×", "4.00×", "missed"],
        "cubic, every size: ≤ 1.5× torch.neg (worst: n = 2000)": ["2.00×", "—", "missed"],
        "relu, every size: ≤ 1.5× torch.neg (worst: n = 2^24)": ["1.01×", "—", "met"],
        "cubic, n = 2^24: peak memory ≤ 0.5 of eager's": ["0.34", "0.42", "met"],
        "relu, n = 2^24: peak memory ≤ 0.5 of eager's": ["1.00", "1.25", "missed, as by torch.neg"],
    }
    section = "\n".join(bench._goals_section(bench._goal_rows(cfg, idx)))
    assert "| cubic, n = 2^20: ≥ 15× tutorial | 16.00× | 17.77× | met |" in section
    assert bench._goals_section([]) == []  # no goal cell measured: no section

    # On a GPU: the bandwidth goals, at the run's largest size only.
    fwd = [timing("cubic", "torchext", 2**10, 1, "fwd", copy_fraction=0.1),
           timing("cubic", "torchext", 2**28, 1, "fwd", copy_fraction=0.85)]
    bwd = [timing("cubic", "torchext", 2**28, 1, "bwd", copy_fraction=0.6999)]
    cuda = argparse.Namespace(device="cuda", ops=["cubic"], sizes=[2**10, 2**28])
    assert bench._goal_rows(cuda, bench._index(fwd + bwd)) == [
        ["cubic forward, n = 2^28: ≥ 80% of copy", "85%", "—", "met"],
        ["cubic backward, n = 2^28: ≥ 70% of copy", "69%", "—", "missed"],
    ]


def test_ops_and_passes_accept_lists_and_repeats():
    cfg = bench._settings(parse(["--ops", "relu,cubic", "--ops", "relu", "--passes", "bwd"]))
    assert (cfg.ops, cfg.passes) == (["relu", "cubic"], ["bwd"])


BAD = [
    ["--device", "tpu"],
    ["--sizes", "abc"],
    ["--sizes", "2^x"],
    ["--sizes", "0"],
    ["--sizes", "2^99"],
    ["--ops", "cubic,sine"],
    ["--dtypes", "int32"],
    ["--passes", "sideways"],
    ["--threads", "0"],
    ["--min-run-time", "-1"],
    ["--rounds", "0"],
    ["--malloc", "jemalloc"],
]


@pytest.mark.parametrize("argv", BAD, ids=" ".join)
def test_bad_options_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and argv[0] in err


@pytest.mark.skipif(CUDA_SKIP is None, reason="CUDA is available here")
def test_cuda_without_a_gpu_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["--device", "cuda"])
    assert exit_.value.code == 2
    assert "CUDA" in capsys.readouterr().err


def test_readme_quotes_the_committed_run():
    """The README's Performance table is what benchmarks/readme_table.py makes of the committed
    results.csv: a rerun that forgets the README fails here."""
    results = os.path.join(ROOT, "benchmarks", "results", "cpu", "results.csv")
    if not os.path.exists(results):
        pytest.skip("needs the repository's benchmarks/ (the sdist carries no results)")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import readme_table
    finally:
        sys.path.pop(0)
    want = readme_table.table(results)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read().splitlines()
    start = readme.index(want[0])
    assert readme[start:start + len(want)] == want
    assert not readme[start + len(want)].startswith("|")  # no rows beyond the run's
