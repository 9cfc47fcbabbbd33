"""Drop-in modules over the fused torchext ops."""

import numbers

import torch
from torch import Tensor

from . import functional as F

__all__ = ["AffineLegendreP3", "Cubic", "LegendreP3", "ReLU"]


def _param(module: str, name: str, value, device, dtype) -> torch.nn.Parameter:
    """A scalar parameter: ``randn(())`` (the tutorial's draw) when value is None."""
    if value is None:
        return torch.nn.Parameter(torch.randn((), device=device, dtype=dtype))
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(f"torchext.nn.{module}: '{name}' must be a real number or a floating "
                        f"tensor, got {type(value).__name__}")
    dtype = dtype or torch.get_default_dtype()  # an int given as a value still makes a float
    return torch.nn.Parameter(torch.as_tensor(value, device=device, dtype=dtype).clone())


def _fmt(p: Tensor) -> str:
    return "?" if p.is_meta else f"{p.item():.4g}"


class _Coefficients(torch.nn.Module):
    """Four scalar parameters a, b, c, d, drawn in that order as the tutorial's Polynomial3 does,
    so that the same seed gives the same initial values."""

    def __init__(self, a, b, c, d, device, dtype):
        super().__init__()
        module = type(self).__name__
        self.a = _param(module, "a", a, device, dtype)
        self.b = _param(module, "b", b, device, dtype)
        self.c = _param(module, "c", c, device, dtype)
        self.d = _param(module, "d", d, device, dtype)

    def string(self) -> str:
        """The tutorial's ``Polynomial3.string()``."""
        return self.extra_repr()


class Cubic(_Coefficients):
    """``y = a + b x + c x^2 + d x^3`` with learnable a, b, c, d: a drop-in for the tutorial's
    ``Polynomial3`` (same initialisation, same parameter names), fused.

    Args:
        a, b, c, d: initial values; each one left ``None`` is drawn from ``randn(())``.
    """

    def __init__(self, a=None, b=None, c=None, d=None, *, device=None, dtype=None):
        super().__init__(a, b, c, d, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.cubic(x, self.a, self.b, self.c, self.d)

    def extra_repr(self) -> str:
        a, b, c, d = (_fmt(p) for p in (self.a, self.b, self.c, self.d))
        return f"y = {a} + {b} x + {c} x^2 + {d} x^3"


class AffineLegendreP3(_Coefficients):
    """``y = a + b P3(c + d x)`` with learnable a, b, c, d: the tutorial's Legendre model in one
    fused op. Initialised to the tutorial's ``(0, -1, 0, 0.3)`` unless given other values."""

    def __init__(self, a=0.0, b=-1.0, c=0.0, d=0.3, *, device=None, dtype=None):
        super().__init__(a, b, c, d, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.affine_legendre_p3(x, self.a, self.b, self.c, self.d)

    def extra_repr(self) -> str:
        a, b, c, d = (_fmt(p) for p in (self.a, self.b, self.c, self.d))
        return f"y = {a} + {b} P3({c} + {d} x)"


class LegendreP3(torch.nn.Module):
    """``P3(x) = 0.5 (5 x^3 - 3 x)``, fused; no parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return F.legendre_p3(x)


class ReLU(torch.nn.Module):
    """Like ``torch.nn.ReLU``, bit for bit. ``inplace=True`` writes the result into the input, as
    torch.nn.ReLU does (correct under autograd; it saves memory, not time: the fused kernel writes
    a new tensor that is then copied back)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x, inplace=self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""
