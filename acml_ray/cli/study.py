"""`acml study`: the paper-scale study (input -> embed -> train -> evaluate -> compare -> ablations)."""

from __future__ import annotations

import argparse

from acml_ray.cli.common import add_config_arguments, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    from acml_ray.pipelines.study import STAGES

    parser = sub.add_parser(
        "study",
        help="run or continue the paper-scale study (packaged config: 100k+ molecules, image + SMILES)",
        description="Each stage is skipped when its result is on disk, so rerunning the command continues "
        "an interrupted study. Results: OUTPUT/study/results.json and results.md.",
    )
    add_config_arguments(parser)
    parser.add_argument("--out", help="output folder (default: runs/study)")
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated stages to run, in this order: {','.join(STAGES)} (default: all)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acml_ray.pipelines.study import run_study, write_results_markdown

    cfg = config_from_args(args, "study")
    results = run_study(cfg, [s for s in args.stages.split(",") if s])
    path = write_results_markdown(results, cfg)
    print(f"results: {path.resolve()}")
    return 0
