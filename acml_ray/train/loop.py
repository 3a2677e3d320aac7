"""The per-worker training function run by Ray Train's `TorchTrainer`.

Each worker materialises its shard of the training table (graphs + cached modality vectors;
the frozen encoders never run here), wraps the ACML model in a DeepSpeed engine and trains.
Rank 0 validates, saves the model and reports it as a Ray checkpoint every epoch; the
checkpoint config keeps the best by validation score.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch

from acml_ray.config import ACMLConfig
from acml_ray.data.paired import PairedExamples
from acml_ray.evaluate.embeddings import project_examples
from acml_ray.evaluate.retrieval import pooled_ranks, topk_from_ranks
from acml_ray.model.acml import ACMLModel
from acml_ray.model.serialization import save_model
from acml_ray.train.engine import build_engine

SCORE_METRIC = "val/score"


def _materialise(name: str, modalities: list[str]) -> PairedExamples:
    shard = ray.train.get_dataset_shard(name)
    rows = list(shard.iter_rows()) if shard is not None else []
    return PairedExamples.from_rows(rows, modalities)


def _to_device(batch, inputs: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype):
    batch = batch.to(device)
    moved = {k: (v.to(device) if k.endswith("__mask") else v.to(device, dtype)) for k, v in inputs.items()}
    return batch, moved


@torch.no_grad()
def validate(model: ACMLModel, val: PairedExamples, cfg: ACMLConfig, device: torch.device) -> dict[str, float]:
    """Validation loss and modality->graph retrieval at the configured pool size."""
    metrics: dict[str, float] = {}
    model.eval()
    dtype = next(model.graph_projections.parameters()).dtype
    losses = []
    for idx in val.epoch_batches(cfg.train.batch_size, epoch=0, seed=0, drop_last=False):
        if len(idx) < 2:
            continue
        batch, inputs = _to_device(*val.batch(idx), device, dtype)
        losses.append(float(model(batch, inputs)["loss"]))
    metrics["val/loss"] = float(np.mean(losses)) if losses else float("nan")
    scores = []
    for modality in model.modalities:
        mod, graph = project_examples(model, val, modality, device=device)
        if len(mod) < 2:
            continue
        ranks = pooled_ranks(mod, graph, cfg.eval.pool_size, repeats=3, seed=cfg.eval.seed)
        for key, value in topk_from_ranks(ranks, cfg.eval.top_k).items():
            metrics[f"val/{modality}->graph/pool_{cfg.eval.pool_size}/{key}"] = value
        scores.append(metrics[f"val/{modality}->graph/pool_{cfg.eval.pool_size}/top{max(cfg.eval.top_k)}"])
    metrics[SCORE_METRIC] = float(np.mean(scores)) if scores else 0.0
    model.train()
    return metrics


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train one worker; `loop_config` holds ``acml`` (an ACMLConfig dump) and
    ``modality_dims`` (name -> cached vector width)."""
    cfg = ACMLConfig.model_validate(loop_config["acml"])
    modality_dims: dict[str, int] = loop_config["modality_dims"]
    names = list(modality_dims)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every worker
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")

    train = _materialise("train", names)
    val = _materialise("val", names)
    model = ACMLModel.from_config(cfg, modality_dims)
    engine = build_engine(model, cfg, model.trainable_parameters())
    dtype = next(engine.module.graph_projections.parameters()).dtype

    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(cfg.train.epochs):
        engine.train()
        started = time.perf_counter()
        epoch_losses, graphs_seen = [], 0
        # Different workers draw different permutations of their own shards.
        for idx in train.epoch_batches(cfg.train.batch_size, epoch, cfg.train.seed + rank,
                                       cfg.train.drop_last):
            batch, inputs = _to_device(*train.batch(idx), device, dtype)
            out = engine(batch, inputs)
            engine.backward(out["loss"])
            engine.step()
            step += 1
            graphs_seen += len(idx)
            epoch_losses.append(float(out["loss"].detach()))
        elapsed = time.perf_counter() - started
        metrics: dict[str, float] = {
            "epoch": epoch + 1, "step": step,
            "train/loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
            "train/graphs_per_s": graphs_seen * ctx.get_world_size() / max(elapsed, 1e-9),
        }
        metrics.update({f"temperature/{k}": v for k, v in engine.module.temperatures().items()})
        metrics.update(validate(engine.module, val, cfg, device))
        history.append(metrics)
        if rank == 0:
            print(f"[acml] epoch {epoch + 1}/{cfg.train.epochs} step {step} "
                  f"train_loss {metrics['train/loss']:.4f} val_loss {metrics['val/loss']:.4f} "
                  f"val_score {metrics[SCORE_METRIC]:.3f} ({metrics['train/graphs_per_s']:.0f} graphs/s)",
                  flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                save_model(engine.module, cfg, tmp, extra={"epoch": epoch + 1, "metrics": metrics})
                Path(tmp, "history.json").write_text(json.dumps(history, indent=1))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
