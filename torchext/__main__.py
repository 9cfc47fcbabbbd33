"""The torchext command line: python -m torchext {demo,info,bench} (also the torchext script).

Each subcommand lives in its own module (demo.py, info.py, bench.py) with two functions:
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Only the chosen subcommand's
module is imported, and torch with it: ``--help`` imports neither (torchext/__init__.py defers
torch while this command line starts), so it answers at once instead of after seconds.
"""

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("torchext.demo", "the tutorial's programs: pure-Python ops vs torchext"),
    "info": ("torchext.info", "versions, kernels, devices, and a self-check of every op"),
    "bench": ("torchext.bench", "benchmark torchext vs the tutorial, eager, torch.compile"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of ``command`` (whose module it imports), or of none."""
    parser = argparse.ArgumentParser(prog="python -m torchext", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top level has no options but --help: the first other word names the subcommand.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS:
        import torchext

        try:
            torchext._load()
        except ImportError as e:  # e.g. built for another torch: the message says what to do
            print(f"error: {e}", file=sys.stderr)
            return 1
    args = build_parser(command).parse_args(argv)
    return importlib.import_module(COMMANDS[args.command][0]).run(args)


if __name__ == "__main__":
    sys.exit(main())
