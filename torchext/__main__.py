"""The torchext command line: python -m torchext {demo,info,bench} (also the torchext script).

Each subcommand lives in its own module (demo.py, info.py, bench.py) with two functions:
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m torchext", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return importlib.import_module(COMMANDS[args.command][0]).run(args)


if __name__ == "__main__":
    sys.exit(main())
