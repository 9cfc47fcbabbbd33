"""torchext: fused C++/CUDA kernels for small hot ops, differentiable drop-ins for torch models.

One function per row of the op table (``torchext.functional.OPS``), e.g.
``torchext.cubic(x, a, b, c, d)`` for ``a + b*x + c*x**2 + d*x**3``; the same as
``torch.autograd.Function`` subclasses (``torchext.CubicFunction`` ...), the modules in
``torchext.nn``, the pure-Python baseline in ``torchext.reference`` and the operators in
``torch.ops.torchext`` (differentiable themselves: the functions call them).
"""

# Underscored: a module's imports are its attributes, and these are no part of the API.
import importlib.machinery as _machinery
import os as _os
import sys as _sys

__version__ = "0.1.0"

# The op table's functions and autograd.Function classes join these in _load()
# (torchext.functional.OPS; torchext.functional.__all__ names them).
__all__ = ["functional", "library_path", "nn", "reference"]


def _release(version: str) -> str:
    """'2.14.1+cu130' -> '2.14': the part of torch's version that its C++ ABI follows."""
    return ".".join(version.split("+")[0].split(".")[:2])


def _build_mismatch() -> str | None:
    """What is wrong with this torch for the compiled kernels, per torchext/_build_info.py (which
    setup.py writes when it builds them), or None."""
    import torch

    try:
        from ._build_info import TORCH_CUDA, TORCH_VERSION
    except ImportError:  # not built yet, or by an older setup.py: let loading the library tell
        return None
    found = f"torch {torch.__version__}"
    if _release(TORCH_VERSION) != _release(torch.__version__):
        return f"they were built against torch {TORCH_VERSION}, and this is {found}"
    if TORCH_CUDA and not torch.version.cuda:
        return (f"they were built with CUDA kernels, against torch {TORCH_VERSION}, and this is "
                f"{found}, without CUDA")
    if TORCH_CUDA and TORCH_CUDA.split(".")[0] != torch.version.cuda.split(".")[0]:
        return (f"they were built for CUDA {TORCH_CUDA} (torch {TORCH_VERSION}), and this is "
                f"{found} for CUDA {torch.version.cuda}")
    return None


def _load_error(problem: str) -> str:
    try:
        from ._build_info import TORCH_VERSION

        wheel_torch = f'pip install "torch=={_release(TORCH_VERSION)}.*"'
    except ImportError:
        wheel_torch = "install the torch it was built for"
    return (
        f"torchext's compiled kernels (torchext/_C) cannot be loaded: {problem}.\n"
        "  From a source checkout: rebuild them against this torch, in the repository root:\n"
        "      pip install --no-build-isolation -e .\n"
        f"  From a wheel: {wheel_torch}, or build torchext against this torch from its source\n"
        "  (the same command, in a checkout). See README.md, Troubleshooting."
    )


def library_path() -> str:
    """The path of torchext's compiled library: the operators, their kernels and derivatives, with
    no Python in it. A process that never imports torchext (or a C++ program, by dlopen or by
    linking it) gets the operators with ``torch.ops.load_library(path)``: e.g. to run a program
    saved by ``torch.export`` or AOTInductor."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    for suffix in _machinery.EXTENSION_SUFFIXES:
        path = _os.path.join(here, "_C" + suffix)
        if _os.path.exists(path):
            return path
    raise FileNotFoundError(f"no compiled library (_C{_machinery.EXTENSION_SUFFIXES[0]}) "
                            f"in {here}: it has not been built")


_loading = False  # while _load() runs: the submodules' imports must not come back through it


def _load() -> None:
    """Imports torch, loads the kernels built for it (their import registers torch.ops.torchext.*)
    and binds the API here. Runs at import, except at the start of the command line."""
    global _loading
    import torch

    problem = _build_mismatch()
    if problem:
        raise ImportError(_load_error(problem))
    _loading = True
    try:
        try:
            torch.ops.load_library(library_path())
        except (OSError, FileNotFoundError) as e:
            raise ImportError(_load_error(f"{e} (torch {torch.__version__})")) from e
        from . import functional, nn, reference  # noqa: F401  (the import binds them here)
    finally:
        _loading = False
    globals().update((name, getattr(functional, name)) for name in functional.__all__)
    __all__[:] = [*functional.__all__, "functional", "library_path", "nn", "reference"]


def _python_m_module() -> str | None:
    """The module that ``python -m NAME`` (or ``-mNAME``) runs, from sys.orig_argv."""
    args = iter(_sys.orig_argv[1:])
    for arg in args:
        if arg.startswith("-m"):
            return arg[2:] or next(args, None)
    return None


def _command_line_starting() -> bool:
    """Whether this import starts torchext's command line (``python -m torchext``, or the
    ``torchext`` script): then torch (seconds to import) waits until a subcommand needs it, and
    ``--help`` answers at once. While ``python -m`` looks for its module, sys.argv[0] is "-m"."""
    if _sys.argv[:1] == ["-m"]:
        return _python_m_module() in ("torchext", "torchext.__main__")
    main = _sys.modules.get("__main__")
    return _os.path.basename(getattr(main, "__file__", None) or "") == "torchext"


if _command_line_starting():

    def __getattr__(name: str):
        """The API, loaded on first use (torchext/__main__.py loads it as soon as a subcommand is
        chosen; this is for any other code in a process named torchext)."""
        if _loading or name.startswith("__"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        _load()
        if name not in globals():
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return globals()[name]

else:
    _load()
