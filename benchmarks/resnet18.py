"""In-place ReLU where it lives: torchvision's resnet18, with its ``nn.ReLU(inplace=True)``
modules swapped for ``torchext.nn.ReLU(inplace=True)``.

    python benchmarks/resnet18.py --out benchmarks/results/cpu   # needs torchvision

Measures, in rounds (``--rounds``; per row the median time over rounds, and the ratio's median
and range over rounds, which is the noise the goals are judged against; within a round the two
contenders alternate a block of about a millisecond of calls at a time):
  relu_      forward + backward of the in-place op alone at each of resnet18's activation shapes
             (batch --batch), torchext against torch.relu_ (goal: within 1.1x)
  eager      one training step of the whole model (forward, loss, backward, SGD), both ReLUs
  compiled   the same step under torch.compile (goal: within noise of the original)
and how many graphs torch.compile makes of the model in eval under no_grad (goal: 1, as the
original). Writes resnet18.csv and resnet18.md in --out. Host memory as in ``torchext bench``
(``--malloc``): by default freed memory is kept for reuse, so that the page faults of fresh 25 MB
activations do not swamp what the ReLUs cost.
"""

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch

import torchext
from torchext.bench import _device_name, _time_rounds, keep_freed_memory

# resnet18's activations (N, C, H, W) at 224x224 input, the stem's first: where its ReLUs run.
SHAPES = [(64, 112, 112), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]


def swap_relus(model: torch.nn.Module) -> torch.nn.Module:
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ReLU):
            setattr(model, name, torchext.nn.ReLU(inplace=child.inplace))
        else:
            swap_relus(child)
    return model


def time_pairs(stmts: dict, rounds: int, min_run_time: float) -> dict:
    """Each statement's median time per call (µs) in every round. Within a round the statements
    alternate as in ``torchext bench`` (``_time_rounds``: blocks of about a millisecond of calls,
    at least one, in reversed order every other time), until each has run for min_run_time and
    at least twice: the host's load, which on a shared machine changes from second to second,
    then falls on both alike. Timed in turns of min_run_time each instead, the ratios of the
    relu_ rows moved by up to 30% from one run to the next (benchmarks/NOTES.md §23)."""
    for stmt in stmts.values():
        stmt()
    times = {key: [] for key in stmts}
    for _ in range(rounds):
        blocks = _time_rounds(stmts, min_run_time, rounds=2, warmup=1)
        for key, t in blocks.items():
            times[key].append(statistics.median(t) * 1e6)
    return times


def row(what: str, shape: str, us: dict) -> dict:
    """The medians over rounds, and the ratio's median and range over rounds: the spread says
    what "within noise" means on this machine."""
    ratios = sorted(a / b for a, b in zip(us["torchext"], us["torch"], strict=True))
    return {"what": what, "shape": shape, "torchext_us": statistics.median(us["torchext"]),
            "torch_us": statistics.median(us["torch"]), "ratio": statistics.median(ratios),
            "ratio_min": ratios[0], "ratio_max": ratios[-1]}


def relu_rows(batch, rounds, min_run_time):
    rows = []
    for shape in SHAPES:
        base = torch.randn(batch, *shape, requires_grad=True)
        g = torch.randn(batch, *shape)

        def step(relu_, base=base, g=g):
            def run():
                h = base * 1  # a non-leaf, as a conv's output is
                torch.autograd.grad(relu_(h), base, g)
            return run

        us = time_pairs({"torchext": step(lambda t: torchext.relu(t, inplace=True)),
                         "torch": step(torch.relu_)}, rounds, min_run_time)
        rows.append(row("relu_ fwd+bwd", "x".join(map(str, (batch, *shape))), us))
    return rows


def train_step(model, x, target, opt):
    def run():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), target).backward()
        opt.step()
    return run


def model_rows(torchvision, batch, rounds, min_run_time, compiled: bool):
    torch.manual_seed(0)
    original = torchvision.models.resnet18()
    ours = swap_relus(torchvision.models.resnet18())
    ours.load_state_dict(original.state_dict())
    x, target = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    steps = {}
    for name, model in (("torchext", ours), ("torch", original)):
        run = torch.compile(model) if compiled else model
        steps[name] = train_step(run, x, target, torch.optim.SGD(model.parameters(), lr=1e-3))
    us = time_pairs(steps, rounds, min_run_time)
    what = "compiled train step" if compiled else "eager train step"
    return [row(what, f"{batch}x3x224x224", us)]


def eval_graphs(torchvision):
    """Graphs and graph breaks of torch.compile on resnet18 in eval under no_grad."""
    model = swap_relus(torchvision.models.resnet18()).eval()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 224, 224))
    return explanation.graph_count, explanation.graph_break_count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out"), metavar="DIR")
    parser.add_argument("--batch", type=int, default=8, metavar="N")
    parser.add_argument("--rounds", type=int, default=5, metavar="N")
    parser.add_argument("--min-run-time", type=float, default=0.2, metavar="SECONDS")
    parser.add_argument("--threads", type=int, metavar="N")
    parser.add_argument("--malloc", choices=("keep", "system"), default="keep",
                        help="keep (default): glibc's malloc keeps freed memory, as torchext bench")
    args = parser.parse_args(argv)
    try:
        import torchvision
    except ImportError:
        print("resnet18.py needs torchvision (pip install torchvision)", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = keep_freed_memory() if args.malloc == "keep" else "system"
    rows = relu_rows(args.batch, args.rounds, args.min_run_time)
    with torch.no_grad():
        graphs, breaks = eval_graphs(torchvision)
    for compiled in (False, True):
        rows += model_rows(torchvision, args.batch, args.rounds, args.min_run_time, compiled)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "resnet18.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["what", "shape", "torchext_us", "torch_us", "ratio",
                                    "ratio_min", "ratio_max"])
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()}
                         for r in rows)
    lines = ["# resnet18 with torchext's in-place ReLU", "",
             f"{_device_name('cpu')}, torch {torch.__version__}, torchvision "
             f"{torchvision.__version__}, {torch.get_num_threads()} threads, malloc {malloc}; "
             "the contenders alternate blocks of about 1 ms of calls in each round. Command: "
             f"`python benchmarks/resnet18.py --batch {args.batch} --rounds {args.rounds} "
             f"--min-run-time {args.min_run_time} --malloc {args.malloc}`.",
             "", "| what | shape | torchext µs | torch µs | torchext / torch (range over rounds) |",
             "|---|---|---:|---:|---:|",
             *(f"| {r['what']} | {r['shape']} | {r['torchext_us']:.0f} | {r['torch_us']:.0f} | "
               f"{r['ratio']:.3f} ({r['ratio_min']:.3f}–{r['ratio_max']:.3f}) |" for r in rows),
             "", f"torch.compile of the model in eval under no_grad: {graphs} graph(s), "
                 f"{breaks} graph break(s).", ""]
    (args.out / "resnet18.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
