"""`acml register`: log a trained run as an MLflow pyfunc, register it and set an alias."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "register",
        help="register a trained run in the MLflow model registry (models:/NAME@ALIAS)",
        description="RUN is a run folder (model/, optionally summary.json), a model folder, an s3:// run, or "
        "an MLflow run id / runs:/ID/model URI whose artifacts hold the model.",
    )
    parser.add_argument("run", metavar="RUN", help="run folder, s3:// location or MLflow run id")
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--alias", default="champion", help="alias pointed at the new version")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking/registry URI (default $MLFLOW_TRACKING_URI, else sqlite:///RUN/mlflow.db)",
    )
    parser.add_argument("--description", help="model version description")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acml_ray.registry import register_run

    registered = register_run(
        args.run, args.name, alias=args.alias, tracking_uri=args.tracking_uri, description=args.description
    )
    print(f"registered: {registered.name} version {registered.version} (alias {registered.alias})")
    print(f"model uri: {registered.model_uri}")
    print(f"tracking uri: {registered.tracking_uri}")
    return 0
