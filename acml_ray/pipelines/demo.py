"""`acml demo`: featurise -> embed (cached) -> train (Ray Train + DeepSpeed) -> evaluate."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from acml_ray.config import ACMLConfig
from acml_ray.data.paired import PairedExamples
from acml_ray.evaluate.suite import retrieval_summary
from acml_ray.model.serialization import load_model
from acml_ray.pipelines.prepare import prepare
from acml_ray.train import fit, init_ray


def run_demo(cfg: ACMLConfig, progress: bool = True) -> Path:
    """Run the whole slice on the configured data; returns the path of ``summary.json``."""
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    prepared = prepare(cfg, progress=progress)
    timings["prepare_s"] = time.perf_counter() - t
    print(f"[acml] data: {prepared.counts}; quarantined by reason: {prepared.quarantined_by_reason}", flush=True)

    t = time.perf_counter()
    init_ray(num_cpus=None, use_gpu=cfg.train.use_gpu)
    trained = fit(cfg, prepared.train_path, prepared.val_path, prepared.modality_dims)
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    model, _, extra = load_model(trained.best_model_dir)
    val = PairedExamples.from_table(pq.read_table(prepared.val_path), list(prepared.modality_dims))
    retrieval = retrieval_summary(model, val, cfg.eval)
    timings["evaluate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started

    summary = {
        "retrieval": retrieval,
        "held_out_molecules": len(val),
        "best_epoch": extra.get("epoch"),
        "best_validation": trained.best_metrics,
        "final_validation": trained.final_metrics,
        "data": prepared.counts,
        "quarantined_by_reason": prepared.quarantined_by_reason,
        "embedding": prepared.reports,
        "encoder_fingerprints": prepared.fingerprints,
        "model_dir": str(trained.best_model_dir.resolve()),
        "timings": timings,
        "config": cfg.model_dump(mode="json"),
    }
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path
