"""The tutorial's training loops (the programs of ``python -m torchext demo``) give the same losses
with torchext as with the tutorial's pure-Python ops, at the tutorial's step counts."""

import pytest
import torch

from torchext import demo, reference

pytestmark = pytest.mark.slow

# The largest relative difference of a loss (at every 100th step and the last) from the reference's.
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-9}
DTYPES = pytest.mark.parametrize("dtype", list(TOLERANCE), ids=["float32", "float64"])


def program(key: str) -> demo.Program:
    return next(p for p in demo.programs() if p.key == key)


def sampled(losses):
    return losses[::100] + losses[-1:]


def assert_same_losses(result, ref, dtype):
    assert len(result.losses) == len(ref.losses)
    tolerance = TOLERANCE[dtype]
    for step, (loss, expected) in enumerate(zip(sampled(result.losses), sampled(ref.losses),
                                                strict=True)):
        assert abs(loss - expected) <= tolerance * abs(expected), (step * 100, loss, expected)


@pytest.fixture
def one_thread():
    """The two-layer net's matmuls on one thread: on a busy 2-core machine two OpenMP threads
    can be 100x slower; the results compared here are those of one setting either way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@DTYPES
@pytest.mark.parametrize("key", ["1a", "1b", "2"])
def test_sin_fits_agree(key, dtype):
    """1a: manual gradients (and autograd on the eager expression) vs torchext.cubic; 1b:
    Polynomial3 vs torchext.nn.Cubic with optim.SGD; 2: LegendrePolynomial3 vs
    LegendreP3Function vs affine_legendre_p3."""
    p = program(key)
    ref, *others = (function(demo.STEPS, "cpu", dtype, 0) for _, function in p.versions)
    assert len(ref.losses) == demo.STEPS
    assert ref.losses[-1] < ref.losses[0] / 10  # it did learn
    for (version, _), result in zip(p.versions[1:], others, strict=True):
        assert_same_losses(result, ref, dtype)
        for name, value in result.coefficients.items():
            expected = ref.coefficients[name]
            tolerance = TOLERANCE[dtype] * max(abs(expected), 1)
            assert abs(value - expected) <= tolerance, (version, name, value, expected)


def test_net_myrelu_and_torchext_relu_agree(one_thread):
    """In float64 the tutorial's net never hits an exact 0, so MyReLU's different gradient there
    does not show."""
    ref = demo.net_reference(500, "cpu", torch.float64, 0)
    result = demo.net_torchext(500, "cpu", torch.float64, 0)
    assert ref.losses[-1] < ref.losses[0] * 1e-6
    assert_same_losses(result, ref, torch.float64)


class MyReLUZeroGradientAtZero(reference.MyReLU):
    """The tutorial's MyReLU with torch.relu's gradient at exactly 0 (0 instead of 1)."""

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[input <= 0] = 0
        return grad_input


def test_net_differs_from_myrelu_only_at_zero(one_thread):
    """In float32 x·w1 does hit an exact 0 after some steps, where MyReLU passes the gradient and
    torchext.relu (like torch.relu) does not, and the trajectories part. With that one point made
    the same, the losses are bitwise the same over all 500 steps."""
    result = demo.net_torchext(500, "cpu", torch.float32, 0)
    assert result.losses != demo.net_reference(500, "cpu", torch.float32, 0).losses
    same_at_zero = demo.two_layer_net(MyReLUZeroGradientAtZero.apply, 500, "cpu", torch.float32, 0)
    assert result.losses == same_at_zero.losses
    torch_relu = demo.two_layer_net(torch.relu, 500, "cpu", torch.float32, 0)
    assert result.losses == torch_relu.losses
