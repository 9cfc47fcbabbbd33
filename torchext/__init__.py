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

try:
    from . import _C  # noqa: F401  (its import registers torch.ops.torchext.*)
except ImportError as e:
    raise ImportError(
        "torchext's compiled kernels (torchext._C) could not be loaded: "
        f"{e}. Build them against the torch you have, from the repository root:\n"
        "    pip install --no-build-isolation -e .\n"
        "(after upgrading torch, rebuild the same way; see README.md, Troubleshooting)"
    ) from e

from . import functional, nn, reference
from .functional import *  # noqa: F403  (the op table's functions and autograd.Function classes)

__version__ = "0.1.0"

__all__ = [*functional.__all__, "functional", "nn", "reference"]
