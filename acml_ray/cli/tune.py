"""`acml tune`: a Ray Tune study (HyperOpt + ASHA) over distributed training, tracked in MLflow."""

from __future__ import annotations

import argparse

from acml_ray.cli.common import add_config_arguments, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tune",
        help="hyperparameter search over training (Ray Tune, HyperOpt, ASHA, MLflow)",
        description="Run the study tune.name (resumed when its folder already holds one); the best "
        "trial's model and config are exported to OUTPUT/best.",
    )
    add_config_arguments(parser)
    parser.add_argument("--space", required=True, help="search space YAML (e.g. tune_spaces/acml.yaml)")
    parser.add_argument("--out", help="output folder (config output_dir)")
    parser.add_argument("--train", help="training table (path or s3://); default train.train_table")
    parser.add_argument("--val", help="validation table (path or s3://); default train.val_table")
    parser.add_argument("--name", help="study name (config tune.name); the same name resumes the study")
    parser.add_argument("--samples", type=int, help="number of trials (config tune.num_samples)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acml_ray.train import init_ray
    from acml_ray.tune import load_space, run_study

    cfg = config_from_args(args, extra={"tune.name": args.name, "tune.num_samples": args.samples})
    space = load_space(args.space, cfg)  # validate before starting Ray
    init_ray(use_gpu=cfg.train.use_gpu)
    study = run_study(cfg, space, args.train, args.val)
    print(report(study))
    return 0 if study.complete else 3


def report(study) -> str:
    """A short text report of a `StudyResult`."""
    lines = [f"study: {study.study_uri}" + (" (resumed)" if study.resumed else "")]
    for t in study.trials:
        score = "n/a" if t.score is None else f"{t.score:.4f}"
        state = "error" if t.error else ("stopped early" if t.stopped_early else "completed")
        lines.append(f"  trial {t.trial_id}: best {score} after {t.epochs} epochs ({state}) {t.params}")
    if not study.complete:
        lines.append("interrupted: run the same command again to resume the study")
    elif study.best is not None:
        lines.append(f"best trial: {study.best.trial_id} score {study.best.score:.4f}")
        lines.append(f"best params: {study.best.params}")
        lines.append(f"best model and config: {study.best_dir}")
    if study.parent_run_id:
        lines.append(f"mlflow parent run: {study.parent_run_id}")
    return "\n".join(lines)
