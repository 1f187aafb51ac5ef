"""The `prefix-server` console command: dispatches to one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines register(subparsers), which adds its parser and sets `func` to its runner.
COMMAND_MODULES = [
    "server.commands.serve",
    "server.commands.migrate",
    "server.commands.train",
    "server.commands.import_checkpoint",
    "server.commands.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefix-server", description="Serve many P-tuning v2 classifiers from one backbone."
    )
    parser.error = lambda message: usage_error(parser.prog, message)  # one line, not the whole usage
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def usage_error(prog: str, message: str):
    from server.commands.settings_flags import usage_error as one_line

    one_line(prog, message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
