"""torchext.nn: drop-ins for the tutorial's modules and torch.nn.ReLU."""

import sys

import pytest
import torch
from conftest import COEF_OPS, OPS, randn

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
    m = torchext.nn.Cubic(a=1, b=2, c=3, d=4.5)
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


def test_given_numbers_are_taken_in_the_modules_dtype():
    """A number given as a value becomes the module's dtype from float64: 0.1 with
    dtype=torch.float64 is float64's 0.1 (not float32's 0.1000000015); an int beyond int64's range
    (which torch.as_tensor refuses) is the float it is; beyond float64's, an error naming it."""
    for cls in (torchext.nn.Cubic, torchext.nn.AffineLegendreP3):
        m = cls(a=0.1, b=10**40, dtype=torch.float64)
        assert (m.a.item(), m.b.item()) == (0.1, 1e40)
        assert cls(a=0.1).a.item() == torch.tensor(0.1).item()  # float32 by default
        with pytest.raises(OverflowError, match=f"torchext.nn.{cls.__name__}: .*'b'"):
            cls(b=10**400)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_a_wrong_argument_names_the_module(op):
    """An argument the module does not take is an error naming the module: Python's own, as
    torch.nn.ReLU's ("ReLU.__init__() got an unexpected keyword argument ..."), not a private base
    class's or a factory's local function's; the modules with coefficients name what they do
    not know among their keyword values."""
    cls = getattr(torchext.nn, op.cls)
    name = rf"{op.cls}\.__init__\(\)" if sys.version_info >= (3, 11) else r"__init__\(\)"
    unexpected = (rf"^torchext\.nn\.{op.cls}: unexpected arguments \['bogus'\]" if op.coefs
                  else rf"^{name} got an unexpected keyword argument 'bogus'")
    with pytest.raises(TypeError, match=unexpected):
        cls(bogus=1)
    with pytest.raises(TypeError, match=rf"^{name} takes from 1 to"):
        cls(1, 1, 1, 1)


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


def test_a_module_per_op():
    assert torchext.nn.__all__ == [op.cls for op in OPS]
    for op in OPS:
        m = getattr(torchext.nn, op.cls)()
        assert [n for n, _ in m.named_parameters()] == list(op.coefs)
        assert all(p.dim() == 0 for p in m.parameters())


@pytest.mark.parametrize("op", COEF_OPS, ids=lambda op: op.name)
@pytest.mark.parametrize("shape, dim, view", [
    ((2, 8, 5, 3), 1, (8, 1, 1)),   # channels first
    ((2, 5, 8), -1, (8,)),           # channels last, counted from the end
    ((2, 5, 8), 2, (8,)),
    ((4, 8), 1, (8,)),
], ids=["NCHW dim=1", "BLC dim=-1", "BLC dim=2", "NC dim=1"])
def test_per_channel_module(op, shape, dim, view):
    """num_parameters=C: (C,) parameters applied along dim, as nn.PReLU; the same values and
    gradients as the eager expression with the parameters viewed against x."""
    torch.manual_seed(0)
    m = getattr(torchext.nn, op.cls)(num_parameters=8, dim=dim)
    assert all(p.shape == (8,) for p in m.parameters())
    assert "num_parameters=8" in repr(m) and f"dim={dim}" in repr(m)
    x = randn(*shape, requires_grad=True)
    y = m(x)
    params = list(m.parameters())
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    x_ref = x.detach().clone().requires_grad_()
    y_ref = reference.EAGER[op.name](x_ref, *[p.view(view) for p in ref_params])
    torch.testing.assert_close(y, y_ref)
    g = randn(*shape, seed=4)
    got = torch.autograd.grad(y, [x, *params], g)
    want = torch.autograd.grad(y_ref, [x_ref, *ref_params], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_per_channel_module_initial_values_and_state_dict():
    m = torchext.nn.AffineLegendreP3(num_parameters=3)
    assert [p.tolist() for p in m.parameters()] == [[0.0] * 3, [-1.0] * 3, [0.0] * 3,
                                                    pytest.approx([0.3] * 3)]
    m2 = torchext.nn.Cubic(num_parameters=3, a=torch.tensor([1.0, 2.0, 3.0]), b=0.5)
    assert m2.a.tolist() == [1.0, 2.0, 3.0] and m2.b.tolist() == [0.5] * 3
    m3 = torchext.nn.Cubic(num_parameters=3)
    m3.load_state_dict(m2.state_dict())
    x = randn(2, 3, 4)
    torch.testing.assert_close(m3(x), m2(x))


@pytest.mark.parametrize("op", COEF_OPS, ids=lambda op: op.name)
@pytest.mark.parametrize("num_parameters", [1, 3])
def test_reset_parameters_sets_the_initial_values_again(op, num_parameters):
    """reset_parameters, as torch.nn's modules have it: the values given (or the op's defaults)
    again, the others drawn from randn as a module made after the same seed draws them."""
    cls = getattr(torchext.nn, op.cls)
    a = torch.arange(float(num_parameters)).squeeze()
    first = op.coefs[0]
    m = cls(num_parameters, **{first: a})
    params = list(m.parameters())
    with torch.no_grad():
        for p in params:
            p.fill_(7.0)
    torch.manual_seed(11)
    m.reset_parameters()
    torch.manual_seed(11)
    shape = () if num_parameters == 1 else (num_parameters,)
    given = {**dict(zip(op.coefs, op.init or (None,) * len(op.coefs), strict=True)), first: a}
    for name in op.coefs:  # the draws in the op's order, as the tutorial's Polynomial3 makes them
        want = torch.randn(shape) if given[name] is None else torch.full(shape, 0.0) + given[name]
        assert torch.equal(getattr(m, name), want), name
    assert all(p is q for p, q in zip(m.parameters(), params, strict=True))  # refilled in place


@pytest.mark.parametrize("op", COEF_OPS, ids=lambda op: op.name)
def test_a_module_made_on_the_meta_device_gets_its_values(op):
    """Deferred initialization (as FSDP does it): made on the meta device, then to_empty and
    reset_parameters give the module that would have been made on the CPU."""
    cls = getattr(torchext.nn, op.cls)
    with torch.device("meta"):
        m = cls(4, dim=-1, b=torch.tensor([1.0, 2.0, 3.0, 4.0], device="cpu"), dtype=torch.float64)
    assert all(p.is_meta for p in m.parameters())
    m.to_empty(device="cpu")
    torch.manual_seed(5)
    m.reset_parameters()
    torch.manual_seed(5)
    want = cls(4, dim=-1, b=torch.tensor([1.0, 2.0, 3.0, 4.0]), dtype=torch.float64)
    for name in op.coefs:
        assert torch.equal(getattr(m, name), getattr(want, name)), name
    x = randn(2, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x), want(x))


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_jit_script_is_an_error_naming_the_module(op):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), getattr(torchext.nn, op.cls)())
    with pytest.raises(RuntimeError, match=f"torchext.nn.{op.cls}: torch.jit.script is not "
                                           f"supported .*torch.jit.trace, torch.export"):
        torch.jit.script(model)
