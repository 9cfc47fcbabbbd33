"""The build: OpenMP really on, every operator registered for every backend it was built for, and
a clear error when the compiled library is missing."""

import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from conftest import bits, same_bits

import torchext
from torchext.info import build_info

OPERATORS = [f"{op.name}{suffix}" for op in torchext.functional.OPS.values()
             for suffix in ("", "_backward")]


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


def test_package_exports_the_functional_api_and_its_modules():
    # __all__ is spelled out in __init__.py (linters read it); it must follow functional.__all__.
    assert sorted(torchext.__all__) == sorted(
        [*torchext.functional.__all__, "functional", "library_path", "nn", "reference"]
    )
    assert all(hasattr(torchext, name) for name in torchext.__all__)
    # Nothing else public but torchext's own submodules (bound as they are imported): no module
    # that __init__.py imports for itself (os, sys: dir(torchext), completion).
    public = {name: getattr(torchext, name) for name in dir(torchext) if not name.startswith("_")}
    others = {name for name, value in public.items()
              if name not in torchext.__all__
              and getattr(value, "__name__", None) != f"torchext.{name}"}
    assert not others


@pytest.mark.parametrize("name", ["functional", "nn", "reference"])
def test_submodules_show_their_own_names(name):
    # dir() and completion list what the module offers (its __all__; functional also its op
    # table), not what it imports for itself (torch, Tensor, re, numbers, dataclasses...), each
    # name a real attribute.
    module = getattr(torchext, name)
    table = {"OPS", "OpDef"} if name == "functional" else set()
    assert dir(module) == sorted({*module.__all__, *table})
    assert all(hasattr(module, attr) for attr in dir(module))


def test_build_info_names_this_torch():
    # Written by setup.py's build_ext next to the library: what the import-time check reads.
    from torchext import _build_info

    assert _build_info.TORCH_VERSION == torch.__version__
    assert bool(_build_info.TORCH_CUDA) == bool(build_info()["cuda_archs"])
    if _build_info.TORCH_CUDA:
        assert _build_info.TORCH_CUDA == torch.version.cuda


def test_release_cpu_library_is_small():
    # Release builds carry no debug info (setup.py: -g0 after Python's CFLAGS, which say -g):
    # 0.8 MB instead of 17 MB here. The dynamic symbols that name functions in a backtrace stay.
    from torchext import _build_info

    if _build_info.DEBUG:
        pytest.skip("a DEBUG=1 build carries debug info on purpose")
    if _build_info.TORCH_CUDA:
        pytest.skip("the 4 MB budget is the CPU-only library's; CUDA device code adds to it")
    size = os.path.getsize(torchext.library_path())
    assert size < 4 * 2**20, f"{torchext.library_path()}: {size / 2**20:.1f} MB (debug info?)"


THIS_CUDA = torch.version.cuda or "13.0"
OTHER_CUDA = f"{int(THIS_CUDA.split('.')[0]) - 1}.8"
_MAJOR, _MINOR = map(int, torch.__version__.split(".")[:2])
OTHER_RELEASE = f"{_MAJOR}.{_MINOR - 1 if _MINOR else _MINOR + 1}.0+cpu"  # not this torch's


@pytest.mark.parametrize(
    "built, built_cuda, found_cuda, expected",
    [
        (OTHER_RELEASE, None, THIS_CUDA, f"built against torch {OTHER_RELEASE}, and this is "),
        ("1.99.0", None, None, "built against torch 1.99.0, and this is torch "),
        (None, THIS_CUDA, None, "built with CUDA kernels"),
        (None, OTHER_CUDA, THIS_CUDA, f"built for CUDA {OTHER_CUDA}"),
        (None, None, None, None),  # CPU kernels only: a CPU or CUDA torch of the release
        ("patch", None, None, None),  # another patch release of the same torch: ABI-compatible
        (None, THIS_CUDA, THIS_CUDA, None),
    ],
)
def test_torch_mismatch_is_named(monkeypatch, built, built_cuda, found_cuda, expected):
    release = torch.__version__.split("+")[0].rsplit(".", 1)[0]
    version = {None: torch.__version__, "patch": f"{release}.99"}.get(built, built)
    fake = types.SimpleNamespace(TORCH_VERSION=version, TORCH_CUDA=built_cuda, DEBUG=False)
    monkeypatch.setitem(sys.modules, "torchext._build_info", fake)
    monkeypatch.setattr(torch.version, "cuda", found_cuda)
    problem = torchext._build_mismatch()
    if expected is None:
        assert problem is None
    else:
        assert expected in problem and torch.__version__ in problem


def test_torch_mismatch_refuses_to_load_and_says_what_to_do():
    # A build for another torch release must not load (an undefined symbol at best, a wrong ABI
    # at worst): the import fails before it touches the library, naming both torch versions.
    code = textwrap.dedent(
        """
        import sys, types
        sys.modules["torchext._build_info"] = types.SimpleNamespace(
            TORCH_VERSION="1.13.0+cpu", TORCH_CUDA=None, DEBUG=False)
        try:
            import torchext
        except ImportError as e:
            import torch
            print(e)
            print("library loaded:", bool(torch.ops.loaded_libraries))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("torchext's compiled kernels (torchext/_C) cannot be loaded: ")
    assert f"built against torch 1.13.0+cpu, and this is torch {torch.__version__}" in out.stdout
    assert "pip install --no-build-isolation -e ." in out.stdout  # a source checkout
    assert 'From a wheel: pip install "torch==1.13.*"' in out.stdout
    assert "library loaded: False" in out.stdout


def test_missing_library_says_how_to_build():
    code = textwrap.dedent(
        """
        import importlib.machinery
        importlib.machinery.EXTENSION_SUFFIXES[:] = [".simulated-missing.so"]
        import torchext
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "no compiled library (_C.simulated-missing.so)" in out.stderr
    assert "pip install --no-build-isolation -e ." in out.stderr


ISA_PROBE = textwrap.dedent(
    """
    import math, sys, torch, torchext
    torch.manual_seed(0)

    def specials(dtype):
        # Edge values, and NaNs with payloads and either sign, from their bits.
        fi = torch.finfo(dtype)
        values = [0.0, -0.0, math.inf, -math.inf, math.nan, fi.max, -fi.max, fi.tiny, fi.tiny / 4]
        bits = fi.bits
        exp = {16: 8 if dtype == torch.bfloat16 else 5, 32: 8, 64: 11}[bits]
        nan = ((1 << exp) - 1) << (bits - 1 - exp)  # exponent all ones
        quiet = 1 << (bits - 2 - exp)
        patterns = [nan | 1, nan | quiet | 5, 1 << (bits - 1) | nan | 3]  # signalling, quiet, -
        ints = {16: torch.int16, 32: torch.int32, 64: torch.int64}[bits]
        signed = [b - (1 << bits) if b >> (bits - 1) else b for b in patterns]
        nans = torch.tensor(signed, dtype=ints).view(dtype)
        return torch.cat([torch.tensor(values, dtype=dtype), nans])

    out = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        # The edge values at both ends: in the vector loops and in their scalar tails.
        edge = specials(dtype)
        x = torch.cat([edge, torch.randn(70_001, dtype=torch.float64).to(dtype), edge])
        # One-element coefficients (long runs), and per channel: columns, runs of slots and short
        # runs (of 70: vectors and an overlapping last one).
        cases = [(x, ()), (x[:70000].reshape(-1, 700), (700,)),
                 (x[:70000].reshape(10, 7000), (10, 1)), (x[:70000].reshape(10, 100, 70), (100, 1))]
        for x, coef_shape in cases:
            x = x.detach().requires_grad_()
            g = torch.randn(x.shape, dtype=torch.float64).to(dtype)
            for op in torchext.functional.OPS.values():
                cs = [torch.randn(coef_shape, requires_grad=True) for _ in op.coefs]
                y = getattr(torchext, op.name)(x, *cs)
                dx, *dcs = torch.autograd.grad(y, [x, *cs], g)
                out += [("y", y), ("dx", dx)] + [("coefficient", d) for d in dcs]
    torch.save([(kind, t.detach()) for kind, t in out], sys.argv[1])
    print(torch.ops.torchext._build_info())
    """
)


@pytest.mark.slow  # two subprocesses over every op and dtype: 7 s
def test_baseline_and_avx2_loops_agree_bitwise(tmp_path):
    """The CPU loops are compiled for baseline x86-64 and for AVX2; both must give the same bits.
    NaN payloads too, where both builds follow one rule: not for float16 (the baseline narrows it
    with c10, which makes every NaN 0x7E00; F16C keeps the payload), nor for the coefficients'
    gradients (which NaN a sum of two NaNs keeps depends on the order the compiler gave the
    operands of each add)."""
    results = {}
    for isa in ("base", "auto"):
        env = dict(os.environ, TORCHEXT_CPU_ISA=isa)
        path = tmp_path / f"{isa}.pt"
        run = subprocess.run([sys.executable, "-c", ISA_PROBE, str(path)], env=env,
                             capture_output=True, text=True, check=True)
        results[isa] = (run.stdout, torch.load(path))
    assert "cpu_isa=base" in results["base"][0]
    if "cpu_isa=avx2" not in results["auto"][0]:
        pytest.skip("this CPU has no AVX2: only the baseline loops run here")
    for (kind, a), (_, b) in zip(results["base"][1], results["auto"][1], strict=True):
        assert same_bits(a, b)
        if kind != "coefficient" and a.dtype != torch.float16:
            assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16bit_results_round_as_torch(dtype):
    """The CPU loops narrow float results to 16 bits themselves (cpu/loops_impl.h, bit operations
    and F16C): they must round as torch does (to nearest even, overflowing to inf)."""
    big = torch.finfo(dtype).max
    x = torch.cat([torch.randn(20_000, dtype=torch.float64), torch.tensor([big, -big, big / 2])])
    x = x.to(dtype)
    x = x[x != 0]
    # 0 + x·(3 + x·(0 + x·0)) is 3x computed exactly in float, then rounded once.
    y = torchext.cubic(x, 0.0, 3.0, 0.0, 0.0)
    assert same_bits(y, (x.float() * 3).to(dtype))
    assert torch.isinf(y[-3:-1]).all()
    # Calls of 15 elements: each narrowed in the scalar tail, not the vector loop.
    short = torch.cat([torchext.cubic(p, 0.0, 3.0, 0.0, 0.0) for p in x[:3000].split(15)])
    assert same_bits(short, (x[:3000].float() * 3).to(dtype))
