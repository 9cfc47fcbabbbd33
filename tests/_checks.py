"""The checks every op must pass, written once. Each tests/test_<op>.py subclasses ``OpChecks``
with ``op = "<name>"``; pytest collects the inherited tests per op (as Liger-Kernel and
pytorch_scatter parametrize over ops), and the file adds what is particular to its op."""

import math

import pytest
import torch
from conftest import SIZES, TOLERANCES, assert_close, coefs, randn
from torch.autograd import gradcheck, gradgradcheck

import torchext
from torchext import reference

COEF_OPS = {"cubic", "affine_legendre_p3"}
FUNCTIONS = {
    "cubic": torchext.CubicFunction,
    "legendre_p3": torchext.LegendreP3Function,
    "affine_legendre_p3": torchext.AffineLegendreP3Function,
    "relu": torchext.ReLUFunction,
}


def _ref_grads(op, x, cs, g):
    """Value and gradients of the eager reference in float64, from the same (rounded) inputs."""
    x64 = x.detach().double().requires_grad_()
    c64 = [c.detach().double().requires_grad_() for c in cs]
    # The op returns x's shape; the eager expression broadcasts a 0-dim x with a (1,) coefficient
    # up to (1,), so bring it back to x's shape.
    y = reference.EAGER[op](x64, *c64).reshape(x.shape)
    return y, torch.autograd.grad(y, [x64, *c64], g.double())


class OpChecks:
    op: str

    # ---- helpers ----------------------------------------------------------------------------

    @pytest.fixture(params=["function", "Function.apply"])
    def fn(self, request):
        """The two ways in: ``torchext.<op>`` (the operator, differentiated in C++) and
        ``<Op>Function.apply`` (the Python autograd.Function over the same operators)."""
        if request.param == "function":
            return getattr(torchext, self.op)
        return FUNCTIONS[self.op].apply

    @property
    def operator(self):
        return getattr(torch.ops.torchext, self.op).default

    @property
    def backward_operator(self):
        return getattr(torch.ops.torchext, f"{self.op}_backward").default

    @property
    def has_coefs(self):
        return self.op in COEF_OPS

    def make(self, shape, dtype, device, coef_dtype=torch.float32, coef_shape=(), grad=True):
        x = randn(*shape, dtype=dtype, device=device, requires_grad=grad)
        cs = coefs(coef_dtype, device, coef_shape, requires_grad=grad) if self.has_coefs else []
        return x, cs

    def check_against_reference(self, fn, x, cs, dtype):
        y = fn(x, *cs)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        g = randn(*x.shape, dtype=dtype, device=x.device, seed=1)
        grads = torch.autograd.grad(y, [x, *cs], g)
        y_ref, grads_ref = _ref_grads(self.op, x, cs, g)
        assert_close(y, y_ref, dtype)
        assert_close(grads[0], grads_ref[0], dtype)
        # Coefficient gradients are sums over x, accumulated in float32 (float64 for float64 x)
        # and stored in the coefficient's dtype: compare them at the coarser of the two, the
        # tolerance widened with the square root of the count.
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for got, want, c in zip(grads[1:], grads_ref[1:], cs, strict=True):
            assert got.shape == c.shape and got.dtype == c.dtype
            tol_dtype = max(acc, c.dtype, key=lambda t: TOLERANCES[t][1])
            assert_close(got, want, tol_dtype, scale=math.sqrt(max(x.numel(), 1)))

    # ---- values and gradients ------------------------------------------------------------------

    @pytest.mark.parametrize("n", SIZES)
    def test_matches_reference(self, fn, device, dtype, n):
        x, cs = self.make((n,), dtype, device)
        self.check_against_reference(fn, x, cs, dtype)

    @pytest.mark.parametrize("coef_dtype", [torch.float64, torch.bfloat16])
    @pytest.mark.parametrize("coef_shape", [(), (1,)])
    def test_coefficient_dtypes_and_shapes(self, fn, device, coef_dtype, coef_shape):
        if not self.has_coefs:
            pytest.skip(f"{self.op} has no coefficients")
        x, cs = self.make((5, 7), torch.float32, device, coef_dtype, coef_shape)
        self.check_against_reference(fn, x, cs, torch.float32)

    def test_python_number_coefficients(self, fn, device):
        if not self.has_coefs:
            pytest.skip(f"{self.op} has no coefficients")
        x = randn(101, device=device, requires_grad=True)
        nums = [0.5, -1, 0.25, 0.3]
        y = fn(x, *nums)
        expected = reference.EAGER[self.op](x.detach().double(), *nums)
        assert_close(y, expected, torch.float32)
        (gx,) = torch.autograd.grad(y.sum(), [x])
        assert gx.shape == x.shape

    @pytest.mark.parametrize(
        "make_view",
        [
            lambda t: t.t(),
            lambda t: t[:, ::3],
            lambda t: t[1:, 2:-1],
            lambda t: t[0:1, 0:1].expand(4, 5),
        ],
        ids=["transposed", "step3", "offset", "expanded"],
    )
    def test_non_contiguous(self, fn, device, make_view):
        base, cs = self.make((9, 20), torch.float32, device)
        view = make_view(base)
        x_contig = view.detach().contiguous().requires_grad_()
        y_view, y_contig = fn(view, *cs), fn(x_contig, *cs)
        torch.testing.assert_close(y_view, y_contig, rtol=0, atol=0)
        g = randn(*view.shape, device=device)
        gv = torch.autograd.grad(y_view, [base, *cs], g)
        gc = torch.autograd.grad(y_contig, [x_contig, *cs], g)
        expected_base = torch.zeros_like(base)
        expected_base = torch.autograd.grad(
            make_view(expected_base.requires_grad_()), expected_base, gc[0]
        )[0]
        torch.testing.assert_close(gv[0], expected_base)
        for a, b in zip(gv[1:], gc[1:], strict=True):
            torch.testing.assert_close(a, b)

    @pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 5)])
    def test_empty(self, fn, device, dtype, shape):
        x, cs = self.make(shape, dtype, device)
        y = fn(x, *cs)
        assert y.shape == x.shape and y.dtype == dtype
        grads = torch.autograd.grad(y.sum(), [x, *cs])
        assert grads[0].shape == x.shape
        for g, c in zip(grads[1:], cs, strict=True):  # a sum over nothing is zero
            assert g.shape == c.shape and g.item() == 0

    @pytest.mark.parametrize("coef_shape", [(), (1,)])
    def test_zero_dim(self, fn, device, dtype, coef_shape):
        x, cs = self.make((), dtype, device, coef_shape=coef_shape)
        self.check_against_reference(fn, x, cs, dtype)

    def test_nan_in_nan_out(self, fn, device):
        x, cs = self.make((10,), torch.float32, device)
        x = x.detach().clone()
        x[3] = float("nan")
        y = fn(x, *cs)
        assert torch.isnan(y[3]) and torch.isfinite(y[torch.arange(10, device=device) != 3]).all()

    def test_backward_deterministic(self, fn, device):
        x, cs = self.make((200_003,), torch.float32, device)
        g = randn(200_003, device=device, seed=3)
        runs = [torch.autograd.grad(fn(x, *cs), [x, *cs], g) for _ in range(3)]
        for other in runs[1:]:
            for a, b in zip(runs[0], other, strict=True):
                assert torch.equal(a, b)

    # ---- autograd checks -------------------------------------------------------------------

    @pytest.mark.parametrize("coef_shape", [(), (1,)])
    def test_gradcheck(self, fn, device, coef_shape):
        x, cs = self.make((4, 5), torch.float64, device, torch.float64, coef_shape)
        assert gradcheck(fn, (x, *cs))
        assert gradgradcheck(fn, (x, *cs))

    def test_gradcheck_non_contiguous(self, fn, device):
        x, cs = self.make((6, 5), torch.float64, device, torch.float64)
        assert gradcheck(lambda t, *c: fn(t.t()[:, ::2], *c), (x, *cs))
        assert gradgradcheck(lambda t, *c: fn(t.t()[:, ::2], *c), (x, *cs))

    def test_operators_are_differentiable(self, device):
        """The operators carry their own derivatives (csrc/autograd.cpp): forward, backward and
        the backward's backward, called as torch.ops.torchext.* with nothing from Python."""
        x, cs = self.make((4, 5), torch.float64, device, torch.float64)
        assert gradcheck(self.operator, (x, *cs))
        assert gradgradcheck(self.operator, (x, *cs))
        g = randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
        bwd = self.backward_operator
        saved = self.operator(x, *cs).detach() if self.op == "relu" else x
        assert gradcheck(bwd, (g, saved, *cs))
        assert gradgradcheck(bwd, (g, saved, *cs))

    def test_no_grad_and_inference_mode(self, fn, device):
        """Nothing recorded, the same values (the kernels skip the autograd Function there)."""
        x, cs = self.make((33,), torch.float32, device)
        y = fn(x, *cs)
        for mode in (torch.no_grad, torch.inference_mode):
            with mode():
                y_mode = fn(x, *cs)
            assert y_mode.grad_fn is None and not y_mode.requires_grad
            assert torch.equal(y_mode, y)

    # torch.autograd.forward_ad scripts a helper on first use, and torch 2.14 warns about that.
    @pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
    def test_forward_mode_ad_raises(self, fn, device):
        """No jvp formulas: a dual input is refused, with or without grad mode, never silently
        dropped."""
        x, cs = self.make((5,), torch.float32, device, grad=False)
        for grad_mode in (True, False):
            with torch.set_grad_enabled(grad_mode), torch.autograd.forward_ad.dual_level():
                dual = torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))
                with pytest.raises(RuntimeError, match="jvp"):
                    fn(dual, *cs)

    # ---- operator registration ------------------------------------------------------------

    def op_samples(self, device):
        """(operator, args) for the forward and backward operators, for opcheck."""
        samples = []
        for shape in [(3, 4), (0,), ()]:
            for dtype in (torch.float32, torch.float64, torch.bfloat16):
                x, cs = self.make(shape, dtype, device, grad=False)
                g = randn(*shape, dtype=dtype, device=device)
                fwd, bwd = self.operator, self.backward_operator
                saved = fwd(x, *cs) if self.op == "relu" else x
                samples += [(fwd, (x, *cs)), (bwd, (g, saved, *cs))]
        x, cs = self.make((5, 6), torch.float32, device, grad=False)
        samples.append((self.operator, (x.t(), *cs)))
        # Inputs that require grad: opcheck then also traces the backward with AOTAutograd and
        # compares its gradients with eager's, and checks that no autograd formula hides at a
        # backend key. (That an autograd kernel exists at all, test_operators_are_differentiable
        # checks: opcheck passes an operator without one.)
        x, cs = self.make((3, 4), torch.float64, device, torch.float64)
        g = randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
        fwd, bwd = self.operator, self.backward_operator
        saved = fwd(x, *cs).detach().requires_grad_() if self.op == "relu" else x
        samples += [(fwd, (x, *cs)), (bwd, (g, saved, *cs))]
        return samples

    def test_opcheck(self, device):
        for op, args in self.op_samples(device):
            torch.library.opcheck(op, args)

    def test_meta(self, fn):
        x, cs = self.make((3, 5), torch.float32, "meta", grad=False)
        y = fn(x.t(), *cs)
        assert y.device.type == "meta" and y.shape == (5, 3) and y.is_contiguous()
        outs = self.backward_operator(torch.empty_like(x), x, *cs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        assert [o.shape for o in outs] == [x.shape] + [c.shape for c in cs]

    # ---- torch.compile -----------------------------------------------------------------------

    def test_compile_fullgraph(self, fn, device):
        """The op traced whole by torch.compile (Inductor); AOTAutograd compiles its backward."""
        x, cs = self.make((257,), torch.float32, device)
        g = randn(257, device=device, seed=5)
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True)
        y_c, y_e = compiled(x, *cs), fn(x, *cs)
        torch.testing.assert_close(y_c, y_e)
        grads_c = torch.autograd.grad(y_c, [x, *cs], g)
        grads_e = torch.autograd.grad(y_e, [x, *cs], g)
        for a, b in zip(grads_c, grads_e, strict=True):
            torch.testing.assert_close(a, b)
