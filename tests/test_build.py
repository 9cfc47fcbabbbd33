"""The build: OpenMP really on, every operator registered for every backend it was built for, and
a clear error when the compiled library is missing."""

import subprocess
import sys
import textwrap

import pytest
import torch

import torchext  # noqa: F401

OPERATORS = [
    f"{op}{suffix}"
    for op in ("cubic", "legendre_p3", "affine_legendre_p3", "relu")
    for suffix in ("", "_backward")
]


def build_info():
    return dict(kv.split("=", 1) for kv in torch.ops.torchext._build_info().split(";"))


def test_openmp_compiled_in():
    assert build_info()["openmp"] == "1"


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs at least 2 CPU threads")
def test_parallel_for_runs_on_all_threads():
    # Compiled without -fopenmp, the extension's inlined at::parallel_for runs on one thread.
    assert torch.ops.torchext._parallel_threads() == torch.get_num_threads()


@pytest.mark.parametrize("op", OPERATORS)
def test_cpu_kernels_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"torchext::{op}", "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"torchext::{op}", "Meta")


@pytest.mark.parametrize("op", OPERATORS)
def test_cuda_kernels_registered_when_built(op):
    if not build_info()["cuda_archs"]:
        pytest.skip("torchext was built without CUDA (CPU-only torch, no nvcc, or USE_CUDA=0)")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"torchext::{op}", "CUDA")


def test_missing_library_says_how_to_build():
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torchext._C":
                    raise ImportError("simulated: no compiled library")
        sys.meta_path.insert(0, Block())
        import torchext
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "pip install --no-build-isolation -e ." in out.stderr
