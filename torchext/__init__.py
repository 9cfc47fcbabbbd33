"""torchext: fused C++/CUDA kernels for small hot ops, differentiable drop-ins for torch models.

    torchext.cubic(x, a, b, c, d)               # a + b*x + c*x**2 + d*x**3
    torchext.legendre_p3(x)                     # 0.5 * (5*x**3 - 3*x)
    torchext.affine_legendre_p3(x, a, b, c, d)  # a + b * P3(c + d*x)
    torchext.relu(x)                            # torch.relu, bit for bit

The same as ``torch.autograd.Function`` subclasses (``CubicFunction`` ...), the modules in
``torchext.nn``, the pure-Python baseline in ``torchext.reference`` and the operators in
``torch.ops.torchext`` (differentiable themselves: the functions call them).
"""

import torch  # noqa: F401  (loads libtorch, which _C links against)


def _release(version: str) -> str:
    """'2.14.1+cu130' -> '2.14': the part of torch's version that its C++ ABI follows."""
    return ".".join(version.split("+")[0].split(".")[:2])


def _build_mismatch() -> str | None:
    """What is wrong with this torch for the compiled kernels, per torchext/_build_info.py (which
    setup.py writes when it builds them), or None."""
    try:
        from ._build_info import TORCH_CUDA, TORCH_VERSION
    except ImportError:  # not built yet, or by an older setup.py: let _C's import tell
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
        f"torchext's compiled kernels (torchext._C) cannot be loaded: {problem}.\n"
        "  From a source checkout: rebuild them against this torch, in the repository root:\n"
        "      pip install --no-build-isolation -e .\n"
        f"  From a wheel: {wheel_torch}, or build torchext against this torch from its source\n"
        "  (the same command, in a checkout). See README.md, Troubleshooting."
    )


_problem = _build_mismatch()
if _problem:
    raise ImportError(_load_error(_problem))
try:
    from . import _C  # noqa: F401  (its import registers torch.ops.torchext.*)
except ImportError as e:
    raise ImportError(_load_error(f"{e} (torch {torch.__version__})")) from e
del _problem

from . import functional, nn, reference  # noqa: E402
from .functional import (  # noqa: E402
    AffineLegendreP3Function,
    CubicFunction,
    LegendreP3Function,
    ReLUFunction,
    affine_legendre_p3,
    cubic,
    legendre_p3,
    relu,
)

__version__ = "0.1.0"

__all__ = [
    "AffineLegendreP3Function",
    "CubicFunction",
    "LegendreP3Function",
    "ReLUFunction",
    "affine_legendre_p3",
    "cubic",
    "functional",
    "legendre_p3",
    "nn",
    "reference",
    "relu",
]
