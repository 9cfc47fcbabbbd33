"""The pure-Python versions of every torchext op, as the PyTorch tutorial "Learning PyTorch with
Examples" writes them. They are the baseline that the tests compare torchext against and that the
benchmarks time; the fast path never imports this module.

Per op there are two forms:
  - the eager expression (``cubic``, ``legendre_p3``, ``affine_legendre_p3``, ``relu``), which
    autograd differentiates: the numerical reference of the tests;
  - the tutorial's hand-written ``torch.autograd.Function`` (``LegendrePolynomial3``, ``MyReLU``,
    and in its style ``CubicFunction``): the "pure-Python version" of the benchmarks.
``EAGER`` and ``TUTORIAL`` map each op name to them.
"""

import math

import torch

__all__ = [
    "EAGER",
    "TUTORIAL",
    "CubicFunction",
    "LegendrePolynomial3",
    "MyReLU",
    "Polynomial3",
    "affine_legendre_p3",
    "affine_legendre_p3_tutorial",
    "cubic",
    "cubic_grads",
    "legendre_p3",
    "relu",
    "sin_data",
]


# ---- cubic ---------------------------------------------------------------------------------------


def cubic(x, a, b, c, d):
    """The tutorial's polynomial: ``y = a + b x + c x^2 + d x^3``."""
    return a + b * x + c * x**2 + d * x**3


def cubic_grads(x, grad_y_pred):
    """The tutorial's hand-derived coefficient gradients (its tensor program)."""
    return (
        grad_y_pred.sum(),
        (grad_y_pred * x).sum(),
        (grad_y_pred * x**2).sum(),
        (grad_y_pred * x**3).sum(),
    )


class CubicFunction(torch.autograd.Function):
    """The cubic as a tutorial-style Function: forward and hand-written backward in torch ops."""

    @staticmethod
    def forward(ctx, x, a, b, c, d):
        ctx.save_for_backward(x, a, b, c, d)
        return a + b * x + c * x**2 + d * x**3

    @staticmethod
    def backward(ctx, grad_output):
        x, a, b, c, d = ctx.saved_tensors
        grad_x = grad_output * (b + 2 * c * x + 3 * d * x**2)
        grad_a, grad_b, grad_c, grad_d = cubic_grads(x, grad_output)
        return (
            grad_x,
            grad_a.reshape(a.shape),
            grad_b.reshape(b.shape),
            grad_c.reshape(c.shape),
            grad_d.reshape(d.shape),
        )


class Polynomial3(torch.nn.Module):
    """The tutorial's module: four scalar parameters drawn from ``randn(())``, in the order a, b,
    c, d."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(()))
        self.b = torch.nn.Parameter(torch.randn(()))
        self.c = torch.nn.Parameter(torch.randn(()))
        self.d = torch.nn.Parameter(torch.randn(()))

    def forward(self, x):
        return self.a + self.b * x + self.c * x**2 + self.d * x**3

    def string(self):
        a, b, c, d = (p.item() for p in (self.a, self.b, self.c, self.d))
        return f"y = {a} + {b} x + {c} x^2 + {d} x^3"


# ---- Legendre P3 ---------------------------------------------------------------------------------


def legendre_p3(x):
    """``P3(x) = 0.5 * (5 x^3 - 3 x)``."""
    return 0.5 * (5 * x**3 - 3 * x)


class LegendrePolynomial3(torch.autograd.Function):
    """The tutorial's Function, unchanged."""

    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return 0.5 * (5 * input**3 - 3 * input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return grad_output * 1.5 * (5 * input**2 - 1)


def affine_legendre_p3(x, a, b, c, d):
    """The tutorial's model ``a + b P3(c + d x)`` as one eager expression."""
    return a + b * legendre_p3(c + d * x)


def affine_legendre_p3_tutorial(x, a, b, c, d):
    """The tutorial's model as the tutorial computes it: ``a + b * P3.apply(c + d * x)``."""
    return a + b * LegendrePolynomial3.apply(c + d * x)


# ---- ReLU ----------------------------------------------------------------------------------------


def relu(x):
    """``torch.relu``: the eager reference of torchext.relu."""
    return torch.relu(x)


class MyReLU(torch.autograd.Function):
    """The tutorial's Function, unchanged. Unlike torch.relu, its gradient at exactly 0 is 1."""

    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return input.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[input < 0] = 0
        return grad_input


EAGER = {
    "cubic": cubic,
    "legendre_p3": legendre_p3,
    "affine_legendre_p3": affine_legendre_p3,
    "relu": relu,
}

TUTORIAL = {
    "cubic": CubicFunction.apply,
    "legendre_p3": LegendrePolynomial3.apply,
    "affine_legendre_p3": affine_legendre_p3_tutorial,
    "relu": MyReLU.apply,
}


def sin_data(n: int = 2000, dtype=torch.float32, device="cpu"):
    """The tutorial's data: ``n`` points of ``sin(x)`` on ``[-pi, pi]``."""
    x = torch.linspace(-math.pi, math.pi, n, dtype=dtype, device=device)
    return x, torch.sin(x)


def __dir__():  # dir() and completion: the public names, not this module's imports
    return sorted(__all__)
