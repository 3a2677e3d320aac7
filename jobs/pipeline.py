"""Ray job entry point for the whole ACML pipeline: embed -> train -> evaluate -> register.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/pipeline.py --config cluster/pipeline.yaml --name acml-encoder --alias champion

Each stage is the library function behind its `acml` subcommand (`run_embed_pipeline`, `fit`,
`evaluate_run`, `register_run`), fed the previous stage's outputs, so a pipeline run equals
`acml embed`, `acml train`, `acml evaluate`, `acml register` run by hand. Inputs, cache,
checkpoints and MLflow artifacts may all be s3:// (see the config keys embed.input, embed.output,
cache_dir, train.storage_path, tracking.artifact_location); `--out` (output_dir) stays a local
folder: it receives the best model copy, the evaluation report and, by default, the MLflow store.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from acml_ray.cli.common import add_config_arguments, config_from_args
from acml_ray.environment import apply_defaults
from acml_ray.config import ACMLConfig


def run_pipeline(cfg: ACMLConfig, name: str, alias: str = "champion", run_name: str | None = None) -> dict:
    """Run the four stages with `cfg`; returns what each produced (paths, ids, the model URI)."""
    from acml_ray.evaluate.suite import evaluate_run
    from acml_ray.pipelines.embed import run_embed_pipeline
    from acml_ray.registry import register_run
    from acml_ray.storage import join
    from acml_ray.tracking import resolve_tracking_uri
    from acml_ray.train import fit, init_ray

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    init_ray(use_gpu=cfg.train.use_gpu or cfg.embed.num_gpus_per_actor > 0)
    tracking_uri = resolve_tracking_uri(cfg)

    embedded = run_embed_pipeline(cfg)
    print(f"[pipeline] embedded: train {embedded.train_path}, val {embedded.val_path}", flush=True)

    trained = fit(cfg, embedded.train_path, embedded.val_path, embedded.modality_dims,
                  run_name=run_name or time.strftime("pipeline-%Y%m%d-%H%M%S"))
    print(f"[pipeline] trained: {trained.run_uri}; best model {trained.best_model_dir}", flush=True)

    # Evaluation logs into the training run, so one MLflow run holds the whole story.
    eval_cfg = cfg.eval.model_copy(update={"tracking_uri": cfg.eval.tracking_uri or tracking_uri,
                                           "mlflow_run_id": trained.mlflow_run_id})
    evaluate_run(str(out), eval_cfg, out / "evaluation", data=embedded.val_path,
                 cache_dir=cfg.resolved_cache_dir())
    print(f"[pipeline] evaluated: {(out / 'evaluation' / 'report.md').resolve()}", flush=True)

    # The run folder now holds model/ and evaluation/report.json (the metrics tagged).
    location = cfg.tracking.artifact_location
    registered = register_run(str(out), name, alias=alias, tracking_uri=tracking_uri,
                              artifact_location=join(location, "registry") if location else None)
    print(f"[pipeline] registered: {registered.model_uri} (version {registered.version})", flush=True)
    return {"train_table": embedded.train_path, "val_table": embedded.val_path, "run_uri": trained.run_uri,
            "mlflow_run_id": trained.mlflow_run_id, "report": str(out / "evaluation" / "report.json"),
            "model_uri": registered.model_uri, "model_version": registered.version,
            "tracking_uri": tracking_uri}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--out", help="local output folder (output_dir)")
    parser.add_argument("--input", help="molecule table, path or s3:// URI (embed.input)")
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--run-name", help="training run name (default pipeline-<timestamp>)")
    args = parser.parse_args(argv)
    apply_defaults()
    cfg = config_from_args(args, extra={"embed.input": args.input})
    result = run_pipeline(cfg, args.name, args.alias, args.run_name)
    print(f"model uri: {result['model_uri']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
