"""The bad-input matrix: every public entry point x every kind of bad argument raises the
documented exception, with a message that names the op and the argument, and never crashes.

Expected errors (what DESIGN.md promises: a clear TypeError/ValueError/RuntimeError naming the op
and what is wrong):

    bad argument                                   exception      message names
    ---------------------------------------------  -------------  --------------------------------
    integer / bool / complex x                      TypeError      torchext.<op>, 'x'
    x not a tensor (list, float, None)              TypeError      torchext.<op>, 'x'
    integer / bool / complex coefficient tensor     TypeError      torchext.<op>, 'a' (the coef.)
    coefficient of shape (2,) or (1, 1)             ValueError     torchext.<op>, 'a'
    coefficient on another device (meta)            RuntimeError   torchext.<op>, 'a'
    string / complex / bool Python coefficient      TypeError      torchext.<op>, 'a'
    *_backward: grad of the wrong shape             ValueError     torchext.<op>, 'grad'
    *_backward: grad of the wrong dtype             TypeError      torchext.<op>, 'grad'
    *_backward: grad on another device (meta)       RuntimeError   torchext.<op>, 'grad'

Entry points: the four functions (and ``relu(inplace=True)``), the four ``*Function.apply`` and
the ``torchext.nn`` modules (their coefficients are parameters: a bad one is put in place of a
parameter; a string or bool Python value cannot become a parameter, so those rows do not apply to
modules). ``test_bad_calls_do_not_crash_the_process`` runs the whole matrix, plus raw operator
calls, in a subprocess so that a segfault or abort fails the test instead of killing pytest.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import DTYPES

import torchext

OPS = ["cubic", "legendre_p3", "affine_legendre_p3", "relu"]
COEF_OPS = ["cubic", "affine_legendre_p3"]
FUNCTIONS = {
    "cubic": torchext.CubicFunction,
    "legendre_p3": torchext.LegendreP3Function,
    "affine_legendre_p3": torchext.AffineLegendreP3Function,
    "relu": torchext.ReLUFunction,
}
MODULES = {
    "cubic": torchext.nn.Cubic,
    "legendre_p3": torchext.nn.LegendreP3,
    "affine_legendre_p3": torchext.nn.AffineLegendreP3,
    "relu": torchext.nn.ReLU,
}

# kind -> (make the bad x, expected exception)
BAD_X = {
    "int64 x": (lambda: torch.arange(5), TypeError),
    "int32 x": (lambda: torch.arange(5, dtype=torch.int32), TypeError),
    "bool x": (lambda: torch.ones(5, dtype=torch.bool), TypeError),
    "complex64 x": (lambda: torch.randn(5, dtype=torch.complex64), TypeError),
    "complex128 x": (lambda: torch.randn(5, dtype=torch.complex128), TypeError),
    "list x": (lambda: [1.0, 2.0], TypeError),
    "float x": (lambda: 1.5, TypeError),
    "None x": (lambda: None, TypeError),
}

# kind -> (make the bad coefficient, expected exception, applies to modules)
BAD_COEF = {
    "int64 coefficient": (lambda: torch.tensor(1), TypeError, True),
    "bool coefficient": (lambda: torch.tensor(True), TypeError, True),
    "complex coefficient": (lambda: torch.tensor(1 + 1j), TypeError, True),
    "(2,) coefficient": (lambda: torch.ones(2), ValueError, True),
    "(1, 1) coefficient": (lambda: torch.ones(1, 1), ValueError, True),
    "empty coefficient": (lambda: torch.ones(0), ValueError, True),
    "coefficient on meta": (lambda: torch.ones((), device="meta"), RuntimeError, True),
    "string coefficient": (lambda: "1.0", TypeError, False),
    "complex Python coefficient": (lambda: 1 + 2j, TypeError, True),
    "bool Python coefficient": (lambda: True, TypeError, False),
}


def _good_x():
    return torch.randn(5)


def _tensor_coefs():
    return [torch.tensor(v, requires_grad=True) for v in (0.5, -1.0, 0.25, 2.0)]


def _parameter(value):
    if isinstance(value, torch.Tensor):
        grad = value.is_floating_point() or value.is_complex()
        return torch.nn.Parameter(value, requires_grad=grad)
    return value  # a Python value: the module's constructor takes it


# ---- the entry points ----------------------------------------------------------------------------
# Each is (name, call(op, x, coefs) or None where the entry point does not exist for the op).


def _call_function(op, x, cs):
    return getattr(torchext, op)(x, *cs)


def _call_apply(op, x, cs):
    return FUNCTIONS[op].apply(x, *cs)


def _call_module(op, x, cs):
    if op not in COEF_OPS:
        return MODULES[op]()(x)
    given = dict(zip("abcd", cs, strict=False))  # none (the module's own) or all four
    python = {n: v for n, v in given.items() if not isinstance(v, torch.Tensor)}
    m = MODULES[op](**python)
    for n, v in given.items():
        if isinstance(v, torch.Tensor):
            setattr(m, n, _parameter(v))
    return m(x)


def _call_relu_inplace(op, x, cs):
    return torchext.relu(x, inplace=True)


def _call_relu_module_inplace(op, x, cs):
    return torchext.nn.ReLU(inplace=True)(x)


ENTRIES = {
    "function": _call_function,
    "Function.apply": _call_apply,
    "nn module": _call_module,
    "relu(inplace=True)": _call_relu_inplace,
    "nn.ReLU(inplace=True)": _call_relu_module_inplace,
}


def _entries(op):
    return [e for e in ENTRIES if "inplace" not in e or op == "relu"]


def bad_x_cases():
    """(id, op, entry, x, coefs, expected exception, argument name)."""
    for op in OPS:
        for entry in _entries(op):
            for kind, (make, exc) in BAD_X.items():
                coef_variants = [("", [])]
                if op in COEF_OPS:
                    coef_variants = [(", float coefs", [0.5, -1.0, 0.25, 2.0]),
                                     (", tensor coefs", "tensors")]
                if entry == "nn module":
                    coef_variants = [("", [])]  # a module's coefficients are its parameters
                for suffix, cs in coef_variants:
                    yield (f"{op}-{entry}-{kind}{suffix}", op, entry, make, cs, exc, "x")


def bad_coef_cases():
    for op in COEF_OPS:
        for entry in _entries(op):
            for kind, (make, exc, for_modules) in BAD_COEF.items():
                if entry == "nn module" and not for_modules:
                    continue
                for i, name in enumerate("abcd"):
                    yield (f"{op}-{entry}-{kind}-{name}", op, entry, make, i, exc, name)


def _run(op, entry, x, cs):
    return ENTRIES[entry](op, x, cs)


def _assert_names(excinfo, op, arg, entry=None):
    """The message names the op (for a module, its class will do: the error may come from its
    constructor) and the argument."""
    msg = str(excinfo.value)
    names = [f"torchext.{op}"]
    if entry == "nn module":
        names.append(f"torchext.nn.{MODULES[op].__name__}")
    assert any(n in msg for n in names), f"message does not name the op ({names}): {msg!r}"
    assert f"'{arg}'" in msg, f"message does not name the argument '{arg}': {msg!r}"


@pytest.mark.parametrize(
    "op, entry, make, cs, exc, arg",
    [pytest.param(*c[1:], id=c[0]) for c in bad_x_cases()],
)
def test_bad_x(op, entry, make, cs, exc, arg):
    cs = _tensor_coefs() if cs == "tensors" else cs
    with pytest.raises(exc) as excinfo:
        _run(op, entry, make(), cs)
    _assert_names(excinfo, op, arg, entry)


@pytest.mark.parametrize(
    "op, entry, make, index, exc, arg",
    [pytest.param(*c[1:], id=c[0]) for c in bad_coef_cases()],
)
def test_bad_coefficient(op, entry, make, index, exc, arg):
    cs = _tensor_coefs()
    cs[index] = make()
    with pytest.raises(exc) as excinfo:
        _run(op, entry, _good_x(), cs)
    _assert_names(excinfo, op, arg, entry)


def test_module_on_another_device():
    """Module parameters on meta, x on the CPU: the device mismatch is reported, not ignored."""
    for op in COEF_OPS:
        m = MODULES[op](device="meta")
        with pytest.raises(RuntimeError) as excinfo:
            m(_good_x())
        _assert_names(excinfo, op, "a")


def test_module_with_integer_dtype():
    """A module built for an integer dtype cannot draw its parameters; constructing one with given
    values must still be refused when called."""
    for op in COEF_OPS:
        m = MODULES[op](1.0, 2.0, 3.0, 4.0)
        m.b = torch.nn.Parameter(torch.tensor(2, dtype=torch.int32), requires_grad=False)
        with pytest.raises(TypeError) as excinfo:
            m(_good_x())
        _assert_names(excinfo, op, "b")


# ---- the backward operators ----------------------------------------------------------------------


def _backward_args(op, grad, x):
    cs = [torch.tensor(v) for v in (0.5, -1.0, 0.25, 2.0)]
    if op in COEF_OPS:
        return (grad, x, *cs)
    if op == "relu":
        return (grad, torch.relu(x))
    return (grad, x)


BAD_GRADS = {
    "shape": (lambda x: torch.ones(x.numel() - 1, dtype=x.dtype), ValueError),
    "shape (transposed)": (lambda x: torch.ones(3, 2, dtype=x.dtype), ValueError),
    "dtype": (lambda x: torch.ones(x.shape, dtype=torch.float64), TypeError),
    "integer dtype": (lambda x: torch.ones(x.shape, dtype=torch.int32), TypeError),
    "device": (lambda x: torch.ones(x.shape, dtype=x.dtype, device="meta"), RuntimeError),
}


@pytest.mark.parametrize("kind", list(BAD_GRADS))
@pytest.mark.parametrize("op", OPS)
def test_backward_operator_rejects_bad_grad(op, kind):
    make, exc = BAD_GRADS[kind]
    x = torch.randn(2, 3)
    backward = getattr(torch.ops.torchext, f"{op}_backward")
    with pytest.raises(exc) as excinfo:
        backward(*_backward_args(op, make(x), x))
    _assert_names(excinfo, op, "grad")


@pytest.mark.parametrize("kind", [k for k in BAD_GRADS if k != "device"])
@pytest.mark.parametrize("op", OPS)
def test_fake_kernel_rejects_bad_grad_like_the_real_one(op, kind):
    """On meta tensors (the fake kernels of torchext/functional.py, which torch.compile and export
    trace with) a bad grad raises the same exception type as the CPU kernel."""
    make, exc = BAD_GRADS[kind]
    x = torch.randn(2, 3)
    args = [a.to("meta") for a in _backward_args(op, make(x), x)]
    backward = getattr(torch.ops.torchext, f"{op}_backward")
    with pytest.raises(exc) as excinfo:
        backward(*args)
    _assert_names(excinfo, op, "grad")


@pytest.mark.parametrize("kind", ["int64 coefficient", "complex coefficient", "(2,) coefficient",
                                  "(1, 1) coefficient", "empty coefficient"])
@pytest.mark.parametrize("op", COEF_OPS)
def test_fake_kernel_rejects_bad_coefficient_like_the_real_one(op, kind):
    make, exc, _ = BAD_COEF[kind]
    cs = [c.detach().to("meta") for c in _tensor_coefs()]
    cs[2] = make().to("meta")
    with pytest.raises(exc) as excinfo:
        getattr(torch.ops.torchext, op)(torch.randn(5, device="meta"), *cs)
    _assert_names(excinfo, op, "c")


# ---- NaN in, NaN out -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("op", OPS)
def test_nan_in_x_gives_nan_out(op, dtype):
    x = torch.linspace(-2, 2, 37, dtype=dtype)
    nan_at = torch.zeros(37, dtype=torch.bool)
    nan_at[[0, 5, 17, 36]] = True
    x = torch.where(nan_at, torch.full_like(x, math.nan), x).requires_grad_()
    cs = _tensor_coefs() if op in COEF_OPS else []
    y = getattr(torchext, op)(x, *cs)
    assert torch.equal(y.isnan(), nan_at)
    grads = torch.autograd.grad(y, [x, *cs], torch.ones_like(y))
    dx = grads[0]
    if op == "relu":
        # torch.relu's gradient passes through where the result is NaN.
        assert torch.equal(dx.isnan(), torch.zeros_like(nan_at))
        assert torch.equal(dx[nan_at], torch.ones(4, dtype=dtype))
    else:
        assert torch.equal(dx.isnan(), nan_at)
    for name, gc in zip("abcd", grads[1:], strict=False):  # none for unary ops
        # da is a sum of the upstream gradient alone; every other coefficient gradient sees x.
        assert bool(gc.isnan()) == (name != "a"), name


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("op", COEF_OPS)
@pytest.mark.parametrize("index", range(4), ids=list("abcd"))
def test_nan_coefficient_gives_nan_out(op, dtype, index):
    x = torch.linspace(-2, 2, 37, dtype=dtype, requires_grad=True)
    cs = _tensor_coefs()
    cs[index] = torch.tensor(math.nan, requires_grad=True)
    y = getattr(torchext, op)(x, *cs)
    assert bool(y.isnan().all())
    # dx does not involve a; with the other coefficients NaN it is NaN everywhere.
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert bool(dx.isnan().all()) == (index != 0)
    # Python-number NaN coefficients too.
    py = [0.5, -1.0, 0.25, 2.0]
    py[index] = math.nan
    assert bool(getattr(torchext, op)(x.detach(), *py).isnan().all())


# ---- no crash: the whole matrix in a subprocess --------------------------------------------------


def _raw_operator_calls():
    """Calls straight into the operators, below the Python checks: a missing check in C++ would
    read out of bounds here rather than raise."""
    ops = torch.ops.torchext
    x = torch.randn(5)
    one = torch.tensor(1.0)
    undefined = None
    calls = {
        "cubic(int x)": lambda: ops.cubic(torch.arange(5), one, one, one, one),
        "cubic(None x)": lambda: ops.cubic(undefined, one, one, one, one),
        "cubic(None a)": lambda: ops.cubic(x, undefined, one, one, one),
        "cubic(empty a)": lambda: ops.cubic(x, torch.ones(0), one, one, one),
        "cubic(meta a)": lambda: ops.cubic(x, torch.ones((), device="meta"), one, one, one),
        "cubic(sparse x)": lambda: ops.cubic(torch.eye(3).to_sparse(), one, one, one, one),
        "legendre_p3(sparse x)": lambda: ops.legendre_p3(torch.eye(3).to_sparse()),
        "relu(None x)": lambda: ops.relu(undefined),
        "relu(list x)": lambda: ops.relu([1.0]),
        "cubic_backward(short grad)": lambda: ops.cubic_backward(torch.ones(2), x, one, one, one,
                                                                 one),
        "cubic_backward(empty grad)": lambda: ops.cubic_backward(torch.ones(0), x, one, one, one,
                                                                 one),
        "cubic_backward(None grad)": lambda: ops.cubic_backward(undefined, x, one, one, one, one),
        "affine_backward(short grad)": lambda: ops.affine_legendre_p3_backward(
            torch.ones(2), x, one, one, one, one),
        "affine_backward(int a)": lambda: ops.affine_legendre_p3_backward(
            torch.ones(5), x, torch.tensor(1), one, one, one),
        "legendre_p3_backward(short grad)": lambda: ops.legendre_p3_backward(torch.ones(2), x),
        "relu_backward(short grad)": lambda: ops.relu_backward(torch.ones(2), x),
        "relu_backward(None result)": lambda: ops.relu_backward(torch.ones(5), undefined),
        "relu_backward(sparse grad)": lambda: ops.relu_backward(torch.eye(3).to_sparse(),
                                                                torch.eye(3)),
    }
    return calls


def run_batch():
    """Every bad call once; returns {call: outcome}, an outcome being the exception's type name
    or "returned" when it did not raise. Run by the subprocess test (and usable by hand)."""
    outcomes = {}

    def attempt(name, fn):
        try:
            fn()
            outcomes[name] = "returned"
        except Exception as e:  # noqa: BLE001  (recording what was raised is the point)
            outcomes[name] = type(e).__name__

    for cid, op, entry, make, cs, _, _ in bad_x_cases():
        def call_x(op=op, entry=entry, make=make, cs=cs):
            _run(op, entry, make(), _tensor_coefs() if cs == "tensors" else cs)

        attempt(cid, call_x)
    for cid, op, entry, make, index, _, _ in bad_coef_cases():
        def call(op=op, entry=entry, make=make, index=index):
            cs = _tensor_coefs()
            cs[index] = make()
            _run(op, entry, _good_x(), cs)

        attempt(cid, call)
    for name, fn in _raw_operator_calls().items():
        attempt(f"raw {name}", fn)
    return outcomes


@pytest.mark.slow
def test_bad_calls_do_not_crash_the_process():
    """The matrix and raw operator calls in a fresh interpreter: a crash (segfault, abort) shows
    as a bad return code; every call must raise (never return), the exception type being checked
    by the tests above."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {here!r})\n"
        "import test_errors as t\n"
        "print('OUTCOMES ' + json.dumps(t.run_batch()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (
        f"the subprocess died with return code {proc.returncode} (negative: killed by signal "
        f"{-proc.returncode})\nstdout tail:\n{proc.stdout[-2000:]}\nstderr tail:\n"
        f"{proc.stderr[-4000:]}"
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("OUTCOMES "))
    outcomes = json.loads(line.removeprefix("OUTCOMES "))
    assert len(outcomes) > 300
    returned = sorted(k for k, v in outcomes.items() if v == "returned")
    assert not returned, f"bad calls that returned instead of raising: {returned}"
