"""The differentiable torchext ops, made from one table (``OPS``): for each row the function
(``torchext.cubic``), the ``torch.autograd.Function`` subclass with the same arguments
(``torchext.CubicFunction``), the vmap rules of the operators in ``torch.ops.torchext``
(csrc/ops.cpp, from the C++ table csrc/ops.h). ``torchext.nn`` makes its modules from the same
table. The operators' fake (Meta) kernels are in C++ (csrc/meta.cpp), beside the real ones, so
that a process that only loads the library has them.

Two ways to the same kernels and the same gradients:

- the functions call the operators directly. The operators are differentiable by themselves: their
  derivatives are registered in C++ for the Autograd dispatch key (csrc/autograd.cpp), as torch's
  own ops have theirs, so no Python runs in their backward. At the tutorial's 2000 elements a call
  is nearly all overhead, and this path costs ~20 µs less per forward+backward than a Python
  ``autograd.Function`` (benchmarks/NOTES.md §4);
- the ``*Function`` classes are ``autograd.Function`` subclasses over the same operators, for code
  written around ``.apply`` (as the tutorial's ``LegendrePolynomial3.apply``) or that subclasses
  them. Their backward calls the fused backward operator, which is itself differentiable (in C++),
  so double backward works on both ways.

The wrappers are on the hot path: they do nothing but check that x is a tensor, convert
Python-number coefficients and call the operator. Every other check lives in the C++ kernels
(csrc/layout.cpp), the Meta kernels' too.
"""

import dataclasses
import importlib
import numbers
import types

import torch
from torch import Tensor
from torch.autograd import forward_ad


@dataclasses.dataclass(frozen=True)
class OpDef:
    """One row of the op table: everything the Python layer makes of an op follows from it."""

    name: str  # torchext.<name>, torch.ops.torchext.<name>, reference.EAGER[<name>]
    cls: str  # the class names: torchext.<cls>Function, torchext.nn.<cls>
    formula: str  # what it computes, in Python notation (docstrings, module reprs)
    derivative: str  # its gradients, for the docstrings
    coefs: tuple[str, ...] = ()  # its coefficients, in the operators' order
    saves: str = "x"  # what the backward operator reads besides grad: "x", or "result"
    init: tuple | None = None  # the module's initial coefficients (None: randn, as the tutorial)
    inplace: bool = False  # has an in-place form: <name>(x, inplace=True)
    integral: bool = False  # takes integer tensors too (values only: they have no gradient)
    # Under torch.compile (not torch.export) the function and the module trace as the eager
    # expression, which Inductor fuses with its neighbours: an operator is opaque to Inductor,
    # and where torch's own kernel is as fast as ours (ReLU) the fusion is all that counts (a
    # compiled resnet18 step: benchmarks/NOTES.md §11).
    compile_as_eager: bool = False


OPS = {
    op.name: op
    for op in (
        OpDef("cubic", "Cubic", "a + b*x + c*x**2 + d*x**3",
              "dx = g*(b + 2*c*x + 3*d*x**2); da, db, dc, dd = Σg, Σg*x, Σg*x**2, Σg*x**3",
              coefs=("a", "b", "c", "d")),
        OpDef("legendre_p3", "LegendreP3", "0.5*(5*x**3 - 3*x)", "dx = g*1.5*(5*x**2 - 1)"),
        OpDef("affine_legendre_p3", "AffineLegendreP3", "a + b*P3(c + d*x)",
              "with u = c + d*x: dx = g*b*P3'(u)*d; da = Σg, db = Σg*P3(u), dc = Σg*b*P3'(u), "
              "dd = Σg*b*P3'(u)*x", coefs=("a", "b", "c", "d"), init=(0.0, -1.0, 0.0, 0.3)),
        OpDef("relu", "ReLU", "torch.relu(x)",
              "dx = g where the result is > 0 or NaN, else 0 (0 at x == 0, as torch.relu)",
              saves="result", inplace=True, integral=True, compile_as_eager=True),
    )
}


def _operator(op: OpDef, backward: bool = False):
    """The operator as its OpOverload: calling one skips the overload resolution of
    torch.ops.torchext.<op>(...), a few µs a call."""
    return getattr(torch.ops.torchext, op.name + ("_backward" if backward else "")).default


def _check_x(name: str, x) -> None:
    """The one check made in Python: the C++ operators cannot name a non-tensor argument, nor a
    jagged nested tensor (a Python subclass that never reaches them)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"torchext.{name}: 'x' must be a torch.Tensor, got {type(x).__name__}")
    if x.is_nested and x.layout is not torch.strided:
        raise TypeError(f"torchext.{name}: 'x' must be a dense (strided) tensor, got a nested "
                        f"tensor ({x.layout})")


# ---- coefficients -------------------------------------------------------------------------------


def _coef(op: str, name: str, value, x):
    """A coefficient as the operators take it: a tensor as it is; a real number as a 0-dim tensor
    on x's device in x's op-math type (float32 for half and bfloat16), as torch treats a Python
    scalar in ``b * x``. ``torch.full`` fills on the device: no host-to-device copy, no sync."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"torchext.{op}: coefficient '{name}' must be a real number or a floating tensor, "
            f"got {type(value).__name__}"
        )
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    try:
        return torch.full((), value, dtype=dtype, device=x.device)
    except (RuntimeError, TypeError, OverflowError):
        # Beyond float32's range: inf, as the eager `value * x`; an int beyond int64's (which
        # eager torch refuses to unpack) as the float it is.
        return torch.full((), _real(op, name, value), dtype=torch.float64,
                          device=x.device).to(dtype)


def _real(where: str, name: str, value) -> float:
    """A real number as a float: an int beyond float64's range is an error that names it."""
    try:
        return float(value)
    except OverflowError:
        raise OverflowError(f"torchext.{where}: coefficient '{name}' is an int beyond float64's "
                            f"range ({len(str(abs(value)))} digits)") from None


def _coefs(op: OpDef, x, values):
    _check_x(op.name, x)
    return [_coef(op.name, n, v, x) for n, v in zip(op.coefs, values, strict=True)]


# ---- the functions ------------------------------------------------------------------------------

_FUNCTION_DOC = """``{formula}`` with one fused kernel forward and one fused backward pass
({derivative}); differentiable in x{and_coefs}, twice and more.

``x``: a {dtypes} tensor of any shape and strides.{coef_doc} Returns a tensor shaped and typed
like ``x``, laid out as torch's elementwise ops lay out theirs (x's strides when x is dense).{extra}
"""

_COEF_DOC = """ ``{names}``: numbers, or floating tensors on
x's device (or 0-dim CPU tensors) whose shapes broadcast to x's without enlarging it: one element,
per channel (``(C,)`` on ``[..., C]``, ``(C, 1, 1)`` on ``[N, C, H, W]``), per group (``(G, 1)``
on ``[..., G, C/G]``), each its own; each tensor's gradient has its shape and dtype."""


def _doc(op: OpDef) -> str:
    extra = ""
    if op.inplace:
        extra = ("\n\n``inplace=True`` writes the result into x, as ``torch.relu_`` does, and "
                 "returns x.")
    if op.compile_as_eager:
        extra += ("\n\nUnder ``torch.compile`` (not ``torch.export``) it traces as "
                  f"``{op.formula}``, which Inductor fuses with its neighbours; export keeps the "
                  "operator.")
    if op.name == "relu":
        extra += ("\n\nBit for bit ``torch.relu``: NaN stays NaN, ``-0.0`` stays ``-0.0``. The "
                  "tutorial's ``MyReLU`` differs at exactly ``x == 0``: it passes the gradient "
                  "there (1), where torch.relu and this op give 0. It saves the result, not x.")
    return _FUNCTION_DOC.format(
        formula=op.formula, derivative=op.derivative,
        and_coefs=" and in each tensor coefficient" if op.coefs else "",
        dtypes="floating" + (" or integer" if op.integral else ""),
        coef_doc=_COEF_DOC.format(names=", ".join(op.coefs)) if op.coefs else "", extra=extra,
    )


def _trace(fn, args, kwargs):
    """fn(*args, **kwargs) as a node of the fx graph its Proxy x belongs to."""
    return args[0].tracer.create_proxy("call_function", fn, args, kwargs)


def _onnx_export_flag():
    """The object whose _in_onnx_export says torch.onnx.export's TorchScript-based (legacy)
    exporter is tracing (where it lives depends on torch's version); a stand-in that never says
    so if neither place has it. The attribute, not its property: torch.compile traces no call
    into torch.onnx."""
    for where in ("torch.onnx._internal.torchscript_exporter._globals", "torch.onnx._globals"):
        try:
            return importlib.import_module(where).GLOBALS
        except (ImportError, AttributeError):
            continue
    return types.SimpleNamespace(_in_onnx_export=False)


def _onnx_dynamo_export_flag():
    """The module whose _is_onnx_exporting says torch.onnx.export's dynamo-based exporter runs."""
    try:
        return importlib.import_module("torch.onnx._internal.exporter._flags")
    except ImportError:
        return types.SimpleNamespace(_is_onnx_exporting=False)


_ONNX_EXPORT, _ONNX_DYNAMO_EXPORT = _onnx_export_flag(), _onnx_dynamo_export_flag()


def _transformed_call(function_class, op: OpDef, args):
    """A call under a torch.func transform or forward-mode AD: through the Function class. Under
    torch.onnx.export (either exporter): the eager expression, which ONNX translates. Not a
    decomposition in torch._decomp's table: that table is global, and Inductor (which refuses a
    fallback for an op listed there when the environment variable CI is set, as CI services set
    it) and FakeTensor (which runs a listed decomposition instead of the Meta kernel under
    symbolic shapes) read it too."""
    if _ONNX_EXPORT._in_onnx_export or _ONNX_DYNAMO_EXPORT._is_onnx_exporting:
        return _eager_call(op, args)
    return function_class.apply(*args)


def _eager_call(op: OpDef, args, inplace=False):
    """The op as its eager expression (in place: the result written into x), for the tracers that
    take it instead of the operator: both ONNX exporters, decompositions(), and torch.compile for
    the ops marked compile_as_eager."""
    from . import reference

    y = reference.EAGER[op.name](*args)
    return args[0].copy_(y) if inplace else y.to(args[0].dtype)  # as the operator, x's dtype


def _exporting() -> bool:
    """Whether torch.export is tracing. Not torch.compiler.is_exporting(): dynamo folds that to True
    under torch.compile too before torch 2.12 (and torch 2.6 has none); the flag it returns is
    read as it is."""
    return getattr(torch.compiler, "_is_exporting_flag", False)


def _transformed() -> bool:
    """Whether a torch.func transform or forward-mode AD is active: then the functions go through
    the <cls>Function classes, which those support (the C++ derivatives cannot run there)."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def _make_function(op: OpDef, function_class):
    """``torchext.<name>(x, <coefs>)``. Its source is generated (as dataclasses generate
    ``__init__``) so that it has the op's real signature, keyword arguments included, and costs no
    more than a hand-written one: at the tutorial's size every check here shows in the timings,
    so the common case (tensors, no transform) is a few attribute tests inline."""
    args = ", ".join(("x", *op.coefs))
    params = ", ".join((args, *(["inplace=False"] if op.inplace else [])))
    lines = [f"def {op.name}({params}):"]
    if op.compile_as_eager:  # dynamo folds the test: a branch only while it traces
        inplace_arg = ", inplace" if op.inplace else ""
        lines += ["    if _dynamo_compiling() and not _exporting():",
                  f"        return _eager_call(_op, ({args},){inplace_arg})"]
    # Not a tensor: an fx Proxy (torch.fx.symbolic_trace) records the call; anything else is
    # refused by _check_x, as is a jagged nested tensor.
    kwargs = "{'inplace': inplace}" if op.inplace else "{}"
    not_a_tensor = ["    if not isinstance(x, _Tensor) or x.is_nested:",
                    "        if isinstance(x, _Proxy):",
                    f"            return _trace(_self, ({args},), {kwargs})",
                    f"        _check_x({op.name!r}, x)"]
    # In place: the in-place operator. Under a transform, forward-mode AD or ONNX export, the
    # out-of-place Function's result copied into x, as torch.relu_ there: copy_ is an op every
    # transform knows (vmap, grad, jvp and forward-mode AD each see a write into x), refuses where
    # torch's in-place ops refuse, and lets autograd differentiate through it.
    if op.inplace:
        lines += ["    if inplace:",
                  "        if (_functorch_active() or _forward_ad._current_level >= 0"
                  " or _onnx._in_onnx_export or _onnx_dynamo._is_onnx_exporting):",
                  "            _check_x(_op.name, x)",
                  "            return x.copy_(_transformed_call(_Function, _op, (x,)))",
                  *["    " + line for line in not_a_tensor],
                  "        _inplace_operator(x)",
                  "        return x"]
    lines += ["    if (_functorch_active() or _forward_ad._current_level >= 0"
              " or _onnx._in_onnx_export or _onnx_dynamo._is_onnx_exporting):",
              f"        return _transformed_call(_Function, _op, ({args},))",
              *not_a_tensor]
    for c in op.coefs:
        lines += [f"    if not isinstance({c}, _Tensor):",
                  f"        {c} = _coef({op.name!r}, {c!r}, {c}, x)"]
    lines.append(f"    return _operator({args})")
    namespace = {"_operator": _operator(op), "_coef": _coef, "_check_x": _check_x,
                 "_Tensor": Tensor, "_Function": function_class, "_forward_ad": forward_ad,
                 "_functorch_active": torch._C._are_functorch_transforms_active,
                 "_Proxy": torch.fx.Proxy, "_trace": _trace, "_onnx": _ONNX_EXPORT,
                 "_onnx_dynamo": _ONNX_DYNAMO_EXPORT,
                 "_transformed_call": _transformed_call, "_op": op,
                 "_dynamo_compiling": torch.compiler.is_dynamo_compiling,
                 "_exporting": _exporting, "_eager_call": _eager_call}
    if op.inplace:
        namespace["_inplace_operator"] = getattr(torch.ops.torchext, f"{op.name}_").default
    exec("\n".join(lines) + "\n", namespace)  # noqa: S102
    fn = namespace["_self"] = namespace[op.name]
    fn.__module__, fn.__qualname__, fn.__doc__ = __name__, op.name, _doc(op)
    return fn


# ---- the autograd.Function subclasses -----------------------------------------------------------
# <cls>Function over the op's operators, and _<cls>BackwardFunction over its backward operator.
# Both define setup_context, jvp and vmap, which is what torch.func needs of an autograd.Function
# (the C++ derivatives of csrc/autograd.cpp cannot run under its transforms): the functions take
# this way whenever a torch.func transform or forward-mode AD is active. Every derivative comes
# from the three operators: the fused forward and backward, and <op>_second_order (the backward's
# backward, from ATen ops, so differentiable to any order):
#   backward of the op:            its backward operator
#   jvp of the op:                 J·t is the gradient in g of <g, J·t>: second_order's first output
#   backward of the backward:      second_order
#   jvp of the backward B(g, v, c): B(g_t, v, c) + H·(v_t, c_t), H the (symmetric) Hessian of
#                                  <g, op(v, c)>: second_order's other outputs, grads (v_t, c_t)
#   vmap of either:                the batch dim moved to the front of every input (unbatched
#                                  ones expanded, without a copy), coefficients padded to line up
#                                  with x: a batched coefficient is a per-channel one, its block
#                                  starting at the batch dim.


def _zeros_for(tangents, like):
    """The tangents, a zero (0-dim, broadcasting) where one is None."""
    return [t if t is not None else torch.zeros((), dtype=w.dtype, device=w.device)
            for t, w in zip(tangents, like, strict=True)]


def _batched(x, bdim, size):
    """x with its batch dim first; an unbatched x expanded to the batch (stride 0: no copy)."""
    return x.movedim(bdim, 0) if bdim is not None else x.expand(size, *x.shape)


def _batch_rule(op: OpDef, kinds_in, kinds_out, target, expand: bool):
    """A vmap rule for target, whose arguments and results are each x-like ("x") or shaped like
    coefficient j (j): x-likes get the batch dim first (expanded where unbatched); a coefficient
    becomes (B, 1, ..., 1, *its shape), lining up with x's dims; an unbatched one stays as it is
    (it broadcasts), or, expand (where the results hold per-sample sums over it), is expanded.
    Results come back with the batch dim first, coefficient-shaped ones in their own shapes."""

    def rule(info, in_dims, *args, **kwargs):
        size = info.batch_size
        first = kinds_in.index("x")
        x_dim = args[first].dim() - (in_dims[first] is not None)
        shapes, phys = {}, []
        # (A backward operator's output_mask, last, may be left out.)
        for a, d, kind in zip(args, in_dims, kinds_in[:len(args)], strict=True):
            if kind == "x":
                phys.append(_batched(a, d, size))
            elif not isinstance(a, Tensor) or (d is None and not expand):
                phys.append(a)
            else:
                a = _batched(a, d, size)
                shapes[kind] = a.shape[1:]
                phys.append(a.reshape(size, *([1] * (x_dim - a.dim() + 1)), *a.shape[1:]))
        out = target(*phys, **kwargs)
        if not isinstance(out, tuple):
            return out, 0
        out = tuple(o if kind == "x" else o.reshape(size, *shapes[kind])
                    for o, kind in zip(out, kinds_out, strict=True))
        return out, (0,) * len(out)

    return rule


def _kinds(op: OpDef):
    """The argument kinds of the forward, backward and second-order operators, and of their
    results (see _batch_rule); "mask": the backward's output_mask (not a tensor)."""
    coefs = list(range(len(op.coefs)))
    mask = ["mask"] if op.coefs else []
    return {
        "forward": (["x", *coefs], ["x"]),
        "backward": (["x", "x", *coefs, *mask], ["x", *coefs]),
        "second_order": (["x", "x", *coefs, "x", *coefs], ["x", "x", *coefs]),
    }


def _register_vmap_rules(op: OpDef) -> None:
    """vmap rules for the operators themselves, so that torch.vmap never takes its slow
    per-sample fallback over them (as it would for the fused operators called inside the
    Functions' jvp and the second-order formulas, and for C++ or torch.ops callers)."""
    for which, (kinds_in, kinds_out) in _kinds(op).items():
        suffix = "" if which == "forward" else f"_{which}"
        target = getattr(torch.ops.torchext, op.name + suffix).default
        rule = _batch_rule(op, kinds_in, kinds_out, target, expand=which != "forward")
        torch.library.register_vmap(f"torchext::{op.name}{suffix}", rule)


def _make_backward_function_class(op: OpDef):
    backward_op = _operator(op, backward=True)
    second_order = getattr(torch.ops.torchext, f"{op.name}_second_order").default

    def forward(grad, v, *coefs):
        return backward_op(grad, v, *coefs)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        return second_order(*saved, *_zeros_for(grads, [saved[1], *saved[2:]]))

    def jvp(ctx, grad_t, v_t, *coef_t):
        grad, v, *coefs = ctx.saved_tensors
        first = backward_op(_zeros_for([grad_t], [grad])[0].expand_as(grad), v, *coefs)
        hessian = second_order(grad, v, *coefs, *_zeros_for([v_t, *coef_t], [v, *coefs]))[1:]
        if not op.coefs:
            return first + hessian[0]
        return tuple(f + h for f, h in zip(first, hessian, strict=True))

    def vmap(info, in_dims, *args):
        kinds_in, kinds_out = _kinds(op)["backward"]
        return _batch_rule(op, kinds_in, kinds_out, cls.apply, expand=True)(info, in_dims, *args)

    name = f"_{op.cls}BackwardFunction"
    cls = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward), "jvp": staticmethod(jvp), "vmap": staticmethod(vmap),
        "__module__": __name__, "__qualname__": name,
    })
    return cls


def _make_function_class(op: OpDef):
    """``<cls>Function``: the op as an ``autograd.Function`` over the same operators."""
    forward_op, backward_op = _operator(op), _operator(op, backward=True)
    second_order = getattr(torch.ops.torchext, f"{op.name}_second_order").default
    backward_fn = _make_backward_function_class(op)
    saves_result = op.saves == "result"

    def forward(x, *coefs):
        if not op.coefs:
            _check_x(op.name, x)
            return forward_op(x)
        return forward_op(x, *_coefs(op, x, coefs))

    def setup_context(ctx, inputs, output):
        x, *raw = inputs
        coefs = _coefs(op, x, raw) if op.coefs else []
        saved = (output if saves_result else x, *coefs)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    def backward(ctx, grad):
        # The backward operator is differentiable by itself (in C++), except under torch.func:
        # then its Function.
        if _transformed():
            grads = backward_fn.apply(grad, *ctx.saved_tensors)
        elif op.coefs:  # only the gradients wanted: no dx for an x that needs none, say
            grads = backward_op(grad, *ctx.saved_tensors, output_mask=list(ctx.needs_input_grad))
        else:
            return backward_op(grad, *ctx.saved_tensors)
        if not op.coefs:
            return grads
        # None for the inputs that need no gradient (Python numbers among them).
        return tuple(g if need else None
                     for g, need in zip(grads, ctx.needs_input_grad, strict=True))

    def jvp(ctx, x_t, *coef_t):
        v, *coefs = ctx.saved_tensors
        tangents = _zeros_for([x_t, *coef_t], [v, *coefs])
        zero = torch.zeros((), dtype=v.dtype, device=v.device)
        return second_order(zero, v, *coefs, *tangents)[0].expand_as(v)

    def vmap(info, in_dims, *args):
        kinds_in, kinds_out = _kinds(op)["forward"]
        return _batch_rule(op, kinds_in, kinds_out, cls.apply, expand=False)(info, in_dims, *args)

    name = f"{op.cls}Function"
    doc = (f":func:`{op.name}` as an ``autograd.Function``: "
           f"``{name}.apply({', '.join(('x', *op.coefs))})``. It supports torch.func (grad, "
           "vjp, jvp, jacrev, jacfwd, hessian, vmap), forward-mode AD and torch.compile.")

    cls = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward), "jvp": staticmethod(jvp), "vmap": staticmethod(vmap),
        "__doc__": doc, "__module__": __name__, "__qualname__": name,
    })
    # Dynamo does not trace an autograd.Function that defines jvp; put into the graph whole,
    # AOTAutograd traces it (forward and backward) as it traces any op.
    torch._dynamo.allow_in_graph(cls)
    return cls


# ---- ONNX, from a saved program ------------------------------------------------------------------


def decompositions() -> dict:
    """Each operator's eager expression, as a decomposition table for
    ``ExportedProgram.run_decompositions``: the way to ONNX for a program exported before
    ``torch.onnx.export`` saw it (``torch.onnx.export(model)`` needs none; there each function
    traces as its eager expression). Add it to torch's own table::

        table = torch.export.default_decompositions()
        table.update(torchext.decompositions())
        onnx_program = torch.onnx.export(ep.run_decompositions(table))

    The out-of-place operators only: a saved program holds an in-place one (``inplace=True``)
    inside torch's ``auto_functionalized`` wrapper, which run_decompositions leaves whole; export
    such a model to ONNX directly. Not registered in torch._decomp's global table: Inductor and
    FakeTensor read that too."""

    return {_operator(op): lambda x, *coefs, _op=op: _eager_call(_op, (x, *coefs))
            for op in OPS.values()}


# ---- the table's functions and classes, as this module's names -----------------------------------

__all__ = ["decompositions"]
for _op in OPS.values():
    globals()[f"{_op.cls}Function"] = _make_function_class(_op)
    globals()[_op.name] = _make_function(_op, globals()[f"{_op.cls}Function"])
    _register_vmap_rules(_op)
    __all__ += [_op.name, f"{_op.cls}Function"]
__all__.sort()
del _op


def __dir__():  # dir() and completion: the API and the op table, not this module's imports
    return sorted([*__all__, "OPS", "OpDef"])
