"""ONNX export of models with torchext ops, out of the box: under either torch.onnx.export
(dynamo-based or legacy TorchScript-based) each function traces as its eager expression; in-place
ops export as their functional result; a program exported earlier goes to ONNX after
run_decompositions with torchext.decompositions(). Checked with onnxruntime against eager;
skipped, naming the package, where onnx, onnxscript or onnxruntime is not installed
(pip install -e ".[onnx]")."""

import io
import warnings

import pytest
import torch
from conftest import OPS, randn

import torchext

pytest.importorskip("onnx", reason="needs the onnx package")
pytest.importorskip("onnxscript", reason="needs the onnxscript package (the dynamo exporter)")
ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (to run the exported model)")


class EveryOp(torch.nn.Module):
    """Every op of the table: as a module with per-channel parameters, and as a function with
    Python-number coefficients; the in-place form where there is one."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.modules_ = torch.nn.ModuleList()
        for op in OPS:
            cls = getattr(torchext.nn, op.cls)
            if op.coefs:
                self.modules_.append(cls(num_parameters=3, dim=-1))
            else:
                self.modules_.append(cls(inplace=inplace) if op.inplace else cls())

    def forward(self, x):
        y = x
        for op, module in zip(OPS, self.modules_, strict=True):
            y = module(y) + getattr(torchext, op.name)(x, *[0.5] * len(op.coefs))
        return y


@pytest.mark.parametrize("inplace", [False, True], ids=["out of place", "in place"])
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo exporter", "legacy exporter"])
def test_export_runs_in_onnxruntime(dynamo, inplace):
    torch.manual_seed(0)
    model = EveryOp(inplace).eval()
    x = randn(4, 3)
    with torch.no_grad():
        expected = model(x.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation, onnxscript's chatter
        if dynamo:
            data = torch.onnx.export(model, (x.clone(),), dynamo=True).model_proto
            data = data.SerializeToString()
        else:
            buffer = io.BytesIO()
            torch.onnx.export(model, (x.clone(),), buffer, dynamo=False)
            data = buffer.getvalue()
    _assert_runs_as(data, x, expected)


def _assert_runs_as(data: bytes, x, expected) -> None:
    session = ort.InferenceSession(data)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-5, atol=1e-5)


def test_exported_program_runs_in_onnxruntime_after_torchext_decompositions():
    """A program saved by torch.export keeps the operators; run_decompositions with
    torchext.decompositions() turns them into their eager expressions, which ONNX translates."""
    torch.manual_seed(0)
    model = EveryOp(inplace=False).eval()
    x = randn(4, 3)
    with torch.no_grad():
        expected = model(x)
    table = torch.export.default_decompositions()
    table.update(torchext.decompositions())
    ep = torch.export.export(model, (x,)).run_decompositions(table)
    assert not [n for n in ep.graph.nodes if str(n.target).startswith("torchext.")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxscript's chatter
        data = torch.onnx.export(ep, dynamo=True).model_proto.SerializeToString()
    _assert_runs_as(data, x, expected)


def test_torch_export_keeps_the_fused_operators():
    """The decompositions are for ONNX: torch.export's own (run_decompositions, as AOTInductor
    runs them) keep torchext's operators."""
    model = EveryOp(inplace=False).eval()
    ep = torch.export.export(model, (randn(4, 3),)).run_decompositions()
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {f"torchext.{op.name}.default" for op in OPS} <= targets
