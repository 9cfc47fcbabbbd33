"""The differentiable torchext ops: the functions ``torchext.cubic`` & co., the
``torch.autograd.Function`` subclasses with the same arguments, and the fake kernels that tell
``torch.compile`` and meta tensors what the operators in ``torch.ops.torchext`` (csrc/ops.cpp)
return.

Two ways to the same kernels and the same gradients:

- the functions call the operators directly. The operators are differentiable by themselves: their
  derivatives are registered in C++ for the Autograd dispatch key (csrc/autograd.cpp), as torch's
  own ops have theirs, so no Python runs in their backward. At the tutorial's 2000 elements a call
  is nearly all overhead, and this path costs ~20 µs less per forward+backward than a Python
  ``autograd.Function`` (benchmarks/NOTES.md §4);
- the ``*Function`` classes are ``autograd.Function`` subclasses over the same operators, for code
  written around ``.apply`` (as the tutorial's ``LegendrePolynomial3.apply``) or that subclasses
  them. Their backward calls the fused backward operator, which is itself differentiable (in C++),
  so double backward works on both ways.

The wrappers are on the hot path: they do nothing but check that x is a tensor, convert
Python-number coefficients and call the operator. Every other check lives in the C++ kernels
(csrc/common.cpp) and, for fake tensors, in ``_check_fake`` below.
"""

import numbers

import torch
from torch import Tensor

__all__ = [
    "AffineLegendreP3Function",
    "CubicFunction",
    "LegendreP3Function",
    "ReLUFunction",
    "affine_legendre_p3",
    "cubic",
    "legendre_p3",
    "relu",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# The operators, as their OpOverloads: calling one skips the overload resolution of
# torch.ops.torchext.<op>(...), a few µs a call.
_cubic = torch.ops.torchext.cubic.default
_cubic_backward = torch.ops.torchext.cubic_backward.default
_legendre_p3 = torch.ops.torchext.legendre_p3.default
_legendre_p3_backward = torch.ops.torchext.legendre_p3_backward.default
_affine_legendre_p3 = torch.ops.torchext.affine_legendre_p3.default
_affine_legendre_p3_backward = torch.ops.torchext.affine_legendre_p3_backward.default
_relu = torch.ops.torchext.relu.default
_relu_backward = torch.ops.torchext.relu_backward.default


def _check_x(op: str, x) -> None:
    """The one check made in Python: the C++ operators cannot name a non-tensor argument."""
    if not isinstance(x, Tensor):
        raise TypeError(f"torchext.{op}: 'x' must be a torch.Tensor, got {type(x).__name__}")


# ---- coefficients -------------------------------------------------------------------------------


def _coef(op: str, name: str, value, x):
    """A coefficient as the operators take it: a tensor as it is; a real number as a 0-dim tensor
    on x's device in x's op-math type (float32 for half and bfloat16), as torch treats a Python
    scalar in ``b * x``. ``torch.full`` fills on the device: no host-to-device copy, no sync."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"torchext.{op}: coefficient '{name}' must be a real number or a one-element floating "
            f"tensor, got {type(value).__name__}"
        )
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    try:
        return torch.full((), value, dtype=dtype, device=x.device)
    except RuntimeError:  # beyond float32's range: inf, as in the eager expression `value * x`
        return torch.full((), value, dtype=torch.float64, device=x.device).to(dtype)


def _coefs(op: str, x, a, b, c, d):
    _check_x(op, x)
    return _coef(op, "a", a, x), _coef(op, "b", b, x), _coef(op, "c", c, x), _coef(op, "d", d, x)


def _needed(ctx, grads):
    """None for the inputs that need no gradient (Python numbers among them)."""
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad, strict=True))


# ---- cubic: a + b·x + c·x² + d·x³ ----------------------------------------------------------------


def cubic(x: Tensor, a, b, c, d) -> Tensor:
    """``a + b*x + c*x**2 + d*x**3`` with one fused kernel forward and one fused backward pass
    (``dx = g*(b + 2c*x + 3d*x**2)`` and ``da, db, dc, dd = Σg, Σg*x, Σg*x², Σg*x³``);
    differentiable in x and in each tensor coefficient, twice and more.

    ``x``: a floating tensor of any shape and strides; ``a, b, c, d``: numbers or one-element
    floating tensors on x's device. Returns a contiguous tensor shaped and typed like ``x``."""
    return _cubic(x, *_coefs("cubic", x, a, b, c, d))


class CubicFunction(torch.autograd.Function):
    """:func:`cubic` as an ``autograd.Function``: ``CubicFunction.apply(x, a, b, c, d)``."""

    @staticmethod
    def forward(ctx, x, a, b, c, d):
        coefs = _coefs("cubic", x, a, b, c, d)
        ctx.save_for_backward(x, *coefs)
        return _cubic(x, *coefs)

    @staticmethod
    def backward(ctx, grad):
        return _needed(ctx, _cubic_backward(grad, *ctx.saved_tensors))


# ---- Legendre P3(x) = ½(5x³ − 3x) ---------------------------------------------------------------


def legendre_p3(x: Tensor) -> Tensor:
    """The Legendre polynomial ``P3(x) = 0.5*(5*x**3 - 3*x)``, one fused kernel each way
    (``dx = g*1.5*(5x² - 1)``)."""
    _check_x("legendre_p3", x)
    return _legendre_p3(x)


class LegendreP3Function(torch.autograd.Function):
    """:func:`legendre_p3` as an ``autograd.Function``: the fused twin of the tutorial's
    ``LegendrePolynomial3`` (``LegendreP3Function.apply(x)``)."""

    @staticmethod
    def forward(ctx, x):
        _check_x("legendre_p3", x)
        ctx.save_for_backward(x)
        return _legendre_p3(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _legendre_p3_backward(grad, x)


# ---- affine P3: a + b·P3(c + d·x) ---------------------------------------------------------------


def affine_legendre_p3(x: Tensor, a, b, c, d) -> Tensor:
    """``a + b * P3(c + d*x)`` (the tutorial's whole model) in one forward kernel and one backward
    pass. With ``u = c + d*x``: ``dx = g*b*P3'(u)*d``, ``da = Σg``, ``db = Σg*P3(u)``,
    ``dc = Σg*b*P3'(u)``, ``dd = Σg*b*P3'(u)*x``. Arguments as for :func:`cubic`."""
    return _affine_legendre_p3(x, *_coefs("affine_legendre_p3", x, a, b, c, d))


class AffineLegendreP3Function(torch.autograd.Function):
    """:func:`affine_legendre_p3` as an ``autograd.Function``."""

    @staticmethod
    def forward(ctx, x, a, b, c, d):
        coefs = _coefs("affine_legendre_p3", x, a, b, c, d)
        ctx.save_for_backward(x, *coefs)
        return _affine_legendre_p3(x, *coefs)

    @staticmethod
    def backward(ctx, grad):
        return _needed(ctx, _affine_legendre_p3_backward(grad, *ctx.saved_tensors))


# ---- ReLU ----------------------------------------------------------------------------------------


def relu(x: Tensor, inplace: bool = False) -> Tensor:
    """``torch.relu(x)`` (or ``torch.relu_(x)`` with ``inplace=True``), bit for bit, values and
    gradients: ``x < 0 ? 0 : x`` (NaN stays NaN, ``-0.0`` stays ``-0.0``); the gradient is 0 where
    the result is ``<= 0`` (so 0 at ``x == 0``) and passes through where it is positive or NaN.
    It saves the result, not x.

    The tutorial's ``MyReLU`` differs at exactly ``x == 0``: it zeroes the gradient only where
    ``x < 0``, so at 0 it passes the gradient (1) where torch.relu and this op give 0."""
    if inplace:
        return _ReLUInplaceFunction.apply(x)
    _check_x("relu", x)
    return _relu(x)


class ReLUFunction(torch.autograd.Function):
    """:func:`relu` as an ``autograd.Function`` (``ReLUFunction.apply(x)``)."""

    @staticmethod
    def forward(ctx, x):
        _check_x("relu", x)
        y = _relu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return _relu_backward(grad, y)


class _ReLUInplaceFunction(torch.autograd.Function):
    """relu_(x): the result written back into x (which autograd then knows has changed)."""

    @staticmethod
    def forward(ctx, x):
        _check_x("relu", x)
        x.copy_(_relu(x))
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    backward = staticmethod(ReLUFunction.backward)


# ---- fake kernels: what each operator returns, for torch.compile, export and meta tensors --------


def _check_fake(op: str, x: Tensor, *coefs: Tensor) -> None:
    """The checks of csrc/common.cpp, for tensors that have no data."""
    if x.dtype not in _FLOATS:
        raise TypeError(
            f"torchext.{op}: 'x' must be a float16, bfloat16, float32 or float64 tensor, "
            f"got {x.dtype}"
        )
    for name, c in zip("abcd", coefs, strict=False):  # no coefs for the unary ops
        if c.dtype not in _FLOATS:
            raise TypeError(f"torchext.{op}: coefficient '{name}' must be a floating tensor, "
                            f"got {c.dtype}")
        if c.numel() != 1 or c.dim() > 1:
            raise ValueError(f"torchext.{op}: coefficient '{name}' must be a number or a "
                             f"one-element tensor of shape () or (1,), got shape {tuple(c.shape)}")
        if c.device != x.device:
            raise RuntimeError(f"torchext.{op}: coefficient '{name}' is on {c.device} but x is on "
                               f"{x.device}; coefficients must be on x's device")


def _check_fake_grad(op: str, grad: Tensor, x: Tensor) -> None:
    """check_like of csrc/common.cpp: the same exception types and words."""
    if grad.dtype not in _FLOATS:
        raise TypeError(f"torchext.{op}: 'grad' must be a float16, bfloat16, float32 or float64 "
                        f"tensor, got {grad.dtype}")
    if grad.shape != x.shape:
        raise ValueError(f"torchext.{op}: 'grad' has shape {list(grad.shape)} but x has shape "
                         f"{list(x.shape)}")
    if grad.dtype != x.dtype:
        raise TypeError(f"torchext.{op}: 'grad' has dtype {grad.dtype} but x has dtype {x.dtype}")
    if grad.device != x.device:
        raise RuntimeError(f"torchext.{op}: 'grad' is on {grad.device} but x is on {x.device}")


def _dense_like(x: Tensor) -> Tensor:
    return x.new_empty(x.shape)


def _coef_grads_like(*coefs: Tensor):
    return tuple(torch.empty_like(c, memory_format=torch.contiguous_format) for c in coefs)


def _register_fakes() -> None:
    def unary(op):
        def fake(x):
            _check_fake(op, x)
            return _dense_like(x)

        torch.library.register_fake(f"torchext::{op}")(fake)

    def unary_backward(op):
        def fake(grad, v):
            _check_fake(op, v)
            _check_fake_grad(op, grad, v)
            return _dense_like(v)

        torch.library.register_fake(f"torchext::{op}_backward")(fake)

    def with_coefs(op):
        def fake(x, a, b, c, d):
            _check_fake(op, x, a, b, c, d)
            return _dense_like(x)

        def fake_backward(grad, x, a, b, c, d):
            _check_fake(op, x, a, b, c, d)
            _check_fake_grad(op, grad, x)
            return (_dense_like(x), *_coef_grads_like(a, b, c, d))

        torch.library.register_fake(f"torchext::{op}")(fake)
        torch.library.register_fake(f"torchext::{op}_backward")(fake_backward)

    for op in ("legendre_p3", "relu"):
        unary(op)
        unary_backward(op)
    for op in ("cubic", "affine_legendre_p3"):
        with_coefs(op)


_register_fakes()
