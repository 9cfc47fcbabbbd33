"""What the subcommands' options share, so that demo, bench and info spell and check them alike:
``--device DEVICE``, ``--threads N``, positive numbers, and optional packages.

Only a chosen subcommand's module imports this (torch is loaded by then); ``torchext --help``
needs none of it.
"""

import argparse
import importlib.util


def positive(kind):
    """An argparse type: a positive ``kind`` (int or float)."""
    noun = {int: "integer", float: "number"}[kind]

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be a positive {noun}, got {text!r}")
        return value

    return parse


def device(indexed: bool):
    """An argparse type: ``cpu`` or ``cuda`` (``cuda:N`` too where ``indexed``), as a string; a
    usage error where torchext cannot run on CUDA here."""
    names = "cpu or cuda (or cuda:N)" if indexed else "cpu or cuda"

    def parse(text: str) -> str:
        import torch

        from .functional import OPS

        kind, colon, index = text.partition(":")
        with_index = indexed and kind == "cuda" and index.isdigit()
        if kind not in ("cpu", "cuda") or (colon and not with_index):
            raise argparse.ArgumentTypeError(f"must be {names}, got {text!r}")
        if kind == "cuda" and not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                "CUDA is not available (torch.cuda.is_available() is False)")
        if kind == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key(
            f"torchext::{next(iter(OPS))}", "CUDA"
        ):
            raise argparse.ArgumentTypeError("torchext was built without CUDA kernels")
        return text

    return parse


def add_threads(parser: argparse.ArgumentParser) -> None:
    import torch

    parser.add_argument("--threads", type=positive(int), metavar="N",
                        help="CPU threads for the run (torch.set_num_threads; default: torch's, "
                             f"here {torch.get_num_threads()})")


def missing(package: str, needed_for: str) -> str | None:
    """The error message when the optional ``package`` (of the ``bench`` extra) is not installed,
    else None: checked before any work, so that a long run does not die at its end."""
    if importlib.util.find_spec(package) is not None:
        return None
    return f"{needed_for} needs {package}: pip install {package} (or torchext[bench])"
