"""The command line: ``python -m torchext {demo,info,bench}``.

The subcommands are run in-process through their own ``add_arguments``/``run`` (fast, and
independent of the other subcommands' modules); ``--help`` and one ``info`` go through
``python -m torchext`` in a subprocess, end to end. The tutorial programs' results themselves
(reference vs torchext) are checked in test_tutorial.py.
"""

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import types

import pytest
import torch
from conftest import CUDA_SKIP

import torchext
from torchext import demo, info
from torchext.__main__ import COMMANDS

# The directory that holds the torchext under test: this checkout, built in place, or the
# site-packages a wheel went into (the sdist's tests run so in CI). The subprocesses run there
# with it on their path: from a source tree whose torchext is not built, `python -m` would take
# that one (the working directory comes first on sys.path).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(torchext.__file__)))


def python_m_torchext(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80"}  # argparse wraps help to the terminal's width
    return subprocess.run([sys.executable, "-m", "torchext", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def parse(module, argv):
    name = module.__name__.rsplit(".", 1)[1]
    parser = argparse.ArgumentParser(prog=f"python -m torchext {name}")
    module.add_arguments(parser)
    return parser.parse_args(argv)


def run_in_process(module, argv):
    """(exit code, stdout, stderr) of ``python -m torchext <module> argv``, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = module.run(parse(module, argv))
    return code, out.getvalue(), err.getvalue()


# ---- python -m torchext --help -------------------------------------------------------------------


def test_help_lists_every_command_with_one_line():
    # In an 80-column terminal each command's help must fit the 57 columns that argparse leaves it.
    result = python_m_torchext("--help")
    assert result.returncode == 0, result.stderr
    for name, (_, help_) in COMMANDS.items():
        lines = [line for line in result.stdout.splitlines() if re.match(rf"\s+{name}\s", line)]
        assert len(lines) == 1, (name, result.stdout)
        assert help_ in lines[0]


def imported_by(tmp_path, *command: str) -> set[str]:
    """The modules loaded when ``python COMMAND`` exits (a sitecustomize.py prints them)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, sys\n"
        "atexit.register(lambda: print('MODULES', *sorted(sys.modules), file=sys.stderr))\n")
    # The torchext under test, for the script too.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}
    result = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stderr.rsplit("MODULES ", 1)[1].split())


# pip's console script for [project.scripts] torchext = "torchext.__main__:main", as it writes it.
SCRIPT = """import sys
from torchext.__main__ import main
if __name__ == "__main__":
    sys.exit(main())
"""
INSTALLED_SCRIPT = os.path.join(os.path.dirname(sys.executable), "torchext")


def test_help_imports_no_torch(tmp_path):
    # torch takes seconds to import; --help must not wait for it (torchext/__init__.py defers it).
    imported = imported_by(tmp_path, "-m", "torchext", "--help")
    assert "torchext" in imported and "torch" not in imported


def test_script_help_imports_no_torch(tmp_path):
    script = tmp_path / "torchext"
    script.write_text(SCRIPT)
    assert "torch" not in imported_by(tmp_path, str(script), "--help")


@pytest.mark.skipif(not os.path.exists(INSTALLED_SCRIPT),
                    reason="the torchext script is not installed beside this Python (pip install)")
def test_installed_script_help_imports_no_torch(tmp_path):
    assert "torch" not in imported_by(tmp_path, INSTALLED_SCRIPT, "--help")


def test_subcommand_help_imports_only_its_module(tmp_path):
    imported = imported_by(tmp_path, "-m", "torchext", "bench", "--help")
    assert {"torch", "torchext.bench", "torchext.functional"} <= imported
    assert not {"torchext.demo", "torchext.info"} & imported


def test_shared_options_are_spelled_alike():
    # An option that several subcommands take has one metavar everywhere (--threads N, --device
    # DEVICE ...), and every option that takes a value names it (no argparse default like
    # MIN_RUN_TIME).
    metavars = {}
    for name, (module, _) in COMMANDS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(module).add_arguments(parser)
        for action in parser._actions:
            if action.option_strings and action.nargs != 0 and not action.choices:
                assert action.metavar, (name, action.option_strings)
                for option in action.option_strings:
                    metavars.setdefault(option, set()).add(action.metavar)
    assert {"--threads", "--device"} <= set(metavars)
    assert {option: m for option, m in metavars.items() if len(m) > 1} == {}


def test_a_build_for_another_torch_is_an_error_not_a_traceback(tmp_path):
    # The subcommand says what is wrong and what to do (torchext/__init__.py), in one message.
    script = tmp_path / "torchext"
    script.write_text("import sys, types\n"
                      "sys.modules['torchext._build_info'] = types.SimpleNamespace(\n"
                      "    TORCH_VERSION='1.13.0+cpu', TORCH_CUDA=None, DEBUG=False)\n" + SCRIPT)
    result = subprocess.run([sys.executable, str(script), "info"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: torchext's compiled kernels (torchext/_C) cannot be "
                                    "loaded: they were built against torch 1.13.0+cpu")
    assert "pip install --no-build-isolation -e ." in result.stderr
    assert "Traceback" not in result.stderr


# ---- demo ----------------------------------------------------------------------------------------


HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    # One thread: on a busy 2-core machine the two-layer net's matmuls can be 100x slower on two.
    png = tmp_path_factory.mktemp("demo") / "demo.png"
    threads = torch.get_num_threads()
    argv = ["--quick", "--device", "cpu", "--threads", "1"]
    argv += ["--plot", str(png)] if HAVE_MATPLOTLIB else []  # optional: the bench extra's
    code, out, err = run_in_process(demo, argv)
    assert torch.get_num_threads() == threads  # restored
    return code, out, err, png


def test_demo_quick_prints_a_table_per_program(quick_demo):
    code, out, _, _ = quick_demo
    assert code == 0
    for program in demo.programs():
        steps = demo.program_steps(program, demo.QUICK_STEPS)
        title = f"{program.key}. {program.title}   ({steps} steps, cpu, float32)"
        assert title in out
        table = out.split(title, 1)[1].split("\n\n", 1)[0]
        header = table.splitlines()[1]
        for column in ("version", "final loss", *program.coefficient_names, "time", "speedup"):
            assert column in header
        for version, _ in program.versions:
            row = next(line for line in table.splitlines() if line.startswith(version))
            # final loss, the coefficients, time "0.123 s", speedup "1.00x"
            assert re.search(r"\d+\.\d{3} s\s+\d+\.\d\dx", row), row
    assert "speedup: the reference's time / this version's" in out


def test_demo_shows_progress_on_stderr(quick_demo):
    _, out, err, _ = quick_demo
    lines = err.splitlines()
    assert len(lines) == sum(len(p.versions) for p in demo.programs())
    assert all(re.search(r"steps \.\.\. \d+\.\d+ s$", line) for line in lines), err
    assert "steps ..." not in out


def test_demo_plot_writes_a_png(quick_demo):
    pytest.importorskip("matplotlib")
    _, out, _, png = quick_demo
    assert f"plot written to {png}" in out
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 20_000


def test_demo_plot_without_matplotlib_fails_before_running(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setattr(demo, "_run", lambda args: pytest.fail("ran without matplotlib"))
    code, out, err = run_in_process(demo, ["--plot", "demo.png"])
    assert code == 2 and out == ""
    assert err == "error: --plot needs matplotlib: pip install matplotlib (or torchext[bench])\n"


@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
def test_demo_on_cuda():
    code, out, _ = run_in_process(demo, ["--device", "cuda", "--steps", "8"])
    assert code == 0
    assert out.count("steps, cuda, float32)") == len(demo.programs())


def test_demo_defaults_and_step_counts():
    args = parse(demo, [])
    assert (args.dtype, args.seed, args.plot, args.device, args.threads) == (
        "float32", 0, None, None, None)
    assert demo.step_count(args) == demo.STEPS == 2000
    assert demo.step_count(parse(demo, ["--quick"])) == demo.QUICK_STEPS
    assert demo.step_count(parse(demo, ["--quick", "--steps", "40"])) == 40
    net = next(p for p in demo.programs() if p.net)
    fit = next(p for p in demo.programs() if not p.net)
    assert (demo.program_steps(fit, 2000), demo.program_steps(net, 2000)) == (2000, 500)
    assert demo.program_steps(net, 3) == 2
    assert parse(demo, ["--device", "cpu", "--dtype", "float64"]).dtype == "float64"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "-5"], "--steps: must be an integer >= 2"),
        (["--steps", "many"], "--steps: must be an integer >= 2"),
        (["--device", "tpu"], "--device: must be cpu or cuda"),
        (["--dtype", "int8"], "--dtype: invalid choice: 'int8'"),
        (["--seed", "x"], "--seed: invalid int value"),
        (["--threads", "0"], "--threads: must be a positive integer"),
        (["--plot", "/no/such/folder/demo.png"], "--plot: folder '/no/such/folder' does not exist"),
    ],
)
def test_demo_bad_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(demo, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err and "Traceback" not in err


@pytest.mark.skipif(CUDA_SKIP is None, reason="CUDA is usable here")
def test_demo_device_cuda_without_cuda_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(demo, ["--device", "cuda"])
    assert exit_.value.code == 2
    assert "--device:" in capsys.readouterr().err


# ---- info ----------------------------------------------------------------------------------------


def test_info_reports_and_passes():
    code, out, _ = run_in_process(info, [])
    assert code == 0, out
    assert f"torchext {torchext.__version__}" in out
    assert f"torch {torch.__version__}" in out
    assert f"Python {sys.version.split()[0]}" in out
    assert torch.ops.torchext._build_info() in out
    assert re.search(r"CUDA architectures: \S", out) and re.search(r"OpenMP: (on|OFF)", out)
    for op in info.OPERATORS:  # CPU kernels are always built
        assert re.search(rf"^  {op}\s+yes\s+(yes|no)$", out, re.M), op
    assert "cpu: " in out and ("cuda: none" in out or "cuda:0: " in out)
    assert f"torch.get_num_threads(): {torch.get_num_threads()}" in out
    assert re.search(r"torchext parallel_for used: \d+ thread", out)
    devices, _ = info.self_check_devices()
    for device in devices:
        for name in info.CHECKS:
            passed = re.findall(rf"^  {name}\s+{device}\s+PASS", out, re.M)
            assert len(passed) == len(info.check_cases(name)), (name, device)
    for case in info.CHECK_CASES:  # one-element and per-channel coefficients, each tiling
        assert re.search(rf"^  cubic\s+cpu\s+PASS  x {re.escape(str(case[0]))}\s+"
                         rf"coefficients {re.escape(str(case[1]))} ", out, re.M), case
    n = len(devices) * sum(len(info.check_cases(name)) for name in info.CHECKS)
    assert f"{n} of {n} checks passed" in out and "FAIL" not in out


def _wrong_forward(x):
    return torchext.legendre_p3(x) * 1.001  # off by 1e-3: above the tolerance, still caught


def _wrong_backward(x, a, b, c, d):
    return torchext.cubic(x.detach(), a, b, c, d) + 0 * x  # right values, dx = 0


def _raises(x):
    raise RuntimeError("torchext.relu: kernel exploded")


def _wrong_per_channel(x, a, b, c, d):  # right with one-element coefficients only
    return torchext.affine_legendre_p3(x, a.mean() if a.dim() else a, b, c, d)


@pytest.mark.parametrize(
    "op, function, reason, failing",
    [
        ("legendre_p3", _wrong_forward, r"forward off by 1\.0e-03", 1),
        ("cubic", _wrong_backward, r"dx off by", len(info.CHECK_CASES)),
        ("relu", _raises, r"raised RuntimeError: torchext.relu: kernel exploded", 1),
        ("affine_legendre_p3", _wrong_per_channel, r"forward off by",
         len(info.CHECK_CASES) - 1),
    ],
)
def test_info_fails_when_a_kernel_is_broken(monkeypatch, op, function, reason, failing):
    broken = info.Check(function, info.CHECKS[op].reference, info.CHECKS[op].coefficients)
    monkeypatch.setitem(info.CHECKS, op, broken)
    code, out, _ = run_in_process(info, [])
    assert code != 0
    fail = [line for line in out.splitlines() if re.match(rf"  {op}\s+cpu\s+FAIL", line)]
    assert len(fail) == failing and all(re.search(reason, line) for line in fail), out
    others = [name for name in info.CHECKS if name != op]
    assert all(re.search(rf"^  {name}\s+cpu\s+PASS", out, re.M) for name in others), out
    assert "FAILED" in out.splitlines()[-1]


@pytest.mark.skipif(info.has_kernel("cubic", "CUDA"), reason="torchext has CUDA kernels here")
def test_info_gpu_without_cuda_kernels_is_reported_and_skipped(monkeypatch):
    """A GPU that a CPU-only build cannot use: shown, and left out of the self-check, not failed."""
    gpu = types.SimpleNamespace(name="Fake GPU", major=9, minor=0, total_memory=80 * 2**30,
                                multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: gpu)
    code, out, _ = run_in_process(info, [])
    assert code == 0, out
    assert "cuda:0: Fake GPU, capability 9.0, 80.0 GiB, 132 SMs" in out
    assert "cuda:0: SKIP (torchext was built without CUDA kernels)" in out


@pytest.mark.parametrize(
    "raw, fields",
    [
        ("cuda_archs=8.0;9.0+PTX;openmp=1;cpu_isa=avx2",
         {"cuda_archs": "8.0;9.0+PTX", "openmp": "1", "cpu_isa": "avx2"}),
        ("cuda_archs=;openmp=0", {"cuda_archs": "", "openmp": "0"}),
        ("something else", {}),
    ],
)
def test_info_build_info_fields(monkeypatch, raw, fields):
    monkeypatch.setattr(torch.ops.torchext, "_build_info", lambda: raw)
    assert info.build_info() == {"raw": raw, **fields}


@pytest.mark.parametrize(
    "capability, archs, expected",
    [
        ((9, 0), "8.0;9.0+PTX", "yes (sm_90 binary)"),
        ((8, 6), "8.0;9.0+PTX", "yes (sm_80 binary)"),
        ((10, 0), "8.0;9.0+PTX", "yes (PTX 9.0"),
        ((7, 5), "8.0;9.0+PTX", "NO: rebuild with TORCH_CUDA_ARCH_LIST=7.5"),
        ((9, 0), "9.0a", "yes (sm_90 binary)"),
    ],
)
def test_info_arch_support(capability, archs, expected):
    assert info.arch_support(capability, archs).startswith(expected)


@pytest.mark.slow
def test_python_m_torchext_info_end_to_end():
    result = python_m_torchext("info")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checks passed" in result.stdout and "Traceback" not in result.stderr
