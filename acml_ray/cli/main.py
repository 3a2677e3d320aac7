"""`acml`: command line of acml-ray. Each subcommand lives in `acml_ray/cli/<name>.py` with an
`add_parser(subparsers)` function; commands only assemble configuration and call the library."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Subcommand modules, in the order `acml --help` lists them.
COMMANDS: tuple[str, ...] = ("demo", "embed", "evaluate", "register", "train", "tune")

# Loopback-only, no telemetry, no hub downloads: defaults for every entry point (env wins).
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
    "GLOO_SOCKET_IFNAME": "lo",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acml", description=__doc__.split(".")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"acml_ray.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, PermissionError) as exc:
        print(f"acml: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
