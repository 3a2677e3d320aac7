"""The per-worker training function run by Ray Train's `TorchTrainer`.

Each worker materialises the training table (graphs + cached modality vectors; the frozen
encoders never run here), wraps the ACML model in a DeepSpeed engine and trains.

Data order. Every worker holds the whole (small: graphs + vectors) table sorted by InChIKey and
draws the same per-epoch permutation; global batch ``b`` is cut into one slice per rank. So the
global batch is ``batch_size x workers``, 1 and N workers see identical global batches, and a
restarted run replays exactly the order it had (Ray Data's streaming split assigns rows to
workers dynamically, which a resume could not reproduce).

Checkpoints. Every ``checkpoint_every_steps`` and at every epoch end, all ranks write
`engine.save_checkpoint` (model, optimizer, LR scheduler) plus their RNG state, rank 0 adds the
data position and early-stopping state, and every rank reports it to Ray (the files of all
ranks land in one checkpoint directory). On restart the loop loads `ray.train.get_checkpoint()`
and skips the batches already consumed. Rank 0 validates every epoch and writes the best model
to ``<run>/best`` (`acml_ray.train.best`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray.train
import torch

from acml_ray.config import ACMLConfig
from acml_ray.data.paired import PairedExamples
from acml_ray.evaluate.embeddings import project_examples
from acml_ray.evaluate.retrieval import pooled_ranks, topk_from_ranks
from acml_ray.model.acml import ACMLModel
from acml_ray.train.best import save_best
from acml_ray.train.engine import build_engine

SCORE_METRIC = "val/score"
CKPT_TAG = "engine"  # DeepSpeed tag (sub-folder) inside every Ray checkpoint
STATE_FILE = "train_state.json"
# Reported (not logged) with every checkpoint: the worker group's placement group, so that a
# Tune study can free it when ASHA kills the trial (see acml_ray.tune.study).
PLACEMENT_GROUP_KEY = "ray/placement_group"
SORT_KEYS = ("inchikey", "smiles")


@dataclass
class DebugHooks:
    """Test hooks: kill a worker once, record which molecules every step consumed."""

    kill_at_step: int | None = None  # SIGKILL rank `kill_rank` right after this global step
    kill_rank: int = 0
    kill_marker: str | None = None  # created just before the kill; once present, no more kills
    batch_log_dir: str | None = None  # rank<r>.jsonl lines: {"epoch", "step", "keys"}


@dataclass
class TrainState:
    """Data position and early-stopping state, saved with every checkpoint."""

    epoch: int = 0  # epochs fully done
    step_in_epoch: int = 0  # batches of `epoch` already consumed
    global_step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def _materialise(name: str, modalities: list[str], keep_keys: bool = False
                 ) -> tuple[PairedExamples, list[str]]:
    """The whole dataset ``name`` in a deterministic (key-sorted) order, and its row keys."""
    shard = ray.train.get_dataset_shard(name)
    tables = [b for b in shard.iter_batches(batch_format="pyarrow", batch_size=4096)] if shard else []
    if not tables:
        return PairedExamples.from_rows([], modalities), []
    table = pa.concat_tables(tables)
    keys = [k for k in SORT_KEYS if k in table.column_names]
    if keys:
        table = table.sort_by([(k, "ascending") for k in keys])
    ids = [str(v) for v in table.column(keys[0]).to_pylist()] if keys else [str(i) for i in range(len(table))]
    return PairedExamples.from_table(table, modalities), ids


def _to_device(batch, inputs: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype):
    batch = batch.to(device)
    moved = {k: (v.to(device) if k.endswith("__mask") else v.to(device, dtype)) for k, v in inputs.items()}
    return batch, moved


@torch.no_grad()
def validate(model: ACMLModel, val: PairedExamples, cfg: ACMLConfig, device: torch.device) -> dict[str, float]:
    """Validation loss and modality->graph retrieval at the configured pool size (local, no
    collectives: run it on one rank)."""
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


def steps_per_epoch(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Global steps per epoch (a global batch is ``batch_size * world_size`` rows)."""
    global_batch = batch_size * world_size
    return n // global_batch if drop_last else -(-n // global_batch)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision (early stop) for every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def _save_checkpoint(engine, state: TrainState, metrics: dict[str, float], rank: int) -> None:
    """Collective: every rank writes its engine shard and RNG state, then reports to Ray."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, CKPT_TAG).mkdir()
        engine.save_checkpoint(tmp, tag=CKPT_TAG)
        torch.save(_rng_state(), Path(tmp, f"rng_rank{rank}.pt"))
        if rank == 0:
            Path(tmp, STATE_FILE).write_text(json.dumps(asdict(state)))
        pg = ray.util.get_current_placement_group()
        ray.train.report({**metrics, PLACEMENT_GROUP_KEY: pg.id.hex() if pg else None},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_{state.global_step:09d}")


def _restore(engine, rank: int) -> TrainState:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainState()
    with checkpoint.as_directory() as directory:
        engine.load_checkpoint(directory, tag=CKPT_TAG)
        state = TrainState(**json.loads(Path(directory, STATE_FILE).read_text()))
        rng = Path(directory, f"rng_rank{rank}.pt")
        if rng.is_file():  # absent when the run was restarted with more workers
            _set_rng_state(torch.load(rng, weights_only=False))
    print(f"[acml] rank {rank} resumed at epoch {state.epoch} step {state.global_step}", flush=True)
    return state


def _improved(score: float, best: float | None, cfg: ACMLConfig) -> bool:
    if best is None:
        return np.isfinite(score)
    delta = cfg.train.min_delta
    return score > best + delta if cfg.train.early_stopping_mode == "max" else score < best - delta


def _quiet_report_log() -> None:
    # Ray Train 2.x logs every `ray.train.report` at INFO through a logger named after its
    # source file, outside the "ray.train" tree that RunConfig's LoggingConfig sets; our own
    # epoch line says the same. Best effort: the module is internal and may move.
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train one worker. `loop_config`: ``acml`` (an ACMLConfig dump), ``modality_dims``
    (name -> cached vector width), ``best_uri`` (where rank 0 keeps the best model),
    ``tracking`` (a `TrackingRun` or None) and ``hooks`` (a `DebugHooks` dict)."""
    _quiet_report_log()
    cfg = ACMLConfig.model_validate(loop_config["acml"])
    modality_dims: dict[str, int] = loop_config["modality_dims"]
    tracking = loop_config.get("tracking")
    hooks = DebugHooks(**(loop_config.get("hooks") or {}))
    t = cfg.train
    names = list(modality_dims)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed)  # identical initial weights on every worker
    device = ray.train.torch.get_device() if t.use_gpu else torch.device("cpu")

    train, train_ids = _materialise("train", names)
    val = _materialise("val", names)[0] if rank == 0 else None
    n_steps = steps_per_epoch(len(train), t.batch_size, world, t.drop_last)
    if n_steps == 0:
        raise ValueError(f"{len(train)} training rows give no full global batch of "
                         f"{t.batch_size} x {world} workers")
    model = ACMLModel.from_config(cfg, modality_dims)
    if t.sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    engine = build_engine(model, cfg, model.trainable_parameters(), total_steps=t.epochs * n_steps)
    dtype = next(engine.module.graph_projections.parameters()).dtype
    gather = t.gather_negatives and world > 1
    state = _restore(engine, rank)
    step_log: list[tuple[int, dict[str, float]]] = []  # rank 0 -> MLflow at checkpoints
    batch_log = None
    if hooks.batch_log_dir:
        Path(hooks.batch_log_dir).mkdir(parents=True, exist_ok=True)
        batch_log = open(Path(hooks.batch_log_dir, f"rank{rank}.jsonl"), "a")

    def flush_step_log() -> None:
        if rank == 0 and tracking is not None and step_log:
            tracking.log_metrics(step_log)
        step_log.clear()

    for epoch in range(state.epoch, t.epochs):
        if state.stopped_early:
            break
        engine.train()
        elapsed, graphs_seen, epoch_losses = 0.0, 0, []
        started = time.perf_counter()
        # Same permutation on every rank; rank r trains on slice r of each global batch.
        for global_idx in train.epoch_batches(t.batch_size * world, epoch, t.seed, t.drop_last,
                                              start_step=state.step_in_epoch):
            idx = np.array_split(global_idx, world)[rank]
            batch, inputs = _to_device(*train.batch(idx), device, dtype)
            out = engine(batch, inputs, gather=gather)
            engine.backward(out["loss"])
            engine.step()
            loss = float(out["loss"].detach())
            state.global_step += 1
            state.step_in_epoch += 1
            graphs_seen += len(global_idx)
            epoch_losses.append(loss)
            if batch_log is not None:
                batch_log.write(json.dumps({"epoch": epoch, "step": state.global_step,
                                            "keys": [train_ids[i] for i in idx]}) + "\n")
                batch_log.flush()
            if rank == 0 and state.global_step % t.log_every_steps == 0:
                step_log.append((state.global_step, {"train/step_loss": loss,
                                                     "train/lr": engine.get_lr()[0]}))
            if (hooks.kill_at_step == state.global_step and rank == hooks.kill_rank
                    and hooks.kill_marker and not os.path.exists(hooks.kill_marker)):
                Path(hooks.kill_marker).write_text(str(state.global_step))
                os.kill(os.getpid(), signal.SIGKILL)
            if (t.checkpoint_every_steps and state.global_step % t.checkpoint_every_steps == 0
                    and state.step_in_epoch < n_steps):  # the epoch-end checkpoint follows anyway
                elapsed += time.perf_counter() - started
                flush_step_log()
                _save_checkpoint(engine, state, {"epoch": epoch, "step": state.global_step,
                                                 "train/loss": float(np.mean(epoch_losses))}, rank)
                started = time.perf_counter()
        elapsed += time.perf_counter() - started  # training steps only: no checkpoints/validation

        state.epoch, state.step_in_epoch = epoch + 1, 0
        metrics: dict[str, float] = {
            "epoch": epoch + 1, "step": state.global_step,
            "train/loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
            "train/graphs_per_s": graphs_seen / max(elapsed, 1e-9),
            "train/lr": engine.get_lr()[0],
        }
        metrics.update({f"temperature/{k}": v for k, v in engine.module.temperatures().items()})
        stop = False
        if rank == 0:
            metrics.update(validate(engine.module, val, cfg, device))
            score = metrics.get(t.early_stopping_metric, float("nan"))
            state.history.append(metrics)
            if _improved(score, state.best_score, cfg):
                state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
                save_best(engine.module, cfg, loop_config["best_uri"],
                           {"epoch": epoch + 1, "step": state.global_step, "metric": t.early_stopping_metric,
                            "score": score, "metrics": metrics}, state.history)
            else:
                state.bad_epochs += 1
            stop = t.patience is not None and state.bad_epochs >= t.patience
            metrics["best/epoch"] = float(state.best_epoch or 0)
            print(f"[acml] epoch {epoch + 1}/{t.epochs} step {state.global_step} "
                  f"train_loss {metrics['train/loss']:.4f} val_loss {metrics['val/loss']:.4f} "
                  f"val_score {metrics[SCORE_METRIC]:.3f} ({metrics['train/graphs_per_s']:.0f} graphs/s)"
                  + (" early stop" if stop else ""), flush=True)
            step_log.append((state.global_step, metrics))
            flush_step_log()
        state.stopped_early = _broadcast_flag(stop, device)
        _save_checkpoint(engine, state, metrics, rank)
    if batch_log is not None:
        batch_log.close()
