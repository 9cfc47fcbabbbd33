"""torchext from C++, without Python: examples/cpp/run_ops.cpp, built with g++ against the
installed torch, loads torchext's library (torchext.library_path()) and runs every op forward and
backward; its numbers are the Python calls'. The library must not need Python at all: a program
that loads it with RTLD_NOW would fail on an undefined Python symbol."""

import os
import shutil
import subprocess

import pytest
import torch
from torch.utils import cpp_extension

import torchext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "cpp", "run_ops.cpp")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the C++ example"),
]


def test_library_needs_no_python():
    # No Python symbol is referenced, and libtorch_python is not among its dependencies.
    nm = subprocess.run(["nm", "-D", "--undefined-only", torchext.library_path()],
                        capture_output=True, text=True, check=True).stdout
    assert " Py" not in nm and "_Py" not in nm
    deps = subprocess.run(["ldd", torchext.library_path()], capture_output=True, text=True).stdout
    assert "libtorch_python" not in deps


def _build(source, tmp_path, extra=()):
    exe = tmp_path / os.path.splitext(os.path.basename(source))[0]
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    libdirs = cpp_extension.library_paths()
    cmd = ["g++", "-std=c++20", "-O1", source, "-o", str(exe), *includes,
           *(f"-L{p}" for p in libdirs), *(f"-Wl,-rpath,{p}" for p in libdirs),
           *extra, "-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10", "-ldl"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return exe


def test_cpp_example_runs_every_op_forward_and_backward(tmp_path):
    exe = _build(EXAMPLE, tmp_path)
    out = subprocess.run([str(exe), torchext.library_path()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in out.splitlines()}
    assert set(rows) == {f"torchext::{name}" for name in torchext.functional.OPS}
    for name, op in torchext.functional.OPS.items():
        x = torch.linspace(-1, 1, 11, dtype=torch.float64, requires_grad=True)
        cs = [torch.full((), 0.5, dtype=torch.float64, requires_grad=True) for _ in op.coefs]
        y = getattr(torchext, name)(x, *cs)
        grads = torch.autograd.grad(y.sum(), [x, *cs])
        expected = [y.sum().item(), *(g.sum().item() for g in grads)]
        assert rows[f"torchext::{name}"] == pytest.approx(expected, rel=1e-12, abs=1e-12), name
