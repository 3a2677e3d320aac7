"""`acml`: command line of acml-ray. Each subcommand lives in `acml_ray/cli/<name>.py` with an
`add_parser(subparsers)` function; commands only assemble configuration and call the library."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from acml_ray.environment import apply_defaults
from acml_ray.storage import StorageError

# Subcommand modules, in the order `acml --help` lists them.
COMMANDS: tuple[str, ...] = ("demo", "embed", "evaluate", "register", "train", "tune")

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acml", description=__doc__.split(".")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"acml_ray.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_defaults()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, StorageError) as exc:  # bad input or location: no traceback
        print(f"acml: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
