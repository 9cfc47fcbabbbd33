"""torchext.relu beyond the shared checks (tests/test_ops.py): bitwise equality with torch.relu
(floating and integer dtypes, NaN bits), the in-place form, and how it differs from the tutorial's
MyReLU at zero."""

import pytest
import torch
from conftest import DTYPES, bits, randn, same_bits, torch_relu

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
    y, y_ref = torchext.relu(x), torch_relu(x_ref)
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
    assert torch.equal(bits(y[~nan]), bits(torch_relu(x[~nan])))


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


# ---- in place: the registered operator torchext::relu_ ------------------------------------------


def _refused_cases(device):
    """Inputs torch.relu_ refuses under grad mode, each made afresh: (name, make)."""

    def view_made_under_no_grad():
        base = randn(6, device=device, requires_grad=True) * 1
        with torch.no_grad():
            return base[1:]

    return {
        "leaf that requires grad": lambda: randn(6, device=device, requires_grad=True),
        "view of such a leaf": lambda: randn(6, device=device, requires_grad=True)[1:],
        "view made under no_grad": view_made_under_no_grad,
        "output of unbind":
            lambda: (randn(2, 6, device=device, requires_grad=True) * 1).unbind()[0],
    }


@pytest.mark.parametrize("case", list(_refused_cases("cpu")))
def test_inplace_refuses_as_torch_before_writing(device, case):
    """Where torch.relu_ refuses, relu(inplace=True) refuses with the same error, and x is left
    as it was (nothing written before the check)."""
    make = _refused_cases(device)[case]
    with pytest.raises(RuntimeError) as theirs:
        torch.relu_(make())
    x = make()
    before = x.detach().clone()
    for entry in (lambda t: torchext.relu(t, inplace=True), torchext.nn.ReLU(inplace=True)):
        with pytest.raises(RuntimeError) as ours:
            entry(x)
        assert str(ours.value).splitlines()[0] == str(theirs.value).splitlines()[0]
        assert torch.equal(x.detach(), before)


def test_inplace_bumps_the_version_once_and_keeps_the_tensor(device):
    for grad in (False, True):
        leaf = randn(20, device=device, requires_grad=grad)
        x = leaf * 1
        version = x._version
        y = torchext.relu(x, inplace=True)
        assert y is x and x._version == version + 1
        assert torch.equal(x, torch.relu(leaf.detach() * 1))


def test_inplace_on_strided_views_and_overlap(device):
    base = randn(6, 8, device=device)
    expected = base.clone()
    torch.relu_(expected[:, ::2])
    torchext.relu(base[:, ::2], inplace=True)  # not dense: computed aside, written back
    assert torch.equal(base, expected)
    with pytest.raises(RuntimeError, match="more than one element"):
        torchext.relu(randn(1, 8, device=device).expand(4, 8), inplace=True)


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
def test_inplace_module_compiles_to_one_graph(mode):
    """torch.compile(fullgraph=True) of a model with the in-place module, with and without grad:
    one graph, eager's values (and gradients where there are some)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torchext.nn.ReLU(inplace=True),
                                torch.nn.Linear(8, 2))
    x = randn(4, 8)
    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad,
               "inference_mode": torch.inference_mode}[mode]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model, fullgraph=True)
    with context():
        got, want = compiled(x), model(x)
    torch.testing.assert_close(got, want)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    if mode == "grad":
        got.sum().backward()
        compiled_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        model(x).sum().backward()
        for a, p in zip(compiled_grads, model.parameters(), strict=True):
            torch.testing.assert_close(a, p.grad)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*` is deprecated:FutureWarning")
def test_inplace_module_traces_with_jit():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torchext.nn.ReLU(inplace=True))
    x = randn(4, 8)
    traced = torch.jit.trace(model, x)
    assert "torchext::relu_" in str(traced.inlined_graph)
    x2 = randn(4, 8, seed=3)
    torch.testing.assert_close(traced(x2), model(x2))


def test_backward_of_expanded_grad_is_not_materialised():
    """The gradient of y.sum() is one value expanded (stride 0): the backward reads it where it is,
    so it allocates no more than torch.relu's backward (dx alone)."""
    from torch.profiler import ProfilerActivity, profile

    def peak(fn):
        x = randn(1 << 20, requires_grad=True)
        y = fn(x)
        g = torch.ones((), dtype=x.dtype).expand_as(y)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            torch.autograd.grad(y, x, g)
        running = top = 0
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        for e in sorted(events, key=lambda e: e.start_ns()):
            running += e.nbytes()
            top = max(top, running)
        return top

    assert peak(torchext.relu) <= peak(torch.relu)
    assert peak(torchext.relu) < 2 * (1 << 20) * 4  # dx, and no copy of the gradient
