"""`prefix-server bench`: the benchmarks live beside the package, not in it; this says where."""

from __future__ import annotations

import argparse
import sys

MOVED = ("prefix-server bench: the benchmarks live beside the package, in benchmarks/ of the source tree; "
         "from a checkout run `python -m benchmarks {level} ...` (benchmarks/README.md)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="moved: `python -m benchmarks` in the source tree",
                                   description=MOVED.format(level="LEVEL"))
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    level = args.rest[0] if args.rest and not args.rest[0].startswith("-") else "LEVEL"
    print(MOVED.format(level=level), file=sys.stderr)
    return 2
