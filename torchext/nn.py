"""Drop-in modules over the fused torchext ops, one per row of the op table
(``torchext.functional.OPS``): ``torchext.nn.<cls>``.

An op with coefficients gets them as learnable parameters, one value per channel like
``torch.nn.PReLU``: ``Cubic(num_parameters=1, dim=1)``. With ``num_parameters=1`` the parameters are
0-dim, as the tutorial's ``Polynomial3`` has them (its ``state_dict`` loads); with C they have shape
``(C,)`` and apply along x's dim ``dim`` (negative counts from the end: ``dim=-1`` for
channels-last ``[..., C]``).
"""

import numbers
import re

import torch
from torch import Tensor

from . import functional as F

__all__ = []


def _param(module: str, name: str, value, shape, device, dtype) -> torch.nn.Parameter:
    """A parameter of the given shape: ``randn`` (the tutorial's draw) when value is None, else
    value (a number, or a tensor that broadcasts to the shape)."""
    if value is None:
        return torch.nn.Parameter(torch.randn(shape, device=device, dtype=dtype))
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(f"torchext.nn.{module}: '{name}' must be a real number or a floating "
                        f"tensor, got {type(value).__name__}")
    if isinstance(value, Tensor):
        value = torch.as_tensor(value, device=device)
    else:
        # In float64 first, so that 0.1 with dtype=torch.float64 is float64's 0.1 (not float32's),
        # and an int beyond int64's range is the float it is (torch.as_tensor refuses it).
        value = torch.tensor(F._real(f"nn.{module}", name, value), dtype=torch.float64,
                             device=device)
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"torchext.nn.{module}: '{name}' must be a real number or a floating "
                        f"tensor, got a {value.dtype} tensor")
    try:
        value = value.broadcast_to(shape)
    except RuntimeError:
        raise ValueError(f"torchext.nn.{module}: '{name}' of shape {list(value.shape)} does not "
                         f"fit num_parameters={shape[0] if shape else 1}") from None
    dtype = dtype or torch.get_default_dtype()  # an int given as a value still makes a float
    return torch.nn.Parameter(value.to(dtype=dtype).clone())


def _fmt(p: Tensor) -> str:
    return "?" if p.is_meta else f"{p.item():.4g}"


def _check_floating(module: str, dtype) -> None:
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"torchext.nn.{module}: dtype must be a floating dtype, got {dtype}")


class _WithCoefficients(torch.nn.Module):
    """An op's coefficients as parameters, drawn or set in the op's order (the tutorial's
    Polynomial3 draws a, b, c, d in that order, so the same seed gives the same values)."""

    _op: F.OpDef

    def __init__(self, num_parameters=1, dim=1, *, device=None, dtype=None, **values):
        super().__init__()
        module = type(self).__name__
        if isinstance(num_parameters, bool) or not isinstance(num_parameters, int) or (
                num_parameters < 1):
            raise ValueError(f"torchext.nn.{module}: num_parameters must be a positive int, got "
                             f"{num_parameters!r}")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"torchext.nn.{module}: dim must be an int, got {dim!r}")
        _check_floating(module, dtype)
        self.num_parameters, self.dim = num_parameters, dim
        shape = () if num_parameters == 1 else (num_parameters,)
        unknown = set(values) - set(self._op.coefs)
        if unknown:
            raise TypeError(f"torchext.nn.{module}: unexpected arguments {sorted(unknown)}")
        for name in self._op.coefs:
            setattr(self, name, _param(module, name, values.get(name), shape, device, dtype))

    def _coefficients(self, x: Tensor):
        coefs = [getattr(self, name) for name in self._op.coefs]
        if self.num_parameters == 1 or not isinstance(x, Tensor):
            return coefs
        dim = self.dim if self.dim >= 0 else x.dim() + self.dim
        if not 0 <= dim < x.dim() or x.size(dim) != self.num_parameters:
            raise ValueError(f"torchext.nn.{type(self).__name__}: x of shape {list(x.shape)} has "
                             f"no dim {self.dim} of size num_parameters={self.num_parameters}")
        trailing = x.dim() - 1 - dim
        if trailing == 0:
            return coefs
        return [c.view(-1, *([1] * trailing)) for c in coefs]

    def forward(self, x: Tensor) -> Tensor:
        return self._function(x, *self._coefficients(x))

    def extra_repr(self) -> str:
        if self.num_parameters == 1:
            values = {name: _fmt(getattr(self, name)) for name in self._op.coefs}
            return "y = " + _pretty(self._op.formula, values)
        return (f"num_parameters={self.num_parameters}, dim={self.dim}: "
                f"y = {_pretty(self._op.formula, {})}")

    def string(self) -> str:
        """The tutorial's ``Polynomial3.string()``."""
        return self.extra_repr()


def _pretty(formula: str, values: dict) -> str:
    """The formula as the tutorial prints it: ``a + b x + c x^2 + d x^3``, values put in."""
    out = formula.replace("**", "^").replace("*", " ")
    if not values:
        return out
    return re.sub(r"\b(" + "|".join(map(re.escape, values)) + r")\b", lambda m: values[m[1]], out)


class _WithoutCoefficients(torch.nn.Module):
    _op: F.OpDef

    def __init__(self, inplace: bool = False):
        super().__init__()
        if inplace and not self._op.inplace:
            raise TypeError(f"torchext.nn.{type(self).__name__}: no in-place form")
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return self._function(x, inplace=True)
        return self._function(x)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


def _make_module(op: F.OpDef):
    function = getattr(F, op.name)
    if op.coefs:
        init = op.init or (None,) * len(op.coefs)
        defaults = ", ".join(f"{n}={v!r}" for n, v in zip(op.coefs, init, strict=True))
        doc = (f"``y = {op.formula}`` with learnable {', '.join(op.coefs)} (fused: "
               f":func:`torchext.{op.name}`).\n\n"
               f"Args:\n    num_parameters: 1 (0-dim parameters) or C (one value per channel).\n"
               f"    dim: x's channel dim when num_parameters > 1 (negative counts from the end).\n"
               f"    {defaults}: initial values (numbers, or tensors that broadcast to "
               f"(num_parameters,)); None draws ``randn``, in this order.\n")
        if op.init is None:
            def __init__(self, num_parameters=1, dim=1, **kwargs):
                _WithCoefficients.__init__(self, num_parameters, dim, **kwargs)
        else:
            def __init__(self, num_parameters=1, dim=1, **kwargs):
                kwargs = {**dict(zip(op.coefs, op.init, strict=True)), **kwargs}
                _WithCoefficients.__init__(self, num_parameters, dim, **kwargs)
        base = _WithCoefficients
    else:
        doc = f"``y = {op.formula}``, fused (:func:`torchext.{op.name}`); no parameters."
        if op.inplace:
            doc += " ``inplace=True`` writes the result into the input, as torch.nn modules do."

        def __init__(self, inplace=False):
            _WithoutCoefficients.__init__(self, inplace)
        base = _WithoutCoefficients
    body = {"__init__": _named(__init__, f"{op.cls}.__init__"), "_op": op,
            "_function": staticmethod(function), "__doc__": doc, "__module__": __name__,
            "__qualname__": op.cls}
    return type(op.cls, (base,), body)


def _named(fn, qualname: str):
    """fn under qualname, also in its code object, which Python's own argument errors quote
    ("ReLU.__init__() got an unexpected keyword argument ...", as torch.nn.ReLU's say)."""
    fn.__qualname__ = qualname
    if hasattr(fn.__code__, "co_qualname"):  # Python 3.11 on
        fn.__code__ = fn.__code__.replace(co_qualname=qualname)
    return fn


for _op in F.OPS.values():
    globals()[_op.cls] = _make_module(_op)
    __all__.append(_op.cls)
del _op
