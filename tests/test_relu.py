"""torchext.relu beyond the shared checks (tests/test_ops.py): bitwise equality with torch.relu
(floating and integer dtypes, NaN bits), the in-place form, and how it differs from the tutorial's
MyReLU at zero."""

import pytest
import torch
from conftest import DTYPES, bits, randn, same_bits

import torchext
from torchext import reference


def special_values(dtype, device):
    info = torch.finfo(dtype)
    vals = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), info.max, -info.max,
            info.tiny, -info.tiny, info.smallest_normal / 4, -info.smallest_normal / 4, info.eps]
    special = torch.tensor(vals, dtype=torch.float64).to(dtype)
    # Extreme and random values, with the specials scattered through a vector-sized body.
    body = randn(1000, dtype=dtype) * torch.logspace(-30, 30, 1000).to(dtype)
    return torch.cat([special, body, special]).to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bitwise_equal_to_torch_relu(device, dtype):
    x = special_values(dtype, device).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = torchext.relu(x), torch.relu(x_ref)
    assert same_bits(y, y_ref)
    g = randn(*x.shape, dtype=dtype, device=device)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_ref,) = torch.autograd.grad(y_ref, x_ref, g)
    assert same_bits(gx, gx_ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_keeps_every_nan_bit_pattern(device, dtype):
    """Every 16-bit pattern: non-NaNs exactly as torch.relu; a NaN comes back with its own bits
    (torch's vectorized relu rewrites some NaN payloads), on every ISA path of the CPU loops."""
    x = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype).to(device)
    y = torchext.relu(x)
    nan = torch.isnan(x)
    assert torch.equal(bits(y[nan]), bits(x[nan]))
    assert torch.equal(bits(y[~nan]), bits(torch.relu(x[~nan])))


INTEGERS = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]


@pytest.mark.parametrize("dtype", INTEGERS, ids=str)
def test_integer_dtypes_as_torch_relu(device, dtype):
    info = torch.iinfo(dtype)
    x = torch.tensor([info.min, -1, 0, 1, info.max], dtype=dtype)
    x = torch.cat([x, torch.randint(info.min, info.max, (1000,), dtype=dtype)]).to(device)
    assert torch.equal(torchext.relu(x), torch.relu(x))
    assert torchext.relu(x).dtype == dtype
    assert torch.equal(torchext.relu(x.view(-1, 5).t()), torch.relu(x.view(-1, 5).t()))


def test_gradient_at_zero_differs_from_tutorial_myrelu(device):
    x = torch.tensor([-1.0, -0.0, 0.0, 2.0], device=device, requires_grad=True)
    (ours,) = torch.autograd.grad(torchext.relu(x).sum(), x)
    (tutorial,) = torch.autograd.grad(reference.MyReLU.apply(x).sum(), x)
    assert ours.tolist() == [0.0, 0.0, 0.0, 1.0]  # as torch.relu
    assert tutorial.tolist() == [0.0, 1.0, 1.0, 1.0]  # MyReLU zeroes only x < 0


@pytest.mark.parametrize("module", [False, True], ids=["function", "module"])
def test_inplace(device, module):
    leaf = randn(50, device=device, requires_grad=True)
    x = leaf * 1  # in-place needs a non-leaf, as for torch.relu_
    x_ref = leaf.detach().clone().requires_grad_() * 1
    y = torchext.nn.ReLU(inplace=True)(x) if module else torchext.relu(x, inplace=True)
    assert y.data_ptr() == x.data_ptr()
    y_ref = torch.relu_(x_ref)
    assert torch.equal(y, y_ref)
    y.sum().backward()
    expected = (y_ref > 0).to(leaf.dtype)
    torch.testing.assert_close(leaf.grad, expected)


def test_inplace_on_leaf_requiring_grad_raises(device):
    x = randn(5, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="in-place"):
        torchext.relu(x, inplace=True)


@pytest.mark.parametrize("fn", [torchext.relu, torchext.ReLUFunction.apply],
                         ids=["function", "Function.apply"])
def test_saves_only_the_result(fn):
    x = randn(100, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fn(x)
    assert len(saved) == 1 and saved[0].data_ptr() == y.data_ptr()
