"""Builds csrc/cuda/loops.cuh's kernels as host code that runs them on the CPU (shim.h), and
loads it: ``load()`` returns a module with ``forward(op, x, coefs, inplace)`` and
``backward(op, grad, v, coefs, wanted)``, the CUDA build's own host driver (``Kernels<Op>``)
over CPU tensors.

The source is loops.cuh with three mechanical changes, so that a C++ compiler takes it:
``kernel<<<grid, block, shared, stream>>>(args)`` becomes ``emu::launch(kernel, grid, block,
shared, stream, args)``, the dynamic ``extern __shared__`` array becomes the emulated block's, and
``t.get_device()`` (a CPU tensor's is -1) becomes device 0. A change to loops.cuh that these
patterns miss fails the build here, naming the pattern, rather than emulating something else.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NAME = "torchext_emulated_cuda"


def emulated_source():
    src = (ROOT / "csrc" / "cuda" / "loops.cuh").read_text()
    launches = re.compile(r"(?<=[;{}])(\s*)([^;{}]*?)\s*<<<(.*?)>>>\(", re.S)
    src, n_launches = launches.subn(r"\1emu::launch(\2, \3, ", src)
    shared = "extern __shared__ unsigned char shared_raw[];"
    n_shared = src.count(shared)
    src = src.replace(shared, "unsigned char* shared_raw = emu::dynamic_shared();")
    src, n_devices = re.subn(r"\b(\w+)\.get_device\(\)", r"emu::device_of(\1)", src)
    # The CUDA headers go; the shim stands in for what the file takes from them.
    src = re.sub(r"#include <c10/cuda/[^>]+>\n", "", src)
    first = src.index("namespace torchext {")
    src = src[:first] + f'#include "{HERE / "shim.h"}"\n\n' + src[first:]
    for what, n in (("kernel launches", n_launches), ("dynamic shared arrays", n_shared),
                    ("get_device calls", n_devices)):
        if n == 0:
            raise RuntimeError(f"emulated CUDA: no {what} found in loops.cuh; update build.py")
    if "<<<" in src:
        raise RuntimeError("emulated CUDA: a kernel launch build.py did not rewrite")
    return src.replace("#pragma once\n", "", 1) + "\n" + (HERE / "bindings.cpp").read_text()


def load(build_dir):
    """Writes the source into build_dir and builds (or reuses) the module there."""
    from torch.utils import cpp_extension

    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / "emulated_cuda.cpp"
    text = emulated_source()
    if not source.exists() or source.read_text() != text:
        source.write_text(text)
    return cpp_extension.load(
        name=NAME,
        sources=[str(source), str(ROOT / "csrc" / "layout.cpp")],
        extra_include_paths=[str(ROOT / "csrc" / "cuda"), str(ROOT / "csrc")],
        extra_cflags=["-std=c++20", "-O1", "-Wno-unknown-pragmas"],
        build_directory=str(build_dir),
        verbose=False,
    )
