"""The whole ACML pipeline as one library call: embed -> train -> evaluate -> register.

Each stage is the library function behind its `acml` subcommand (`run_embed_pipeline`, `fit`,
`evaluate_run`, `register_run`), fed the previous stage's outputs, so a pipeline run equals
`acml embed`, `acml train`, `acml evaluate`, `acml register` run by hand. `jobs/pipeline.py`
is its `ray job submit` entry point.
"""

from __future__ import annotations

import time
from pathlib import Path

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

    trained = fit(
        cfg,
        embedded.train_path,
        embedded.val_path,
        embedded.modality_dims,
        run_name=run_name or time.strftime("pipeline-%Y%m%d-%H%M%S"),
    )
    print(f"[pipeline] trained: {trained.run_uri}; best model {trained.best_model_dir}", flush=True)

    # Evaluation logs into the training run, so one MLflow run holds the whole story.
    eval_cfg = cfg.eval.model_copy(
        update={"tracking_uri": cfg.eval.tracking_uri or tracking_uri, "mlflow_run_id": trained.mlflow_run_id}
    )
    evaluate_run(str(out), eval_cfg, out / "evaluation", data=embedded.val_path, cache_dir=cfg.resolved_cache_dir())
    print(f"[pipeline] evaluated: {(out / 'evaluation' / 'report.md').resolve()}", flush=True)

    # The run folder now holds model/ and evaluation/report.json (the metrics tagged).
    location = cfg.tracking.artifact_location
    registered = register_run(
        str(out),
        name,
        alias=alias,
        tracking_uri=tracking_uri,
        artifact_location=join(location, "registry") if location else None,
    )
    print(f"[pipeline] registered: {registered.model_uri} (version {registered.version})", flush=True)
    return {
        "train_table": embedded.train_path,
        "val_table": embedded.val_path,
        "run_uri": trained.run_uri,
        "mlflow_run_id": trained.mlflow_run_id,
        "report": str(out / "evaluation" / "report.json"),
        "model_uri": registered.model_uri,
        "model_version": registered.version,
        "tracking_uri": tracking_uri,
    }
