"""`acml evaluate`: evaluate a trained run (retrieval, isomers, interpretability, downstream)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate", help="evaluate a trained model: retrieval, isomers, descriptors, property prediction",
        description="Writes report.json, report.md, PNG plots and scaffold splits to --out; logs them "
                    "to MLflow when eval.tracking_uri / $MLFLOW_TRACKING_URI is set. Evaluation options "
                    "are the `eval` section of --config (only that section is read) and --set eval.*=...")
    parser.add_argument("--model", required=True,
                        help="run folder, model folder (with model.pt), s3:// location, or runs:/ / models:/ URI")
    parser.add_argument("--data", help="held-out molecules: prepared table (.parquet with emb__ columns), "
                                       "molecule CSV/Parquet path or URI, or a shipped source name "
                                       "(default: the run's data/val.parquet, else the run config's "
                                       "train.val_table)")
    parser.add_argument("--task", action="append", metavar="NAME_OR_PATH",
                        help="downstream task: shipped name (b3db_classification, b3db_regression, freesolv, "
                             "solubility) or a MoleculeNet/TDC CSV path (repeatable; replaces the defaults)")
    parser.add_argument("--sections", help="comma list of retrieval,isomers,interpret,downstream (default: all)")
    parser.add_argument("--cache-dir", help="embedding cache root (default: the run's cache)")
    parser.add_argument("--out", help="output folder (default: RUN/evaluation or ./evaluation)")
    parser.add_argument("--config", help="YAML whose `eval:` section configures the evaluation")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override an eval value, e.g. --set eval.downstream.epochs=5 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="print only the report path")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from acml_ray.cli.common import parse_overrides
    from acml_ray.config import TaskConfig, load_config

    overrides = parse_overrides(args.set or [])
    outside = [k for k in overrides if not k.startswith("eval.")]
    if outside:
        raise ValueError(f"acml evaluate only takes eval.* overrides, got {outside}")
    cfg = load_config(args.config, overrides).eval
    if args.sections is not None:
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        if not sections:
            raise ValueError("--sections is empty: name at least one of retrieval,isomers,interpret,downstream")
        cfg = cfg.model_validate(cfg.model_dump() | {"sections": sections})
    if args.task:
        tasks = [TaskConfig(name=Path(t).stem, path=t) if ("/" in t or "." in t) else TaskConfig(name=t)
                 for t in args.task]
        cfg.downstream = cfg.downstream.model_copy(update={"tasks": tasks})
    out = args.out or (str(Path(args.model) / "evaluation") if Path(args.model).is_dir() else "evaluation")
    from acml_ray.evaluate.suite import evaluate_run  # torch, RDKit, MLflow: only once the arguments are valid

    report = evaluate_run(args.model, cfg, out, data=args.data, cache_dir=args.cache_dir)
    print(f"report: {(Path(out) / 'report.md').resolve()}")
    if not args.quiet and report.get("mlflow_run_id"):
        print(f"mlflow run: {report['mlflow_run_id']}")
    return 0
