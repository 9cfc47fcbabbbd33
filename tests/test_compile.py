"""The ecosystem: torch.compile (Inductor, fullgraph) trains the tutorial's models to eager
torchext's losses; compiled autograd gives eager's gradients; torch.export captures a module
using every op and its program runs; CUDA graph capture and replay of forward+backward matches
eager.

torch.compile is slow on a small machine, so both tutorial models share one compiled function
(one forward graph, one backward graph), and the test checks that nothing recompiles.
"""

import contextlib
import copy
import math

import pytest
import torch
from conftest import CUDA_SKIP, EveryOp

import torchext

STEPS = 50


# ---- torch.compile: the tutorial's training loops ------------------------------------------------


def _tutorial_models():
    """The tutorial's two models as torchext modules, with the tutorial's initial values: the
    cubic drawn from randn (seed 0), the Legendre model at (0, -1, 0, 0.3)."""
    torch.manual_seed(0)
    return torchext.nn.Cubic(), torchext.nn.AffineLegendreP3()


def _train(losses_fn, models):
    """The tutorial's loop: sum-of-squares loss, plain SGD at its learning rates."""
    x = torch.linspace(-math.pi, math.pi, 2000)
    y = torch.sin(x)
    rates = (1e-6, 5e-6)  # the tutorial's, for the cubic and for the Legendre model
    history = []
    for _ in range(STEPS):
        losses = losses_fn(x, y)
        sum(losses).backward()
        with torch.no_grad():
            for model, lr in zip(models, rates, strict=True):
                for p in model.parameters():
                    p -= lr * p.grad
                    p.grad = None
        history.append([loss.item() for loss in losses])
    return history, [p.detach().clone() for m in models for p in m.parameters()]


@pytest.mark.slow
def test_compile_trains_tutorial_models_like_eager():
    def losses_of(models):
        cubic, legendre = models

        def losses(x, y):
            return (cubic(x) - y).pow(2).sum(), (legendre(x) - y).pow(2).sum()

        return losses

    eager_models = _tutorial_models()
    eager, eager_params = _train(losses_of(eager_models), eager_models)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled_models = _tutorial_models()
    compiled_fn = torch.compile(losses_of(compiled_models), fullgraph=True)
    compiled, compiled_params = _train(compiled_fn, compiled_models)

    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1, "it recompiled"
    assert eager[-1][0] < eager[0][0] and eager[-1][1] < eager[0][1], "the loops did not learn"
    # Inductor sums the loss in its own order: float32 rounding apart, the same trajectory.
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-5, atol=0)
    for p, q in zip(compiled_params, eager_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


# ---- torch.export --------------------------------------------------------------------------------


TORCHEXT_OPS = {getattr(torch.ops.torchext, name).default for name in torchext.functional.OPS}


def test_export_every_op():
    model = EveryOp()
    x = torch.linspace(-2, 2, 37)
    ep = torch.export.export(model, (x,))
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert TORCHEXT_OPS <= targets, f"the exported graph lacks torchext ops: {targets}"
    torch.testing.assert_close(ep.module()(x), model(x), rtol=0, atol=0)
    # A different input of the same shape: the program is not a constant.
    x2 = torch.randn(37)
    torch.testing.assert_close(ep.module()(x2), model(x2), rtol=0, atol=0)


def test_export_with_a_dynamic_dimension():
    """The Meta kernels (csrc/meta.cpp) take symbolic shapes: one program serves every length."""
    model = EveryOp()
    n = torch.export.Dim("n", min=2, max=1 << 20)
    ep = torch.export.export(model, (torch.randn(8, 3),), dynamic_shapes={"x": {0: n}})
    for rows in (2, 5, 1000):
        x = torch.randn(rows, 3)
        torch.testing.assert_close(ep.module()(x), model(x), rtol=0, atol=0)


def test_export_per_channel_with_dynamic_batch_and_spatial_sizes():
    """Per-channel coefficients (C, 1, 1) on a channels-last image batch whose N, H and W are
    symbolic: the Meta kernels give a channels-last result of symbolic shape, and the program
    serves other sizes, channels-last or not, with the eager results."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torchext.nn.Cubic(num_parameters=4, dim=-3), torchext.nn.ReLU())
    x = torch.randn(2, 4, 6, 5).to(memory_format=torch.channels_last)
    dims = {0: torch.export.Dim("n", min=2), 2: torch.export.Dim("h", min=2),
            3: torch.export.Dim("w", min=2)}
    ep = torch.export.export(model, (x,), dynamic_shapes={"input": dims})
    assert ep.module()(x).is_contiguous(memory_format=torch.channels_last)
    for shape in ((3, 4, 7, 9), (2, 4, 2, 33)):
        x = torch.randn(shape)
        for layout in (x, x.to(memory_format=torch.channels_last)):
            torch.testing.assert_close(ep.module()(layout), model(layout), rtol=0, atol=0)


def test_inductor_compiles_the_operators_where_the_environment_says_ci(monkeypatch):
    """Inductor refuses to fall back to an operator that torch._decomp's global table lists when
    the environment variable CI is set, as CI services set it. torchext lists none there (ONNX
    exports trace the eager expressions instead), so a user's CI compiles models with its ops."""
    from torch._inductor import config, lowering

    monkeypatch.setenv("CI", "true")
    for overload in TORCHEXT_OPS:  # as in a fresh process: no fallback made yet
        monkeypatch.delitem(lowering.lowerings, overload, raising=False)
    torch._dynamo.reset()
    model, x = EveryOp(), torch.linspace(-2, 2, 37)
    with torch.no_grad(), config.patch(fx_graph_cache=False):  # lowered afresh, not cached
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))
    torch._dynamo.reset()


def _torchext_calls(gm) -> list:
    return [n.target for n in gm.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("torchext.")]


@pytest.mark.parametrize("inplace", [False, True], ids=["out of place", "in place"])
@pytest.mark.parametrize("op", list(torchext.functional.OPS.values()), ids=lambda op: op.name)
def test_compile_as_eager_ops_trace_as_torch_export_keeps_the_operator(op, inplace):
    """torch.compile traces an op marked compile_as_eager (ReLU) as its eager expression, so that
    Inductor can fuse it with its neighbours; every other op stays the operator. torch.export
    keeps the operator for all (the saved program runs torchext's kernels)."""
    if inplace and not op.inplace:
        pytest.skip(f"{op.name} has no in-place form")
    kwargs = {"inplace": True} if inplace else {}
    coefs = [torch.tensor(0.5)] * len(op.coefs)

    class Model(torch.nn.Module):
        def forward(self, x):
            return getattr(torchext, op.name)(x * 1, *coefs, **kwargs)

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = torch.randn(3, 5)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(Model(), backend=backend, fullgraph=True)(x),
                               Model()(x), rtol=0, atol=0)
    (graph,) = graphs
    assert bool(_torchext_calls(graph)) == (not op.compile_as_eager), graph.code
    exported = torch.export.export(Model(), (x,)).graph_module
    name = op.name + ("_" if inplace else "")
    assert [str(t) for t in _torchext_calls(exported)] == [f"torchext.{name}.default"]


@pytest.mark.slow
def test_compile_with_dynamic_shapes_takes_every_length_without_recompiling():
    model = EveryOp()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model, dynamic=True, fullgraph=True)
    for rows in (4, 5, 1000):  # not 3: duck sizing would tie it to the 3 columns
        x = torch.randn(rows, 3)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1, "it recompiled"


# ---- compiled autograd ---------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_autograd_gives_eager_gradients():
    """Compiled autograd traces the backward graph itself: each op's derivative node (the C++
    torch::autograd::Function of csrc/autograd.cpp) must let it, and give eager's gradients. The
    forward runs eagerly, so that those nodes, not a torch.compile'd forward's single backward
    node, are in the graph. benchmarks/NOTES.md §6 weighs this against a faster, hand-written
    autograd node, which would fail here unless it implemented compiled autograd's internals."""
    from torch._dynamo import compiled_autograd

    enable = getattr(compiled_autograd, "_enable", None) or compiled_autograd.enable
    model = EveryOp()
    x = torch.linspace(-2, 2, 37, requires_grad=True)
    params = [x, *model.parameters()]

    def gradients(compiled: bool):
        loss = model(x).square().sum()
        with enable(torch.compile(backend="eager")) if compiled else contextlib.nullcontext():
            loss.backward()
        grads = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        return grads

    eager = gradients(compiled=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = gradients(compiled=True)
    assert torch._dynamo.utils.counters["compiled_autograd"]["captures"] >= 1, "not captured"
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ---- CUDA graphs ---------------------------------------------------------------------------------


@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
def test_cuda_graph_capture_and_replay_forward_backward():
    """Forward and backward of every op captured in one CUDA graph (no host-device sync in them,
    Python-number coefficients filled on the device), replayed on new inputs: the same values and
    gradients as eager."""
    model = EveryOp().cuda()
    static_x = torch.randn(4099, device="cuda", requires_grad=True)
    params = [static_x, *model.parameters()]

    def step():
        y = model(static_x) + torchext.cubic(static_x, 1.0, -0.5, 0.25, 0.125)
        y.sum().backward()
        return y

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside the capture, as the CUDA graph docs require
            for p in params:
                p.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    for p in params:
        p.grad = None
    with torch.cuda.graph(graph):
        static_y = step()

    for seed in range(3):
        gen = torch.Generator("cuda").manual_seed(seed)
        new_x = torch.randn(4099, device="cuda", generator=gen)
        with torch.no_grad():
            static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        replayed = [static_y.detach().clone()] + [p.grad.clone() for p in params]

        x = new_x.clone().requires_grad_()
        eager_model = copy.deepcopy(model)  # model's .grad are the graph's static tensors
        eager_model.zero_grad(set_to_none=True)
        y = eager_model(x) + torchext.cubic(x, 1.0, -0.5, 0.25, 0.125)
        y.sum().backward()
        eager = [y.detach(), x.grad] + [p.grad for p in eager_model.parameters()]
        assert len(replayed) == len(eager)
        for r, e in zip(replayed, eager, strict=True):
            torch.testing.assert_close(r, e, rtol=0, atol=0)
