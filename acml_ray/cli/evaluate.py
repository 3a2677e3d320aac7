"""`acml evaluate`: evaluate a trained run (retrieval, isomers, interpretability, downstream)."""

from __future__ import annotations

import argparse
import re
import textwrap
from typing import get_args

from pydantic import ValidationError

from acml_ray.config import EvalConfig, LabelKind, TaskConfig, validation_summary

_TASK_HELP = """\
downstream task (repeatable; replaces the configured tasks): a shipped name (b3db_classification,
b3db_regression, freesolv, solubility) or PATH[:SMILES_COLUMN[:LABEL[=KIND],...]] for a CSV/TSV/Parquet
file or URI, KIND classification or regression. Examples: --task my.csv (columns guessed),
--task chembl.tsv:canonical_smiles:pIC50, --task assay.csv:smiles:pIC50=regression,active=classification.
Unnamed kinds are inferred per label (only 0/1 values -> classification); a file with labels of both
kinds becomes two tasks, NAME-classification and NAME-regression"""

_PATH = re.compile(r"^(?P<path>.+?\.(?:csv|tsv|parquet|txt)(?:\.gz)?)(?::(?P<rest>.*))?$", re.IGNORECASE)


def parse_task(spec: str) -> TaskConfig:
    """``--task`` value -> TaskConfig: a shipped name, or ``PATH[:SMILES[:LABEL[=KIND],...]]``."""
    match = _PATH.match(spec)
    if match is None:
        if "/" in spec or "." in spec:  # a path without a table extension (a folder of shards)
            return TaskConfig(name=_stem(spec), path=spec)
        return TaskConfig(name=spec)
    path, rest = match["path"], match["rest"]
    smiles, _, labels = (rest or "").partition(":")
    columns, kinds = [], {}
    for item in filter(None, (x.strip() for x in labels.split(","))):
        column, _, kind = item.partition("=")
        if kind and kind not in get_args(LabelKind):
            raise ValueError(
                f"--task {spec!r}: kind {kind!r} of label {column!r} must be one of {', '.join(get_args(LabelKind))}"
            )
        columns.append(column)
        if kind:
            kinds[column] = kind
    try:
        return TaskConfig(
            name=_stem(path), path=path, smiles_column=smiles or None, label_columns=columns or None, kind=kinds or None
        )
    except ValidationError as err:
        raise ValueError(f"--task {spec!r}: {validation_summary(err)}") from None


def _stem(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"\.(csv|tsv|parquet|txt)(\.gz)?$", "", name, flags=re.IGNORECASE) or name


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="evaluate a trained model: retrieval, isomers, descriptors, property prediction",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Writes report.json, report.md, PNG plots, scaffold splits and quarantine.parquet "
            "(rejected rows with their reason) to --out (default ./evaluation-<run>, never inside "
            "the run folder); new embeddings go to --cache-dir (default acml-cache beside --out). "
            "A failed evaluation removes what it created. Logs to MLflow when eval.tracking_uri / "
            "$MLFLOW_TRACKING_URI is set. Other options are the `eval` section of --config and "
            "--set eval.*=...; guide: docs/evaluation.md",
            95,
        ),
        epilog="examples:\n"
        "  acml evaluate --model runs/demo\n"
        "  acml evaluate --model runs/demo --sections retrieval --data gallery.csv\n"
        "  acml evaluate --model runs/demo --sections downstream \\\n"
        "      --task chembl.csv:canonical_smiles:pIC50=regression,active=classification",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="run folder, model folder (with model.pt), a Train run's best/ folder, s3:// "
        "location, or runs:/ / models:/ URI",
    )
    parser.add_argument(
        "--data",
        help="held-out molecules (gallery) for retrieval and interpret: prepared "
        "table (.parquet with emb__ columns), molecule CSV/Parquet path or URI "
        "with a smiles column, or a shipped source name (default: the run's "
        "data/val.parquet, else the run config's train.val_table)",
    )
    parser.add_argument(
        "--exclude-training",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop --data molecules whose InChIKey is in the model's training table (default: "
        "on when that table is known); the overlap is reported either way",
    )
    parser.add_argument("--task", action="append", metavar="SPEC", help=_TASK_HELP)
    parser.add_argument(
        "--task-limit",
        type=int,
        metavar="N",
        help="use a seeded random sample of N rows of each task (default: every row)",
    )
    parser.add_argument(
        "--relation-column",
        metavar="NAME",
        help="column of censoring qualifiers (<, >, <=, >=) of regression labels (default: "
        "relation); censored rows are left out of training and metrics",
    )
    parser.add_argument(
        "--keep-censored", action="store_true", help="use censored regression labels as exact values instead"
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="downstream fits run in parallel (default: Ray's free CPUs as Ray tasks when Ray "
        "is initialised or this is a Ray job, else local processes on the CPUs this "
        "process may use)",
    )
    parser.add_argument("--sections", help="comma list of retrieval,isomers,interpret,downstream (default: all)")
    parser.add_argument("--cache-dir", help="embedding cache root for new molecules (default: acml-cache beside --out)")
    parser.add_argument("--out", help="output folder (default: ./evaluation-<run name>)")
    parser.add_argument("--config", help="YAML whose `eval:` section configures the evaluation")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override an eval value, e.g. --set eval.downstream.epochs=5 (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines or bars; print only the report path")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from acml_ray.cli.common import parse_overrides
    from acml_ray.config import load_config

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
    try:
        cfg = _with_flags(cfg, args)
    except ValidationError as err:
        raise ValueError(f"invalid evaluation options: {validation_summary(err)}") from None
    from acml_ray.evaluate.suite import default_out_dir, evaluate_run  # torch, RDKit: once arguments are valid

    out = Path(args.out) if args.out else default_out_dir(args.model)
    report = evaluate_run(args.model, cfg, out, data=args.data, cache_dir=args.cache_dir, progress=not args.quiet)
    print(f"report: {(out / 'report.md').resolve()}")
    if not args.quiet and report.get("mlflow_run_id"):
        print(f"mlflow run: {report['mlflow_run_id']}")
    return 0


def _with_flags(cfg: EvalConfig, args: argparse.Namespace) -> EvalConfig:
    """The eval config with the task and downstream flags applied (validated)."""
    tasks = [parse_task(t) for t in args.task] if args.task else cfg.downstream.tasks
    per_task = {
        k: v
        for k, v in (
            ("limit", args.task_limit),
            ("relation_column", args.relation_column),
            ("censored", "keep" if args.keep_censored else None),
        )
        if v is not None
    }
    if per_task:
        tasks = [TaskConfig.model_validate(t.model_dump() | per_task) for t in tasks]
    downstream = cfg.downstream.model_dump() | {"tasks": [t.model_dump() for t in tasks]}
    if args.workers is not None:
        downstream["workers"] = args.workers
    update = {"downstream": downstream}
    if args.exclude_training is not None:
        update["exclude_training"] = args.exclude_training
    return cfg.model_validate(cfg.model_dump() | update)  # validated: --task-limit 0 is an error here
