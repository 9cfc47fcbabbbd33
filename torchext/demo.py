"""``python -m torchext demo``: the programs of the PyTorch tutorial "Learning PyTorch with
Examples", each run with the tutorial's pure-Python ops (``torchext.reference``) and with torchext.

  1a. fit sin(x) with a cubic, tensors: the tutorial's hand-computed gradients (and its eager
      expression with autograd, for context) vs ``torchext.cubic`` with autograd (lr 1e-6, 2000
      steps, coefficients from ``randn(())``);
  1b. fit sin(x) with a cubic, nn.Module + optim.SGD (and the tutorial's
      ``MSELoss(reduction="sum")``): ``reference.Polynomial3`` vs ``torchext.nn.Cubic``;
  2.  fit sin(x) with ``a + b·P3(c + d·x)`` from (0, -1, 0, 0.3), lr 5e-6, 2000 steps: the
      tutorial's ``LegendrePolynomial3`` vs ``torchext.LegendreP3Function`` in the same model vs
      the fused ``torchext.affine_legendre_p3``;
  3.  the two-layer net ``relu(x.mm(w1)).mm(w2)`` (N, D_in, H, D_out = 64, 1000, 100, 10; lr 1e-6,
      500 steps): the tutorial's ``MyReLU`` vs ``torchext.relu``.

``--steps N`` sets the sin(x) fits' steps to N and the two-layer net's to N/4 (as 2000 and 500).
On a machine whose cores are busy with other work, the two-layer net's matmuls can be many times
slower on several threads than on one (OpenMP threads wait for each other): try ``--threads 1``.
Each version is a function ``(steps, device, dtype, seed) -> Result`` (the loss of every step, the
learned coefficients, the wall time); ``run_programs`` runs them all and ``format_table`` prints
them, so that tests and benchmarks can reuse the programs without the printing.
"""

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import torchext
from torchext import _cli, reference

# The tutorial's step counts: the sin(x) fits run STEPS, the two-layer net a quarter of that.
STEPS = 2000
QUICK_STEPS = 100
NET_STEPS_DIVISOR = 4
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Result:
    """One run of one version of a program: the loss of each step (before its update), the learned
    values (name -> number), the wall time of all steps but the first (a warm-up), and for the
    sin(x) fits the fitted curve on the data's x (for --plot)."""

    losses: list[float]
    coefficients: dict[str, float]
    seconds: float
    prediction: torch.Tensor | None = None
    version: str = ""


@dataclass
class Program:
    """A tutorial program: its versions (name, function), the reference first."""

    key: str
    title: str
    short_title: str  # for the plot
    versions: list[tuple[str, Callable[..., Result]]]
    coefficient_names: tuple[str, ...] = ("a", "b", "c", "d")
    net: bool = False  # the two-layer net runs steps // NET_STEPS_DIVISOR steps
    note: str = ""
    results: list[Result] = field(default_factory=list)


# ---- the training loop shared by every program ---------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train(step: Callable[[], torch.Tensor], steps: int, device: torch.device):
    """Runs ``step`` (one training step that returns its loss) ``steps`` times. The first step is
    a warm-up and is not timed, but it is a real step of the trajectory. Losses stay on the device
    until the end (``.item()`` per step would synchronize CUDA every step)."""
    losses = [step().detach()]
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps - 1):
        losses.append(step().detach())
    _synchronize(device)
    seconds = time.perf_counter() - start
    return torch.stack(losses).double().cpu().tolist(), seconds


def _values(**tensors) -> dict[str, float]:
    return {name: float(t.detach().double().cpu()) for name, t in tensors.items()}


def _curve(y_pred: torch.Tensor) -> torch.Tensor:
    return y_pred.detach().double().cpu()


# ---- 1a. fit sin(x) with a cubic: tensors --------------------------------------------------------


def _random_cubic(seed: int, device, dtype):
    """The tutorial's initial coefficients: ``randn(())`` four times, for a, b, c, d."""
    torch.manual_seed(seed)
    return [torch.randn((), device=device, dtype=dtype) for _ in range(4)]


def cubic_manual(steps: int, device, dtype, seed: int) -> Result:
    """The tutorial's tensor program: forward expression, hand-computed gradients, manual update."""
    x, y = reference.sin_data(dtype=dtype, device=device)
    a, b, c, d = _random_cubic(seed, device, dtype)
    lr = 1e-6

    def step():
        y_pred = a + b * x + c * x**2 + d * x**3
        loss = (y_pred - y).pow(2).sum()
        grad_y_pred = 2.0 * (y_pred - y)
        grad_a, grad_b, grad_c, grad_d = reference.cubic_grads(x, grad_y_pred)
        a.sub_(lr * grad_a)
        b.sub_(lr * grad_b)
        c.sub_(lr * grad_c)
        d.sub_(lr * grad_d)
        return loss

    losses, seconds = _train(step, steps, torch.device(device))
    prediction = _curve(reference.cubic(x, a, b, c, d))
    return Result(losses, _values(a=a, b=b, c=c, d=d), seconds, prediction)


def _fit_autograd(model, coefs, lr: float, steps: int, device, dtype) -> Result:
    """The tutorial's autograd programs: ``model(x, a, b, c, d)`` with coefficients that require
    grad, ``loss.backward()``, and SGD by hand under no_grad."""
    x, y = reference.sin_data(dtype=dtype, device=device)

    def step():
        loss = (model(x, *coefs) - y).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            for t in coefs:
                t -= lr * t.grad
                t.grad = None
        return loss

    losses, seconds = _train(step, steps, torch.device(device))
    a, b, c, d = coefs
    with torch.no_grad():
        prediction = _curve(model(x, a, b, c, d))
    return Result(losses, _values(a=a, b=b, c=c, d=d), seconds, prediction)


def _fit_cubic_autograd(model, steps: int, device, dtype, seed: int) -> Result:
    coefs = [t.requires_grad_() for t in _random_cubic(seed, device, dtype)]
    return _fit_autograd(model, coefs, 1e-6, steps, device, dtype)


def cubic_reference_autograd(steps: int, device, dtype, seed: int) -> Result:
    """The eager expression with autograd (the tutorial's "Tensors and autograd" program)."""
    return _fit_cubic_autograd(reference.cubic, steps, device, dtype, seed)


def cubic_autograd(steps: int, device, dtype, seed: int) -> Result:
    """``torchext.cubic`` with autograd."""
    return _fit_cubic_autograd(torchext.cubic, steps, device, dtype, seed)


# ---- 1b. fit sin(x) with a cubic: nn.Module + optim.SGD ------------------------------------------


def _fit_module(module_class, steps: int, device, dtype, seed: int) -> Result:
    """The tutorial's nn.Module program. The module is built on the CPU in float32, as the
    tutorial builds Polynomial3, and then moved: the same seed gives both modules the same start."""
    x, y = reference.sin_data(dtype=dtype, device=device)
    torch.manual_seed(seed)
    model = module_class().to(device=device, dtype=dtype)
    criterion = torch.nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def step():
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    losses, seconds = _train(step, steps, torch.device(device))
    with torch.no_grad():
        prediction = _curve(model(x))
    coefficients = _values(a=model.a, b=model.b, c=model.c, d=model.d)
    return Result(losses, coefficients, seconds, prediction)


def polynomial3_reference(steps: int, device, dtype, seed: int) -> Result:
    return _fit_module(reference.Polynomial3, steps, device, dtype, seed)


def polynomial3_torchext(steps: int, device, dtype, seed: int) -> Result:
    return _fit_module(torchext.nn.Cubic, steps, device, dtype, seed)


# ---- 2. fit sin(x) with a + b·P3(c + d·x) --------------------------------------------------------


def _fit_legendre(model, steps: int, device, dtype) -> Result:
    """The tutorial's custom-Function program, with ``model(x, a, b, c, d)`` as the model."""
    coefs = [torch.full((), v, device=device, dtype=dtype, requires_grad=True)
             for v in (0.0, -1.0, 0.0, 0.3)]
    return _fit_autograd(model, coefs, 5e-6, steps, device, dtype)


def _legendre_function_model(x, a, b, c, d):
    return a + b * torchext.LegendreP3Function.apply(c + d * x)


def legendre_reference(steps: int, device, dtype, seed: int) -> Result:
    return _fit_legendre(reference.affine_legendre_p3_tutorial, steps, device, dtype)


def legendre_function(steps: int, device, dtype, seed: int) -> Result:
    return _fit_legendre(_legendre_function_model, steps, device, dtype)


def legendre_fused(steps: int, device, dtype, seed: int) -> Result:
    return _fit_legendre(torchext.affine_legendre_p3, steps, device, dtype)


# ---- 3. the two-layer net ------------------------------------------------------------------------


def two_layer_net(relu, steps: int, device, dtype, seed: int) -> Result:
    """The tutorial's two-layer net with a custom ReLU: ``relu(x.mm(w1)).mm(w2)``, SGD by hand."""
    n, d_in, h, d_out = 64, 1000, 100, 10
    torch.manual_seed(seed)
    x = torch.randn(n, d_in, device=device, dtype=dtype)
    y = torch.randn(n, d_out, device=device, dtype=dtype)
    w1 = torch.randn(d_in, h, device=device, dtype=dtype, requires_grad=True)
    w2 = torch.randn(h, d_out, device=device, dtype=dtype, requires_grad=True)
    lr = 1e-6

    def step():
        loss = (relu(x.mm(w1)).mm(w2) - y).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            w1.sub_(lr * w1.grad)
            w2.sub_(lr * w2.grad)
            w1.grad = None
            w2.grad = None
        return loss

    losses, seconds = _train(step, steps, torch.device(device))
    norms = {"|w1|": float(w1.detach().norm()), "|w2|": float(w2.detach().norm())}
    return Result(losses, norms, seconds)


def net_reference(steps: int, device, dtype, seed: int) -> Result:
    return two_layer_net(reference.MyReLU.apply, steps, device, dtype, seed)


def net_torchext(steps: int, device, dtype, seed: int) -> Result:
    return two_layer_net(torchext.relu, steps, device, dtype, seed)


# ---- the programs --------------------------------------------------------------------------------


def programs() -> list[Program]:
    return [
        Program("1a", "fit sin(x) with a + b·x + c·x² + d·x³, tensors", "cubic, tensors", [
            ("reference (manual grads)", cubic_manual),
            ("reference (autograd)", cubic_reference_autograd),
            ("torchext.cubic (autograd)", cubic_autograd),
        ], note=(
            "The tutorial's tensor program computes the gradients by hand, without autograd; the "
            "autograd versions\npay autograd's bookkeeping, which at 2000 points costs more than "
            "the arithmetic.")),
        Program("1b", "fit sin(x) with a + b·x + c·x² + d·x³, nn.Module + optim.SGD",
                "cubic, nn.Module + optim.SGD", [
            ("reference Polynomial3", polynomial3_reference),
            ("torchext.nn.Cubic", polynomial3_torchext),
        ]),
        Program("2", "fit sin(x) with a + b·P3(c + d·x)", "a + b·P3(c + d·x)", [
            ("reference (Python P3)", legendre_reference),
            ("torchext LegendreP3Function", legendre_function),
            ("torchext affine_legendre_p3", legendre_fused),
        ]),
        Program("3", "two-layer net relu(x·w1)·w2, N, D_in, H, D_out = 64, 1000, 100, 10",
                "two-layer net relu(x·w1)·w2", [
            ("reference MyReLU", net_reference),
            ("torchext.relu", net_torchext),
        ], coefficient_names=("|w1|", "|w2|"), net=True, note=(
            "MyReLU's gradient at exactly 0 is 1, torch.relu's and torchext.relu's is 0: where "
            "x·w1 hits an exact 0\n(float32 does, after some steps) the trajectories part a "
            "little.")),
    ]


def program_steps(program: Program, steps: int) -> int:
    return max(2, steps // NET_STEPS_DIVISOR) if program.net else steps


def run_programs(steps: int, device, dtype, seed: int, progress=None) -> list[Program]:
    """Runs every version of every program (``steps`` as for ``--steps``); ``progress(text)`` is
    told of each version as it starts and as it finishes."""
    result = programs()
    for program in result:
        n = program_steps(program, steps)
        for version, function in program.versions:
            if progress is not None:
                progress(f"[{program.key + ']':<3} {version:<28} {n:>5} steps ... ")
            r = function(n, device, dtype, seed)
            r.version = version
            program.results.append(r)
            if progress is not None:
                progress(f"{r.seconds:.3f} s\n")
    return result


def max_relative_difference(losses, reference_losses, every: int = 1) -> float:
    """The largest ``|l - l_ref| / |l_ref|`` over every ``every``-th step."""
    return max(abs(a - b) / max(abs(b), 1e-30)
               for a, b in zip(losses[::every], reference_losses[::every], strict=True))


# ---- printing ------------------------------------------------------------------------------------


def _number(value: float) -> str:
    return f"{value:.4g}" if value == 0 or 1e-4 <= abs(value) < 1e6 else f"{value:.2e}"


def format_table(program: Program, steps: int, device, dtype) -> str:
    """The program's results, one row per version, the reference first."""
    names = program.coefficient_names
    header = (f"{'version':<29}{'final loss':>11}"
              + "".join(f"{n:>10}" for n in names)
              + f"{'time':>10}{'speedup':>9}{'Δloss':>9}")
    dtype_name = str(dtype).removeprefix("torch.")
    lines = [f"{program.key}. {program.title}   ({program_steps(program, steps)} steps, "
             f"{device}, {dtype_name})", header, "-" * len(header)]
    base = program.results[0]
    for r in program.results:
        speedup = f"{base.seconds / r.seconds:.2f}x" if r.seconds > 0 else "-"
        diff = "-" if r is base else f"{max_relative_difference(r.losses, base.losses):.1e}"
        coefficients = "".join(f"{_number(r.coefficients[n]):>10}" for n in names)
        lines.append(f"{r.version:<29}{_number(r.losses[-1]):>11}{coefficients}"
                     f"{r.seconds:>8.3f} s{speedup:>9}{diff:>9}")
    if program.note:
        lines.append(program.note)
    return "\n".join(lines)


FOOTNOTE = (
    "time: wall time of all steps but the first (a warm-up). speedup: the reference's time / this "
    "version's.\nΔloss: the largest relative difference from the reference's loss, over all steps."
)


def plot(progs: list[Program], path: str) -> None:
    """sin(x) and every fitted curve; each program's loss curves (log scale); the wall times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fits, times_ax = axes[0, 0], axes[1, 2]
    loss_axes = [axes[0, 1], axes[0, 2], axes[1, 0], axes[1, 1]]
    x, y = reference.sin_data(dtype=torch.float64)
    fits.plot(x, y, color="black", linewidth=4, alpha=0.3, label="sin(x)")
    styles = ["-", "--", ":"]
    labels, seconds, colors = [], [], []
    for program, ax in zip(progs, loss_axes, strict=True):
        for i, r in enumerate(program.results):
            label = f"{program.key}: {r.version}"
            if r.prediction is not None:
                fits.plot(x, r.prediction, linestyle=styles[i], label=label)
            ax.plot(range(1, len(r.losses) + 1), r.losses, linestyle=styles[i], label=r.version)
            labels.append(label)
            seconds.append(r.seconds)
            colors.append("0.6" if r.version.startswith("reference") else "C0")
        ax.set(title=f"{program.key}. {program.short_title}: loss", xlabel="step", ylabel="loss",
               yscale="log")
        ax.legend(fontsize=8)
    fits.set(title="sin(x) and the fitted curves", xlabel="x")
    fits.legend(fontsize=7)
    times_ax.barh(range(len(labels)), seconds, color=colors)
    times_ax.set_yticks(range(len(labels)), labels, fontsize=7)
    times_ax.invert_yaxis()
    times_ax.set(title="wall time (gray: the tutorial's ops)", xlabel="seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the command ---------------------------------------------------------------------------------


def _steps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"must be an integer >= 2 (a warm-up step and at least one timed step), got {text!r}")
    return value


def _png_path(text: str) -> str:
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"folder {folder!r} does not exist")
    return text


def default_device() -> str:
    cuda = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "torchext::cubic", "CUDA")
    return "cuda" if cuda else "cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=_cli.device(indexed=True), metavar="DEVICE",
                        help="cpu, cuda or cuda:N (default: cuda when torchext can run there, "
                             "else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="floating type of the data and parameters (default: float32)")
    parser.add_argument("--steps", type=_steps, default=None, metavar="N",
                        help=f"training steps of the sin(x) fits; the two-layer net runs N/"
                             f"{NET_STEPS_DIVISOR} (default: the tutorial's {STEPS} and "
                             f"{STEPS // NET_STEPS_DIVISOR}; with --quick {QUICK_STEPS})")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the random initial values (default: 0)")
    _cli.add_threads(parser)
    parser.add_argument("--plot", metavar="FILE", type=_png_path,
                        help="write a PNG: sin(x) and the fitted curves, the loss curves, the "
                             "times")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_STEPS} and {QUICK_STEPS // NET_STEPS_DIVISOR} steps instead "
                             f"of {STEPS} and {STEPS // NET_STEPS_DIVISOR} (for CI); --steps "
                             "overrides it")


def step_count(args: argparse.Namespace) -> int:
    """The sin(x) fits' steps: --steps, else QUICK_STEPS with --quick, else the tutorial's STEPS."""
    return args.steps or (QUICK_STEPS if args.quick else STEPS)


def run(args: argparse.Namespace) -> int:
    error = args.plot and _cli.missing("matplotlib", "--plot")
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        _run(args)
    finally:
        torch.set_num_threads(threads)
    return 0


def _run(args: argparse.Namespace) -> None:
    device = torch.device(args.device or default_device())
    dtype = DTYPES[args.dtype]
    steps = step_count(args)

    def progress(text):
        print(text, end="", file=sys.stderr, flush=True)

    progs = run_programs(steps, device, dtype, args.seed, progress)
    n = torch.get_num_threads()
    threads = "" if device.type == "cuda" else f", {n} thread{'s' if n > 1 else ''}"
    print(f"torchext {torchext.__version__} demo (torch {torch.__version__}{threads}, seed "
          f"{args.seed}): the tutorial's programs with its pure-Python ops and with torchext\n")
    for program in progs:
        print(format_table(program, steps, device, dtype))
        print()
    print(FOOTNOTE)
    if args.plot:
        plot(progs, args.plot)
        print(f"plot written to {args.plot}")
