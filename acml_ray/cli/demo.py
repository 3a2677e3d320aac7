"""`acml demo`: the whole pipeline on shipped real molecules, with an embedded default config."""

from __future__ import annotations

import argparse

from acml_ray.cli.common import add_config_arguments, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="featurise, embed, train and evaluate on shipped real molecules")
    add_config_arguments(parser)
    parser.add_argument("--out", help="output folder (default: runs/demo)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acml_ray.pipelines.demo import run_demo

    path = run_demo(config_from_args(args, "demo"), progress=not args.quiet)
    print(f"summary: {path.resolve()}")
    return 0
