"""`acml train`: train the graph encoder on prepared tables with Ray Train + DeepSpeed."""

from __future__ import annotations

import argparse

from acml_ray.cli.common import add_config_arguments, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train on prepared tables (Ray Train + DeepSpeed, MLflow)")
    add_config_arguments(parser)
    parser.add_argument("--out", help="output folder (config output_dir)")
    parser.add_argument("--train", help="training table (path or s3://); default train.train_table")
    parser.add_argument("--val", help="validation table (path or s3://); default train.val_table")
    parser.add_argument("--name", help="run name (default train-<timestamp>)")
    parser.add_argument(
        "--resume", metavar="RUN", help="continue run RUN from its latest checkpoint (same storage path and name)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acml_ray.train import fit, init_ray

    cfg = config_from_args(args)
    if args.resume and args.name and args.name != args.resume:
        raise ValueError("--name and --resume name different runs")
    init_ray(use_gpu=cfg.train.use_gpu)
    result = fit(cfg, args.train, args.val, run_name=args.resume or args.name, resume=bool(args.resume))
    print(f"run: {result.run_uri}")
    print(f"best model: {result.best_model_dir.resolve()} (epoch {result.best_metrics.get('epoch')})")
    if result.mlflow_run_id:
        print(f"mlflow run: {result.mlflow_run_id}")
    return 0
