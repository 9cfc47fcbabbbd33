"""Property tests (hypothesis): every op against its eager expression ``torchext.reference.EAGER``
on random shapes (0-dim, empty, odd, > 2^16 elements), layouts (transposed, sliced with steps,
expanded/broadcast views), dtypes, special values (huge, tiny, subnormal, ±0, ±inf, NaN) and
coefficients (Python floats, 0-dim and (1,) tensors of any floating dtype), forward and gradients.

How the expectation is computed, and why.
  The eager expression is evaluated in float64 on exactly the values torchext computes with: x
  itself (every float16/bfloat16/float32 value is exact in float64) and each coefficient rounded to
  the op-math type first (torchext reads a coefficient into float32 unless x is float64, as eager
  torch reads a Python scalar or a 0-dim tensor). Evaluating eager in x's own dtype instead would
  round every intermediate to that dtype: float16 ``x**3`` overflows where torchext's float32
  op-math does not, and the comparison would test eager's rounding, not torchext's.
  The tolerance is an error bound, not conftest.TOLERANCES (which are for values of magnitude ~1
  and would be unsound with x = 1e30 and cancelling coefficients):
      |torchext - exact| <= C * u_acc * M  +  u_out * |exact|  +  floor
  where M is the sum of the absolute values of the terms (the condition of the evaluation: Horner's
  and the monomial form's rounding errors are both bounded by a small multiple of u*M), u_acc and
  u_out the unit roundoffs of the op-math and result dtypes, and ``floor`` covers subnormal
  intermediates. Coefficient gradients are sums over n elements: their factor C grows with the
  length of the sequential sums (<= 1024 per lane in the CPU kernel).
Special values (the contract for non-finite results):
  - NaN in any input an output depends on gives NaN there.
  - Otherwise, an infinite input the output depends on gives a non-finite output (inf or NaN),
    never a finite one. (Eager's ``inf - inf`` in the monomial form gives NaN where torchext's
    Horner form gives the mathematically right ±inf, e.g. P3(inf): eager NaN, torchext inf. Both
    are non-finite; requiring NaN there would demand the less accurate answer.)
  - Finite inputs and a finite expectation: a finite result within the bound; a non-finite result
    only where an intermediate can overflow the op-math type or the exact value is at the edge of
    the result dtype's range.
ReLU is compared bit for bit with torch.relu instead (values, gradients, -0.0; NaN where torch
gives NaN, the payload aside: see conftest.same_bits).

Profiles: under hypothesis' own "default" profile this file runs few examples (fast, for local
runs); ``--hypothesis-profile=ci`` (hypothesis' built-in ci profile: derandomized, no database,
which this file registers again with more examples) runs many. Any other profile's max_examples is
used as it is.
"""

import math

import pytest

pytest.importorskip("hypothesis")  # the test extra's

import torch  # noqa: E402
from conftest import DTYPES, same_bits, torch_relu  # noqa: E402
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import InvalidArgument  # noqa: E402

import torchext
from torchext.functional import OPS
from torchext.reference import EAGER

# ---- hypothesis profiles -------------------------------------------------------------------------

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
FAST_EXAMPLES = 50
CI_EXAMPLES = 300

try:
    _ci_parent = settings.get_profile("ci")  # recent hypothesis has a built-in ci profile
except InvalidArgument:
    _ci_parent = settings(derandomize=True, database=None, print_blob=True)
settings.register_profile(
    "ci", parent=_ci_parent, max_examples=CI_EXAMPLES, deadline=None, suppress_health_check=_HEALTH
)
settings.register_profile(
    "torchext-fast", max_examples=FAST_EXAMPLES, deadline=None, suppress_health_check=_HEALTH
)


def _settings():
    """The loaded profile's settings, except that hypothesis' "default" (100 examples) becomes
    torchext-fast so that a plain ``pytest`` run of this file stays short."""
    if settings.get_current_profile_name() == "default":
        return settings(settings.get_profile("torchext-fast"))
    return settings(deadline=None, suppress_health_check=_HEALTH)


# ---- dtypes and their constants ------------------------------------------------------------------

F64 = torch.float64
ACC = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float32,
       torch.float64: torch.float64}


def _u(dtype):
    """Unit roundoff."""
    return torch.finfo(dtype).eps / 2


def _eta(dtype):
    """The smallest subnormal."""
    fi = torch.finfo(dtype)
    return fi.tiny * fi.eps


def _fmax(dtype):
    return torch.finfo(dtype).max


# ---- strategies ----------------------------------------------------------------------------------


def _specials(dtype):
    fi = torch.finfo(dtype)
    return [0.0, -0.0, math.inf, -math.inf, math.nan, fi.max, -fi.max, fi.tiny, -fi.tiny,
            _eta(dtype), -_eta(dtype), fi.max ** (1 / 3), -(fi.max ** (1 / 3)), math.sqrt(fi.max),
            1.0, -1.0, 0.5]


@st.composite
def values(draw, dtype):
    """Python floats in every magnitude class of ``dtype`` (cast to it by the caller; values just
    above its range round to inf, which is a fine input too)."""
    fi = torch.finfo(dtype)
    kind = draw(st.sampled_from(["ordinary", "huge", "tiny", "special", "non-finite"]))
    if kind == "ordinary":
        return draw(st.floats(-4, 4))
    if kind == "special":
        return draw(st.sampled_from(_specials(dtype)))
    if kind == "non-finite":
        return draw(st.sampled_from([math.inf, -math.inf, math.nan]))
    sign = draw(st.sampled_from([1.0, -1.0]))
    if kind == "huge":
        return sign * draw(st.floats(1e2, float(fi.max)))
    return sign * draw(st.floats(_eta(dtype), 1e-2))


SMALL_SHAPES = st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple)
EMPTY_SHAPES = st.sampled_from([(0,), (3, 0), (0, 4, 2)])
# More than 2^16 elements: the CPU kernels' parallel path and several reduction chunks.
LARGE_SHAPES = st.sampled_from([(65_537,), (2**17 + 3,), (257, 263), (3, 2**15 + 5), (2, 181, 183)])
# Weighted: small shapes most often; large ones (each costs ~100x a small one) about one in six.
SHAPES = st.sampled_from(["small"] * 6 + ["0-dim", "empty", "large", "large"]).flatmap(
    lambda kind: {"small": SMALL_SHAPES, "0-dim": st.just(()), "empty": EMPTY_SHAPES,
                  "large": LARGE_SHAPES}[kind]
)


@st.composite
def tensors(draw, dtype, shape, specials=True):
    """A tensor of ``shape`` and ``dtype`` that is a view: contiguous, transposed, sliced with a
    step, or expanded/broadcast from fewer elements. Returns (leaf, view_fn, description): the
    leaf holds the data, ``view_fn(leaf)`` gives the tensor of ``shape``."""
    layouts = ["contiguous"] + (["sliced", "expanded", "broadcast"] if shape else [])
    layouts += ["transposed"] if len(shape) >= 2 else []
    layout = draw(st.sampled_from(layouts))
    dim = draw(st.integers(0, len(shape) - 1)) if shape else 0
    step, start = draw(st.integers(2, 3)), draw(st.integers(0, 1))
    storage = list(shape)
    if layout == "transposed":
        storage[-1], storage[-2] = storage[-2], storage[-1]
    elif layout == "sliced":
        storage[dim] = shape[dim] * step + start
    elif layout == "expanded":
        storage[dim] = 1
    elif layout == "broadcast":
        storage = storage[1:]  # expand adds the leading dimension back

    def view_fn(t):
        if layout == "transposed":
            return t.transpose(-1, -2)
        if layout == "sliced":
            return t[(slice(None),) * dim + (slice(start, None, step),)]
        if layout in ("expanded", "broadcast"):
            return t.expand(shape)
        return t

    # Random normal data at a drawn scale, then drawn values (specials among them) at drawn places.
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3]))
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(storage, dtype=F64, generator=gen) * scale
    n = data.numel()
    mode = draw(st.sampled_from(["none", "few", "many", "many"])) if specials and n else "none"
    if mode == "few":  # a few drawn values at drawn places
        flat = data.view(-1)
        for i, v in draw(st.lists(st.tuples(st.integers(0, n - 1), values(dtype)), max_size=8)):
            flat[i] = v
    elif mode == "many":  # drawn values scattered over a drawn fraction of the elements
        pool = torch.tensor(draw(st.lists(values(dtype), min_size=1, max_size=6)), dtype=F64)
        fraction = draw(st.sampled_from([0.01, 0.3, 1.0]))
        where = torch.rand(storage, generator=gen, dtype=F64) < fraction
        picks = pool[torch.randint(len(pool), storage, generator=gen)]
        data = torch.where(where, picks, data)
    leaf = data.to(dtype)
    assert view_fn(leaf).shape == torch.Size(shape)
    return leaf, view_fn, f"{layout}{tuple(shape)}"


@st.composite
def coefficient(draw, x_dtype, x_dim):
    """A coefficient as users pass it: a Python float, or a 0-dim or (1,) tensor (for an x of at
    least one dim) of a random floating dtype (requiring grad or not)."""
    kind = draw(st.sampled_from(["float", "0-dim", "(1,)"] if x_dim else ["float", "0-dim"]))
    dtype = x_dtype if kind == "float" else draw(st.sampled_from(DTYPES))
    v = draw(st.one_of(st.floats(-4, 4), st.floats(-4, 4), values(dtype)))
    if kind == "float":
        # torchext turns a Python float into a 0-dim tensor of the op-math type, which today fails
        # for values beyond float32's range with float32/half x (test_python_coefficient_beyond_
        # float32_range): keep these draws inside the op-math type's range, infinities apart.
        acc_max = _fmax(ACC[x_dtype])
        return v if not math.isfinite(v) or abs(v) <= acc_max else math.copysign(acc_max, v)
    t = torch.tensor(v if kind == "0-dim" else [v], dtype=F64).to(dtype)
    return t.requires_grad_(draw(st.booleans()))


@st.composite
def cases(draw, op):
    """(x, leaf, coefficients, g, description) for ``op``."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(SHAPES)
    leaf, view_fn, desc = draw(tensors(dtype, shape))
    leaf.requires_grad_()
    x = view_fn(leaf)
    with_coefs = bool(OPS[op].coefs)
    cs = [draw(coefficient(dtype, len(shape))) for _ in range(4)] if with_coefs else []
    g_leaf, g_view, _ = draw(tensors(dtype, shape, specials=draw(st.booleans())))
    g = g_view(g_leaf).contiguous()
    return x, cs, g, f"{op} {dtype} {desc} coefs={[_desc(c) for c in cs]}"


def _desc(c):
    if isinstance(c, float):
        return c
    return f"{c.dtype}{tuple(c.shape)}={c.item()}{'(grad)' if c.requires_grad else ''}"


# ---- the reference and the bounds ----------------------------------------------------------------


def _a(t):
    return t.abs()


def _terms(op, x, cs, g):
    """Per element, in float64, for each output of the op (forward y, dx, and the four
    coefficient-gradient terms t_k whose sums are the coefficient gradients): the sum of the
    absolute values of the terms (the bound's M) and the inputs the output depends on."""
    ax, ag = _a(x), _a(g)
    if op == "legendre_p3":
        return {
            "y": (2.5 * ax**3 + 1.5 * ax, {"x": x}),
            "dx": (ag * (7.5 * ax**2 + 1.5), {"g": g, "x": x}),
        }
    a, b, c, d = cs
    if op == "cubic":
        return {
            "y": (_a(a) + _a(b) * ax + _a(c) * ax**2 + _a(d) * ax**3,
                  {"x": x, "a": a, "b": b, "c": c, "d": d}),
            "dx": (ag * (_a(b) + 2 * _a(c) * ax + 3 * _a(d) * ax**2),
                   {"g": g, "x": x, "b": b, "c": c, "d": d}),
            "a": (ag, {"g": g}),
            "b": (ag * ax, {"g": g, "x": x}),
            "c": (ag * ax**2, {"g": g, "x": x}),
            "d": (ag * ax**3, {"g": g, "x": x}),
        }
    # affine: u = c + d x; besides P3 and P3' themselves, the bound carries the propagation of u's
    # rounding (|du| <= 2 u_acc U) through P3' and P3''.
    U = _a(c) + _a(d) * ax
    P, dP, ddP = 2.5 * U**3 + 1.5 * U, 7.5 * U**2 + 1.5, 15 * U
    every = {"g": g, "x": x, "b": b, "c": c, "d": d}
    return {
        "y": (_a(a) + _a(b) * (P + dP * U), {"x": x, "a": a, "b": b, "c": c, "d": d}),
        "dx": (ag * _a(b) * _a(d) * (dP + ddP * U), every),
        "a": (ag, {"g": g}),
        "b": (ag * (P + dP * U), {"g": g, "x": x, "c": c, "d": d}),
        "c": (ag * _a(b) * (dP + ddP * U), every),
        "d": (ag * _a(b) * (dP + ddP * U) * ax, every),
    }


def _big(deps):
    """A bound on every intermediate of an output's computation, from the inputs it depends on:
    16 (1+|g|) ((1+|x|) prod(1+|coef|))^3. It guards against op-math overflow, and eta_acc times
    it bounds the error of subnormal intermediates (at most eta/2 each, then multiplied by
    factors no larger than the rest of the product)."""
    big = torch.full((), 16.0, dtype=F64)
    for name, t in deps.items():
        big = big * (1 + t.abs()) ** (1 if name == "g" else 3)
    return big


def _flags(deps, shape, reduce):
    """(NaN among deps, inf among deps) per element, or for the whole sum when ``reduce``."""
    nan = torch.zeros(shape, dtype=torch.bool)
    inf = torch.zeros(shape, dtype=torch.bool)
    for t in deps.values():
        nan = nan | t.isnan()
        inf = inf | t.isinf()
    if reduce:
        return nan.any(), inf.any()
    return nan, inf


def _check(name, out, ref, mag, floor, guard, nan_in, inf_in, out_dtype, acc, factor, desc):
    """The contract for one output (see the module docstring)."""
    out = out.detach().double()
    u_acc, u_out = _u(acc), _u(out_dtype)
    fin_in = ~nan_in & ~inf_in
    ok = torch.ones_like(out, dtype=torch.bool)
    ok &= ~nan_in | out.isnan()
    ok &= ~(inf_in & ~nan_in) | ~out.isfinite()
    if acc != F64:
        # Evaluated in float64, eager cannot overflow on inputs of float32 or narrower.
        assert bool((ref.isfinite() | ~fin_in).all()), f"{desc}: reference overflowed ({name})"
    tol = factor * u_acc * mag + u_out * ref.abs() + floor + _eta(out_dtype)
    both = fin_in & ref.isfinite() & out.isfinite()
    close = (out - ref).abs() <= tol
    ok &= ~both | close
    # A non-finite result from finite inputs: only where op-math may overflow, or as ±inf of the
    # right sign where the exact value is at the edge of the result dtype's range.
    overflow_possible = guard >= _fmax(acc) / 4
    edge = out.isinf() & (out.sign() == ref.sign()) & (ref.abs() + tol >= _fmax(out_dtype))
    ok &= ~(fin_in & ref.isfinite() & ~out.isfinite()) | overflow_possible | edge
    if not bool(ok.all()):
        i = (~ok).nonzero()[0].tolist() if ok.dim() else []
        idx = tuple(i)
        pytest.fail(
            f"{desc}: {name} at {idx}: torchext {out[idx].item()!r}, eager (float64) "
            f"{ref[idx].item()!r}, tolerance {tol[idx].item()!r}, nan_in {bool(nan_in[idx])}, "
            f"inf_in {bool(inf_in[idx])}, overflow possible {bool(overflow_possible[idx])}"
        )


def _events(x, cs, desc):
    """What the run covered (shown by --hypothesis-show-statistics)."""
    event(f"dtype {x.dtype}")
    event(desc.split()[2].split("(")[0])
    event("numel > 2^16" if x.numel() > 2**16 else "numel 0" if x.numel() == 0 else "numel small")
    event("non-finite x" if not bool(x.detach().isfinite().all()) else "finite x")
    for c in cs:
        event(f"coefficient {'float' if isinstance(c, float) else f'{c.dtype} {tuple(c.shape)}'}")


def check_op(op, x, cs, g, desc):
    dtype, acc = x.dtype, ACC[x.dtype]
    _events(x, cs, desc)
    fn = getattr(torchext, op)
    y = fn(x, *cs)
    assert y.shape == x.shape and y.dtype == dtype, desc
    wrt = [x] + [c for c in cs if isinstance(c, torch.Tensor) and c.requires_grad]
    grads = torch.autograd.grad(y, wrt, g)
    for c, gc in zip(wrt[1:], grads[1:], strict=True):
        assert gc.shape == c.shape and gc.dtype == c.dtype, desc

    # The same inputs in float64: x exactly, coefficients rounded to op-math first.
    x64 = x.detach().double().requires_grad_()
    c64 = [
        torch.tensor(c, dtype=acc).double() if isinstance(c, float)
        else c.detach().to(acc).double().reshape(())
        for c in cs
    ]
    c64 = [c.requires_grad_() for c in c64]
    g64 = g.double()
    ref = EAGER[op](x64, *c64)
    ref_grads = torch.autograd.grad(ref, [x64, *c64], g64)
    named = {"dx": ref_grads[0], **dict(zip("abcd", ref_grads[1:], strict=False))}

    terms = _terms(op, x64.detach(), [c.detach() for c in c64], g64)
    for name, out in [("y", y), ("dx", grads[0])]:
        mag, deps = terms[name]
        big = _big(deps)
        nan_in, inf_in = _flags(deps, x.shape, reduce=False)
        expected = ref.detach() if name == "y" else named["dx"]
        _check(name, out, expected, mag, _eta(acc) * big, big, nan_in, inf_in, dtype, acc, 16,
               desc)

    n = x.numel()
    sum_factor = min(n, 1100) + 16  # sequential sums of <= 1024 per lane, + lanes and chunks
    for c, name in zip(cs, "abcd", strict=False):  # none for P3
        if not (isinstance(c, torch.Tensor) and c.requires_grad):
            continue
        out = grads[next(i for i, t in enumerate(wrt) if t is c)]
        mag, deps = terms[name]
        big = _big(deps).expand(x.shape)
        nan_in, inf_in = _flags(deps, x.shape, reduce=True)
        _check(f"grad {name}", out.reshape(()), named[name], mag.expand(x.shape).sum(),
               _eta(acc) * (big.sum() + n), big.sum(), nan_in, inf_in, c.dtype, acc,
               sum_factor, desc)


# ---- the properties ------------------------------------------------------------------------------


def _matches_eager(op):
    @_settings()
    @given(case=cases(op))
    def test(case):
        x, cs, g, desc = case
        check_op(op, x, cs, g, desc)

    test.__doc__ = f"torchext.{op}: values and gradients against eager, within the error bound."
    return test


# Marked slow where a run of the torchext-fast profile can take more than a few seconds: cubic
# 14-39 s and affine P3 9-52 s in two runs on a 2-core machine, against 1-2 s for P3 and 1-6 s for
# ReLU, which stay in the default run.
test_cubic_matches_eager = pytest.mark.slow(_matches_eager("cubic"))
test_legendre_p3_matches_eager = _matches_eager("legendre_p3")
test_affine_legendre_p3_matches_eager = pytest.mark.slow(_matches_eager("affine_legendre_p3"))


@_settings()
@given(st.data())
def test_relu_is_torch_relu_bit_for_bit(data):
    dtype = data.draw(st.sampled_from(DTYPES))
    shape = data.draw(SHAPES)
    leaf, view_fn, desc = data.draw(tensors(dtype, shape))
    g_leaf, g_view, _ = data.draw(tensors(dtype, shape))
    g = g_view(g_leaf).contiguous()
    leaf.requires_grad_()
    x = view_fn(leaf)
    y = torchext.relu(x)
    expected = torch_relu(x)
    assert y.shape == expected.shape and y.dtype == dtype
    assert same_bits(y, expected), f"{dtype} {desc}: values differ"
    (dx,) = torch.autograd.grad(y, x, g)
    (expected_dx,) = torch.autograd.grad(expected, x, g)
    assert same_bits(dx, expected_dx), f"{dtype} {desc}: gradients differ"
    # In place, on a copy (an expanded view cannot be written in place).
    xc = x.detach().clone()
    out = torchext.relu(xc, inplace=True)
    assert out is xc and same_bits(xc, expected)


def test_relu_special_values_bit_for_bit():
    """The cases the random draws may miss, every dtype: ±0 (sign kept), ±inf, NaN, subnormals."""
    for dtype in DTYPES:
        eta = _eta(dtype)
        x = torch.tensor([-0.0, 0.0, math.inf, -math.inf, math.nan, eta, -eta, -1.0, 1.0],
                         dtype=dtype, requires_grad=True)
        g = torch.tensor([1.0, -1.0, 2.0, 3.0, 4.0, math.nan, math.inf, -0.0, -0.0], dtype=dtype)
        y, ye = torchext.relu(x), torch_relu(x)
        assert same_bits(y, ye), dtype
        assert same_bits(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ye, x, g)[0]), dtype


def test_python_coefficient_beyond_float32_range():
    """A Python-float coefficient outside float32's range with float32 (or half) x: eager torch
    rounds it to inf in op-math, as ``1e300 * x`` does; torchext must do the same, not fail while
    converting it (today: RuntimeError "value cannot be converted to type float without
    overflow", which names neither the op nor the argument)."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.tensor([1.0, -2.0], dtype=dtype)
        for op in ("cubic", "affine_legendre_p3"):
            y = getattr(torchext, op)(x, 0.0, 1e300, 0.0, 1.0)
            expected = EAGER[op](x.double(), 0.0, torch.tensor(1e300).float().double(), 0.0, 1.0)
            torch.testing.assert_close(y.double(), expected.to(dtype).double(), equal_nan=True)


def test_python_int_coefficient_beyond_int64_range():
    """An int coefficient beyond int64's range is the real number it is (eager torch refuses to
    unpack it: "Overflow when unpacking long"), as its float would be: 1e40 in float64, inf in
    float32's op-math."""
    for dtype, expected in ((torch.float64, 1e40), (torch.float32, math.inf)):
        x = torch.tensor([1.0, -2.0], dtype=dtype)
        for op in ("cubic", "affine_legendre_p3"):
            y = getattr(torchext, op)(x, 0.0, 10**40, 0.0, 1.0)
            assert torch.equal(y, getattr(torchext, op)(x, 0.0, float(10**40), 0.0, 1.0))
        assert torchext.cubic(x, 10**40, 0.0, 0.0, 0.0).tolist() == [expected, expected]
