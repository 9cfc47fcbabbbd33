"""Deployment without torchext's Python package: a program saved with torch.export (.pt2) runs in
a Python process that never imports torchext, after torch.ops.load_library(torchext's library),
meta tensors included (the Meta kernels are in the library); an AOTInductor package of a model
with torchext ops runs from C++ (examples/cpp/run_aoti.cpp)."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import EveryOp

import torchext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def _without_torchext(code: str, *args) -> str:
    """Runs code in a fresh interpreter that loads torchext's library and never imports torchext
    (asserted at the end); returns its stdout."""
    prologue = textwrap.dedent(f"""
        import sys, torch
        torch.ops.load_library({torchext.library_path()!r})
    """)
    epilogue = "\nassert 'torchext' not in sys.modules, 'torchext was imported'\n"
    out = subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code) + epilogue,
                          *args], capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_exported_program_runs_without_importing_torchext(tmp_path):
    torch.manual_seed(0)
    model = EveryOp()
    x = torch.linspace(-2, 2, 37)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (x,)), path)
    out = _without_torchext("""
        ep = torch.export.load(sys.argv[1])
        x = torch.linspace(-2, 2, 37)
        print(ep.module()(x).sum().item())
        meta = torch.ops.torchext.cubic(torch.empty(3, 5, device="meta").t(), *[torch.ones(())] * 4)
        print(meta.shape, meta.stride())
    """, str(path))
    value, meta = out.splitlines()
    assert float(value) == pytest.approx(model(x).sum().item(), rel=1e-6)
    assert meta == "torch.Size([5, 3]) (1, 5)"


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the C++ example")
def test_aoti_package_runs_from_cpp(tmp_path):
    from test_cpp import _build

    torch.manual_seed(0)
    model = EveryOp().eval()
    x = torch.linspace(-2, 2, 37)
    package = torch._inductor.aoti_compile_and_package(
        torch.export.export(model, (x,)), package_path=str(tmp_path / "model.pt2"))
    exe = _build(os.path.join(ROOT, "examples", "cpp", "run_aoti.cpp"), tmp_path)
    out = subprocess.run([str(exe), torchext.library_path(), package, "37"], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    with torch.no_grad():
        assert float(out) == pytest.approx(model(x).sum().item(), rel=1e-5)
