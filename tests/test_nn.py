"""torchext.nn: drop-ins for the tutorial's modules and torch.nn.ReLU."""

import pytest
import torch
from conftest import randn

import torchext
from torchext import reference


def test_cubic_initialises_like_polynomial3():
    torch.manual_seed(7)
    ours = torchext.nn.Cubic()
    torch.manual_seed(7)
    tutorial = reference.Polynomial3()
    for name in "abcd":
        assert torch.equal(getattr(ours, name), getattr(tutorial, name))
    assert [n for n, _ in ours.named_parameters()] == ["a", "b", "c", "d"]


def test_cubic_loads_a_polynomial3_state_dict():
    tutorial = reference.Polynomial3()
    ours = torchext.nn.Cubic()
    ours.load_state_dict(tutorial.state_dict())
    x = randn(64)
    torch.testing.assert_close(ours(x), tutorial(x))


def test_cubic_given_values_and_repr():
    m = torchext.nn.Cubic(1, 2, 3, 4.5)
    assert [p.item() for p in m.parameters()] == [1, 2, 3, 4.5]
    assert "y = 1 + 2 x + 3 x^2 + 4.5 x^3" in repr(m)
    assert m.string() == "y = 1 + 2 x + 3 x^2 + 4.5 x^3"


def test_affine_legendre_p3_defaults_to_tutorial_init():
    m = torchext.nn.AffineLegendreP3()
    assert [p.item() for p in m.parameters()] == pytest.approx([0.0, -1.0, 0.0, 0.3])
    assert "P3(" in repr(m)
    x = randn(33)
    expected = reference.affine_legendre_p3(x, 0.0, -1.0, 0.0, 0.3)
    torch.testing.assert_close(m(x), expected)


def test_modules_dtype_device_and_meta():
    m = torchext.nn.Cubic(dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    meta = torchext.nn.AffineLegendreP3(device="meta")
    assert "?" in repr(meta)
    assert meta(torch.empty(3, device="meta")).shape == (3,)


def test_legendre_p3_and_relu_modules():
    x = randn(40)
    torch.testing.assert_close(torchext.nn.LegendreP3()(x), reference.legendre_p3(x))
    assert torch.equal(torchext.nn.ReLU()(x), torch.relu(x))
    assert repr(torchext.nn.ReLU(inplace=True)) == "ReLU(inplace=True)"


def test_modules_train_in_a_sequential():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torchext.nn.ReLU(), torch.nn.Linear(8, 1),
                                torchext.nn.Cubic())
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = randn(32, 4), randn(32, 1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.parameters())
