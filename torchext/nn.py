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


def _initial(module: str, name: str, value, shape):
    """A coefficient's initial value as reset_parameters sets it: None (draw ``randn``, the
    tutorial's draw), or a tensor that broadcasts to the shape (a number as float64, so that 0.1
    with dtype=torch.float64 is float64's 0.1, not float32's, and an int beyond int64's range,
    which torch.as_tensor refuses, is the float it is)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(f"torchext.nn.{module}: '{name}' must be a real number or a floating "
                        f"tensor, got {type(value).__name__}")
    if isinstance(value, Tensor):
        value = value.detach().clone()
    else:
        value = torch.tensor(F._real(f"nn.{module}", name, value), dtype=torch.float64,
                             device="cpu")  # not the meta device a module may be made under
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"torchext.nn.{module}: '{name}' must be a real number or a floating "
                        f"tensor, got a {value.dtype} tensor")
    try:
        value.broadcast_to(shape)
    except RuntimeError:
        raise ValueError(f"torchext.nn.{module}: '{name}' of shape {list(value.shape)} does not "
                         f"fit num_parameters={shape[0] if shape else 1}") from None
    return value


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
        self._initial = {name: _initial(module, name, values.get(name), shape)
                         for name in self._op.coefs}
        for name in self._op.coefs:
            setattr(self, name, torch.nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Sets the parameters to their initial values: those given, the others drawn from
        ``randn`` in the op's order, so that after ``torch.manual_seed(s)`` they are those of a
        module made after it. A module made on the meta device gets its values by
        ``m.to_empty(device=...)`` then this, as torch.nn's modules do."""
        with torch.no_grad():
            for name in self._op.coefs:
                param, value = getattr(self, name), self._initial[name]
                if value is None:
                    param.normal_()
                else:
                    param.copy_(value)

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
            "__qualname__": op.cls, "__prepare_scriptable__": _not_scriptable}
    return type(op.cls, (base,), body)


def _not_scriptable(self):
    """torch.jit.script calls this first: an error that names the module, where TorchScript
    would fail on the functions' source (they are made from the op table)."""
    raise RuntimeError(f"torchext.nn.{type(self).__name__}: torch.jit.script is not supported "
                       f"(torch deprecates it); torch.jit.trace, torch.export or torch.compile "
                       f"the model instead")


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


def __dir__():  # dir() and completion: the modules, not this module's imports
    return sorted(__all__)
