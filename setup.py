"""Builds torchext's library, torchext/_C*.so (a plain shared library with no Python in it, named
as an extension module so that wheels and editable installs place it): the CPU kernels always,
the CUDA kernels when torch has CUDA and nvcc is found.

Switches (environment variables):
  USE_CUDA=0                skip the CUDA kernels; USE_CUDA=1 fails loudly if they cannot be built
  DEBUG=1                   -O0 -g instead of -O3 -g0 (release builds carry no debug info)
  TORCH_CUDA_ARCH_LIST      GPU architectures; when unset and no GPU is visible: "8.0;9.0+PTX"
                            (Ampere, Hopper, and PTX that newer GPUs compile on first use)
  MAX_JOBS                  parallel compile jobs (ninja)
"""

import glob
import os
import shutil


def _set_cuda_home() -> None:
    """torch takes CUDA_HOME from the nvcc on PATH, which is wrong when that nvcc is a wrapper
    script outside the toolkit (as /usr/local/bin/nvcc is on some machines: torch then looks for
    libcudart in /usr/local/lib). Prefer a folder that really holds the toolkit."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = home
            return


_set_cuda_home()

import torch  # noqa: E402  (after CUDA_HOME is settled: cpp_extension reads it on import)
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
DEBUG = os.environ.get("DEBUG", "0") == "1"
# The compiled library works only with the torch release it was built against (torch's C++ ABI
# changes between releases): wheels and editable installs require that release, so that pip keeps
# it or reports a conflict instead of installing a library that cannot load.
TORCH_RELEASE = ".".join(torch.__version__.split("+")[0].split(".")[:2])


def want_cuda() -> bool:
    flag = os.environ.get("USE_CUDA")
    found = torch.version.cuda is not None and CUDA_HOME is not None and (
        shutil.which("nvcc") is not None or os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    )
    if flag == "1" and not found:
        raise RuntimeError(
            f"USE_CUDA=1 but CUDA cannot be built: torch.version.cuda={torch.version.cuda}, "
            f"CUDA_HOME={CUDA_HOME}. Install a CUDA build of torch and the CUDA toolkit (nvcc)."
        )
    return found if flag is None else flag != "0" and found


def cuda_archs() -> str:
    # Without a visible GPU torch would compile for every architecture it knows (slow); with one,
    # torch picks that GPU's architecture itself.
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    return os.environ.get("TORCH_CUDA_ARCH_LIST", "detected")


def extension():
    cuda = want_cuda()
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp", "csrc/layout.cpp", "csrc/meta.cpp"]
    sources += sorted(glob.glob("csrc/cpu/*.cpp"))
    archs = cuda_archs() if cuda else ""
    # -fopenmp at compile *and* link: at::parallel_for is inlined into this library and runs
    # serially without it. torch ships libgomp.so.1, the same soname, so one OpenMP runtime runs.
    # -ffp-contract=off: no fused multiply-adds, so the baseline and AVX2 loops (cpu/loops.h) give
    # the same bits and a CPU result does not depend on which x86-64 machine computed it.
    # -fno-trapping-math: no FP exception flags are relied on, so the compiler may turn the
    # selects of the compensated sums into blends and vectorize them (cpu/loops_impl.h); results
    # are IEEE's all the same.
    # -g0: Python's own CFLAGS (sysconfig), which come first, carry -g, and debug info made up 16
    # of the CPU library's 17 MB. The dynamic symbol table stays (no -s): backtraces still name
    # our functions. (nvcc passes no -g to the host compiler by itself.)
    cxx = opt + ([] if DEBUG else ["-g0"])
    cxx += ["-fopenmp", "-ffp-contract=off", "-fno-trapping-math",
            f'-DTORCHEXT_CUDA_ARCHS="{archs}"']
    kwargs = dict(
        name="torchext._C",
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    if not cuda:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    else:
        # nvcc: no --use_fast_math, so CUDA results match the CPU's and the reference's.
        nvcc = opt + ["-lineinfo"]
        ext = CUDAExtension(
            sources=sources + sorted(glob.glob("csrc/cuda/*.cu")),
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            **kwargs,
        )
    # A library that needs no Python: a C++ program with libtorch alone loads it (torchext's
    # Python package loads it with torch.ops.load_library, not as a module).
    ext.libraries = [lib for lib in ext.libraries if lib != "torch_python"]
    return ext


class BuildExtensionWithInfo(BuildExtension):
    """Also writes torchext/_build_info.py beside the compiled library (in the wheel, or in the
    source tree for in-place and editable builds): what torchext/__init__.py checks before it
    loads the library, so that a torch mismatch gets a clear error instead of an undefined symbol.
    """

    def run(self):
        super().run()
        ext = self.extensions[0]
        info = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_build_info.py")
        cuda = any(source.endswith(".cu") for source in ext.sources)
        with open(info, "w", encoding="utf-8") as f:
            f.write(
                "# Written by setup.py when it built torchext/_C*.so (not in git).\n"
                f"TORCH_VERSION = {torch.__version__!r}  # the torch it was built against\n"
                f"TORCH_CUDA = {torch.version.cuda if cuda else None!r}  # None: no CUDA kernels\n"
                f"DEBUG = {DEBUG!r}\n"
            )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtensionWithInfo},
    install_requires=[f"torch=={TORCH_RELEASE}.*"],
)
