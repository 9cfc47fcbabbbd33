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

import fractions
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import COEF_OPS as COEF_OPDEFS
from conftest import DTYPES, function_class
from conftest import OPS as OPDEFS

import torchext
from torchext import reference

TABLE = {op.name: op for op in OPDEFS}
OPS = [op.name for op in OPDEFS]
COEF_OPS = [op.name for op in COEF_OPDEFS]
FUNCTIONS = {op.name: function_class(op) for op in OPDEFS}
MODULES = {op.name: getattr(torchext.nn, op.cls) for op in OPDEFS}
INPLACE_OPS = [op.name for op in OPDEFS if op.inplace]

# kind -> (make the bad x, expected exception, applies to ops that take integer x)
BAD_X = {
    "int64 x": (lambda: torch.arange(5), TypeError, False),
    "int32 x": (lambda: torch.arange(5, dtype=torch.int32), TypeError, False),
    "bool x": (lambda: torch.ones(5, dtype=torch.bool), TypeError, True),
    "complex64 x": (lambda: torch.randn(5, dtype=torch.complex64), TypeError, True),
    "complex128 x": (lambda: torch.randn(5, dtype=torch.complex128), TypeError, True),
    "sparse x": (lambda: torch.eye(3).to_sparse(), TypeError, True),
    "nested x": (lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]), TypeError,
                 True),
    "quantized x": (lambda: torch.quantize_per_tensor(torch.ones(5), 0.1, 0, torch.qint8),
                    TypeError, True),
    "list x": (lambda: [1.0, 2.0], TypeError, True),
    "float x": (lambda: 1.5, TypeError, True),
    "None x": (lambda: None, TypeError, True),
}

# kind -> (make the bad coefficient, expected exception, applies to modules)
BAD_COEF = {
    "int64 coefficient": (lambda: torch.tensor(1), TypeError, True),
    "bool coefficient": (lambda: torch.tensor(True), TypeError, True),
    "complex coefficient": (lambda: torch.tensor(1 + 1j), TypeError, True),
    "(2,) coefficient": (lambda: torch.ones(2), ValueError, True),
    "(1, 1) coefficient": (lambda: torch.ones(1, 1), ValueError, True),
    "(2, 5) coefficient": (lambda: torch.ones(2, 5), ValueError, True),
    "empty coefficient": (lambda: torch.ones(0), ValueError, True),
    "coefficient on meta": (lambda: torch.ones((), device="meta"), RuntimeError, True),
    "sparse coefficient": (lambda: torch.ones(5).to_sparse(), TypeError, False),
    "string coefficient": (lambda: "1.0", TypeError, False),
    "complex Python coefficient": (lambda: 1 + 2j, TypeError, True),
    "bool Python coefficient": (lambda: True, TypeError, False),
    "Decimal coefficient": (lambda: __import__("decimal").Decimal("0.5"), TypeError, False),
    "int beyond float64": (lambda: 10**400, OverflowError, True),
}


def _good_x():
    return torch.randn(5)


def _tensor_coefs(op="cubic"):
    return [torch.tensor(v, requires_grad=True) for v in (0.5, -1.0, 0.25, 2.0)][
        : len(TABLE[op].coefs)]


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
    given = dict(zip(TABLE[op].coefs, cs, strict=False))  # none (the module's own) or all
    python = {n: v for n, v in given.items() if not isinstance(v, torch.Tensor)}
    m = MODULES[op](**python)
    for n, v in given.items():
        if isinstance(v, torch.Tensor):
            setattr(m, n, _parameter(v))
    return m(x)


def _call_inplace(op, x, cs):
    return getattr(torchext, op)(x, inplace=True)


def _call_module_inplace(op, x, cs):
    return MODULES[op](inplace=True)(x)


ENTRIES = {
    "function": _call_function,
    "Function.apply": _call_apply,
    "nn module": _call_module,
    "function(inplace=True)": _call_inplace,
    "module(inplace=True)": _call_module_inplace,
}


def _entries(op):
    return [e for e in ENTRIES if "inplace" not in e or op in INPLACE_OPS]


def bad_x_cases():
    """(id, op, entry, x, coefs, expected exception, argument name)."""
    for op in OPS:
        for entry in _entries(op):
            for kind, (make, exc, for_integral) in BAD_X.items():
                if TABLE[op].integral and not for_integral:
                    continue  # an integer x is good for this op
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
                for i, name in enumerate(TABLE[op].coefs):
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
    cs = _tensor_coefs(op) if cs == "tensors" else cs[: len(TABLE[op].coefs)]
    with pytest.raises(exc) as excinfo:
        _run(op, entry, make(), cs)
    _assert_names(excinfo, op, arg, entry)


@pytest.mark.parametrize(
    "op, entry, make, index, exc, arg",
    [pytest.param(*c[1:], id=c[0]) for c in bad_coef_cases()],
)
def test_bad_coefficient(op, entry, make, index, exc, arg):
    cs = _tensor_coefs(op)
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
        _assert_names(excinfo, op, TABLE[op].coefs[0])


def test_module_with_integer_parameter():
    """A parameter replaced by an integer tensor is refused when the module is called."""
    for op in COEF_OPS:
        names = TABLE[op].coefs
        m = MODULES[op](**dict(zip(names, (1.0, 2.0, 3.0, 4.0), strict=False)))
        setattr(m, names[1], torch.nn.Parameter(torch.tensor(2, dtype=torch.int32),
                                                requires_grad=False))
        with pytest.raises(TypeError) as excinfo:
            m(_good_x())
        _assert_names(excinfo, op, names[1])


BAD_MODULE_ARGS = {
    "integer dtype": (dict(dtype=torch.int64), TypeError, "dtype"),
    "complex dtype": (dict(dtype=torch.complex64), TypeError, "dtype"),
    "zero num_parameters": (dict(num_parameters=0), ValueError, "num_parameters"),
    "float num_parameters": (dict(num_parameters=2.0), ValueError, "num_parameters"),
    "float dim": (dict(num_parameters=2, dim=1.0), TypeError, "dim"),
    "(2,) value, one parameter": ("coef", torch.ones(2), ValueError),
    "(3,) value, 2 parameters": ("coef", torch.ones(3), ValueError),
    "string value": ("coef", "1", TypeError),
    "complex value": ("coef", 1j, TypeError),
    "unknown argument": (dict(e=1.0), TypeError, "e"),
}


@pytest.mark.parametrize("kind", list(BAD_MODULE_ARGS))
@pytest.mark.parametrize("op", COEF_OPS)
def test_module_constructor_rejects_bad_arguments(op, kind):
    """A module's constructor names the module and the argument, and builds nothing half-way
    (a repr of a module that raised never runs)."""
    spec = BAD_MODULE_ARGS[kind]
    if spec[0] == "coef":
        name = TABLE[op].coefs[0]
        kwargs = {name: spec[1], "num_parameters": 2 if "2 parameters" in kind else 1}
        exc, arg = spec[2], name
    else:
        kwargs, exc, arg = spec
    with pytest.raises(exc) as excinfo:
        MODULES[op](**kwargs)
    msg = str(excinfo.value)
    assert f"torchext.nn.{MODULES[op].__name__}" in msg and arg in msg, msg


def test_module_x_without_the_channel_dim():
    for op in COEF_OPS:
        m = MODULES[op](num_parameters=4, dim=1)
        with pytest.raises(ValueError, match=f"torchext.nn.{MODULES[op].__name__}.*dim 1"):
            m(torch.randn(2, 3, 5))


def test_fraction_coefficient_is_a_number():
    """A fractions.Fraction is a real number: taken as its float value, as in eager."""
    x = torch.randn(6)
    for op in COEF_OPS:
        f = getattr(torchext, op)
        coefs = [fractions.Fraction(1, 3), 2, 0.5, -1][: len(TABLE[op].coefs)]
        torch.testing.assert_close(f(x, *coefs), f(x, *[float(c) for c in coefs]))


# ---- the backward operators ----------------------------------------------------------------------


def _backward_args(op, grad, x):
    cs = [torch.tensor(v) for v in (0.5, -1.0, 0.25, 2.0)][: len(TABLE[op].coefs)]
    saved = getattr(torch.ops.torchext, op)(x, *cs) if TABLE[op].saves == "result" else x
    return (grad, saved, *cs)


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
    """On meta tensors (the Meta kernels of csrc/meta.cpp, which torch.compile and export
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
    cs = [c.detach().to("meta") for c in _tensor_coefs(op)]
    cs[-1] = make().to("meta")
    with pytest.raises(exc) as excinfo:
        getattr(torch.ops.torchext, op)(torch.randn(5, device="meta"), *cs)
    _assert_names(excinfo, op, TABLE[op].coefs[-1])


# ---- NaN in, NaN out -----------------------------------------------------------------------------


def _eager_nans(op, x, cs):
    """Where the eager reference (float64) gives NaN: values and every gradient."""
    x64 = x.detach().double().requires_grad_()
    c64 = [torch.as_tensor(c).detach().double().requires_grad_() for c in cs]
    y = reference.EAGER[op](x64, *c64)
    grads = torch.autograd.grad(y, [x64, *c64], torch.ones_like(y))
    return [t.isnan() for t in (y, *grads)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("op", OPS)
def test_nan_in_x_gives_nan_where_eager_does(op, dtype):
    x = torch.linspace(-2, 2, 37, dtype=dtype)
    nan_at = torch.zeros(37, dtype=torch.bool)
    nan_at[[0, 5, 17, 36]] = True
    x = torch.where(nan_at, torch.full_like(x, math.nan), x).requires_grad_()
    cs = _tensor_coefs(op)
    y = getattr(torchext, op)(x, *cs)
    grads = torch.autograd.grad(y, [x, *cs], torch.ones_like(y))
    assert torch.equal(y.isnan(), nan_at)
    for got, want in zip([y, *grads], _eager_nans(op, x, cs), strict=True):
        assert torch.equal(got.isnan(), want)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("op", COEF_OPS)
@pytest.mark.parametrize("index", range(4))
def test_nan_coefficient_gives_nan_where_eager_does(op, dtype, index):
    if index >= len(TABLE[op].coefs):
        pytest.skip(f"{op} has {len(TABLE[op].coefs)} coefficients")
    x = torch.linspace(-2, 2, 37, dtype=dtype, requires_grad=True)
    cs = _tensor_coefs(op)
    cs[index] = torch.tensor(math.nan, requires_grad=True)
    y = getattr(torchext, op)(x, *cs)
    grads = torch.autograd.grad(y, [x, *cs], torch.ones_like(y))
    for got, want in zip([y, *grads], _eager_nans(op, x, cs), strict=True):
        assert torch.equal(got.isnan(), want)
    # Python-number NaN coefficients too.
    py = [0.5, -1.0, 0.25, 2.0][: len(TABLE[op].coefs)]
    py[index] = math.nan
    assert torch.equal(getattr(torchext, op)(x.detach(), *py).isnan(), y.isnan())


# ---- no crash: the whole matrix in a subprocess --------------------------------------------------


def _raw_operator_calls():
    """Calls straight into the operators, below the Python checks: a missing check in C++ would
    read out of bounds here rather than raise."""
    x = torch.randn(5)
    sparse = torch.eye(3).to_sparse()
    calls = {}
    for opdef in OPDEFS:
        name, n = opdef.name, len(opdef.coefs)
        fwd = getattr(torch.ops.torchext, name)
        bwd = getattr(torch.ops.torchext, f"{name}_backward")
        ones = [torch.tensor(1.0)] * n
        saved = fwd(x, *ones)
        calls[f"{name}(None x)"] = lambda fwd=fwd, ones=ones: fwd(None, *ones)
        calls[f"{name}(list x)"] = lambda fwd=fwd, ones=ones: fwd([1.0], *ones)
        calls[f"{name}(sparse x)"] = lambda fwd=fwd, ones=ones: fwd(sparse, *ones)
        calls[f"{name}_backward(short grad)"] = (
            lambda bwd=bwd, saved=saved, ones=ones: bwd(torch.ones(2), saved, *ones))
        calls[f"{name}_backward(None grad)"] = (
            lambda bwd=bwd, saved=saved, ones=ones: bwd(None, saved, *ones))
        calls[f"{name}_backward(None saved)"] = (
            lambda bwd=bwd, ones=ones: bwd(torch.ones(5), None, *ones))
        calls[f"{name}_backward(sparse grad)"] = (
            lambda bwd=bwd, ones=ones: bwd(sparse, torch.eye(3), *ones))
        if not opdef.integral:
            calls[f"{name}(int x)"] = lambda fwd=fwd, ones=ones: fwd(torch.arange(5), *ones)
        for i, c in enumerate(opdef.coefs):
            for kind, bad in (("None", None), ("empty", torch.ones(0)),
                              ("meta", torch.ones((), device="meta")), ("int", torch.tensor(1)),
                              ("(2, 5)", torch.ones(2, 5))):
                cs = list(ones)
                cs[i] = bad
                calls[f"{name}({kind} {c})"] = lambda fwd=fwd, cs=cs: fwd(x, *cs)
                calls[f"{name}_backward({kind} {c})"] = (
                    lambda bwd=bwd, cs=cs, saved=saved: bwd(torch.ones(5), saved, *cs))
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
            _run(op, entry, make(), _tensor_coefs(op) if cs == "tensors" else
                 cs[: len(TABLE[op].coefs)])

        attempt(cid, call_x)
    for cid, op, entry, make, index, _, _ in bad_coef_cases():
        def call(op=op, entry=entry, make=make, index=index):
            cs = _tensor_coefs(op)
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
