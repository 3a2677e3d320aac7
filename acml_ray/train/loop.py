"""The per-worker training function run by Ray Train's `TorchTrainer`.

Each worker streams its share of the training table from Ray Data (`ray.train.get_dataset_shard`:
the trainer splits "train" across workers), collates batches straight from the Arrow columns
(`acml_ray.data.columnar`) in Ray's prefetch threads, wraps the ACML model in a DeepSpeed engine
and trains. No worker ever holds the table: its memory is the shuffle buffer
(``train.shuffle_buffer_rows``) plus ``train.prefetch_batches`` collated batches.

Data order (see docs/training.md "Data"). The trainer reads the table's files in a seeded order
and preserves that order through Ray Data, whose streaming split then hands each worker the same
rows in the same order every time it runs; every worker shuffles its stream through a local
buffer seeded by (``train.seed``, epoch, rank). So the order of every epoch is a pure function of
the seed and the epoch, and a resumed run replays exactly the batches it had, skipping the ones
it had already consumed. The global batch is ``batch_size x workers`` (negatives gathered).

Checkpoints. Every ``checkpoint_every_steps`` and at every epoch end, all ranks write
`engine.save_checkpoint` (model, optimizer, LR scheduler) plus their RNG state, rank 0 adds the
data position and early-stopping state, and every rank reports it to Ray (the files of all
ranks land in one checkpoint directory). On restart the loop loads `ray.train.get_checkpoint()`
and skips the batches already consumed. Rank 0 validates every epoch, streaming the validation
table batch by batch, and writes the best model to ``<run>/best`` (`acml_ray.train.best`).

`BatchCallback`s passed to `acml_ray.train.fit` run on every rank after every step (a batch log,
fault injection in tests).
"""

from __future__ import annotations

import json
import logging
import random
import resource
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray.train
import ray.train.torch  # get_device; imported here, not left to whoever imported it first
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from acml_ray.config import ACMLConfig, TrainConfig
from acml_ray.data.columnar import CollatedBatch, collate
from acml_ray.evaluate.retrieval import pooled_ranks, rank_metrics
from acml_ray.model.acml import ACMLModel
from acml_ray.train.best import save_best
from acml_ray.train.engine import build_engine

if TYPE_CHECKING:
    import pyarrow as pa

SCORE_METRIC = "val/score"
CKPT_TAG = "engine"  # DeepSpeed tag (sub-folder) inside every Ray checkpoint
STATE_FILE = "train_state.json"
# Reported (not logged) with every checkpoint: the worker group's placement group, so that a
# Tune study can free it when ASHA kills the trial (see acml_ray.tune.study).
PLACEMENT_GROUP_KEY = "ray/placement_group"
SORT_KEYS = ("inchikey", "smiles")


@dataclass
class BatchInfo:
    """What a `BatchCallback` learns about the training step that just ran on its rank."""

    epoch: int  # 0-based
    step: int  # global step count after this step
    step_in_epoch: int  # steps of this epoch done, this one included
    rank: int
    world_size: int
    loss: float
    ids: list[str] | None  # the rows of this rank's batch (id/inchikey/smiles), if `wants_ids`


class BatchCallback:
    """Runs on every rank after every training step (pass instances to `fit(batch_callbacks=)`;
    they are pickled into the workers). Override `on_batch`; set ``wants_ids = False`` when the
    row ids are not needed (they cost a column conversion per batch)."""

    wants_ids: bool = True

    def on_batch(self, info: BatchInfo) -> None:  # pragma: no cover - interface
        raise NotImplementedError


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


class ArrowCollateFn(ArrowBatchCollateFn):
    """`acml_ray.data.columnar.collate` as Ray Data's ``iter_torch_batches(collate_fn=...)``: Ray
    runs it in its prefetch threads, so batches are ready before the step asks. Yields
    `CollatedBatch`es, pinned when `pin_memory` (for an asynchronous copy to the GPU)."""

    def __init__(self, modalities: list[str], with_ids: bool = False, pin_memory: bool = False) -> None:
        super().__init__()
        self.modalities, self.with_ids, self.pin = list(modalities), with_ids, pin_memory

    # Ray annotates `CollateFn.__call__` as returning `CollatedData`, a TypeVar bound nowhere (so
    # no concrete return type can match it): Ray's annotation is wrong, not this override.
    def __call__(self, batch: pa.Table) -> CollatedBatch:  # type: ignore[override]
        out = collate(batch, self.modalities, with_ids=True)
        if not self.with_ids:
            out.ids = None
        return out.pin_memory() if self.pin else out


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The local shuffle seed of `rank` in `epoch`: a different, reproducible order every epoch."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def stream_batches(
    shard,
    names: list[str],
    batch_size: int,
    *,
    drop_last: bool,
    prefetch: int,
    shuffle_rows: int = 0,
    seed: int | None = None,
    with_ids: bool = False,
    pin_memory: bool = False,
) -> Iterable[CollatedBatch]:
    """Collated batches of a Ray Data shard (a `DataIterator`), prepared `prefetch` ahead in Ray's
    background threads; locally shuffled through `shuffle_rows` rows when > 0."""
    return shard.iter_torch_batches(
        batch_size=batch_size,
        drop_last=drop_last,
        prefetch_batches=prefetch,
        device="cpu",
        collate_fn=ArrowCollateFn(names, with_ids=with_ids, pin_memory=pin_memory),
        local_shuffle_buffer_size=max(shuffle_rows, batch_size) if shuffle_rows else None,
        local_shuffle_seed=seed if shuffle_rows else None,
    )


@torch.no_grad()
def validate(
    model: ACMLModel, batches: Iterable[CollatedBatch], cfg: ACMLConfig, device: torch.device
) -> dict[str, float]:
    """Validation loss and modality->graph retrieval at the configured pool size over streamed
    batches (local, no collectives: run it on one rank). Only the joint-space embeddings of the
    validation rows are kept (two float vectors per row and modality), never the rows."""
    metrics: dict[str, float] = {}
    was_training = model.training
    model.eval()
    dtype = next(model.graph_projections.parameters()).dtype
    losses: list[float] = []
    projected: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {m: ([], []) for m in model.modalities}
    for collated in batches:
        batch = collated.to(device, dtype)
        if len(batch) >= 2:
            losses.append(float(model(batch.graphs, batch.inputs)["loss"]))
        graph_emb = model.encode_graph(batch.graphs)
        for modality, (mods, graphs) in projected.items():
            keep = batch.inputs[f"{modality}__mask"]
            if keep.any():
                mods.append(model.project_modality(batch.inputs[modality][keep], modality).float().cpu())
                graphs.append(model.graph_projections[modality](graph_emb[keep]).float().cpu())
    metrics["val/loss"] = float(np.mean(losses)) if losses else float("nan")
    scores = []
    for modality, (mods, graphs) in projected.items():
        if sum(len(m) for m in mods) < 2:
            continue
        ranks = pooled_ranks(
            torch.cat(mods).numpy(), torch.cat(graphs).numpy(), cfg.eval.pool_size, repeats=3, seed=cfg.eval.seed
        )
        for key, value in rank_metrics(ranks, cfg.eval.top_k).items():
            metrics[f"val/{modality}->graph/pool_{cfg.eval.pool_size}/{key}"] = value
        # The score is the mean reciprocal rank, not a top-k: top-10 at pool 128 reaches 1.000 within
        # a few epochs at 100k molecules, and a saturated score picks an early "best" checkpoint and
        # stops training while the validation loss is still falling (the first 100k study did).
        scores.append(metrics[f"val/{modality}->graph/pool_{cfg.eval.pool_size}/mrr"])
    metrics[SCORE_METRIC] = float(np.mean(scores)) if scores else 0.0
    model.train(was_training)
    return metrics


def steps_per_epoch(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Steps per epoch: Ray Data's equal split gives each of the `world_size` workers ``n //
    world_size`` rows, which it cuts into batches of `batch_size` (the global batch is
    ``batch_size * world_size`` rows)."""
    rows = n // world_size
    return rows // batch_size if drop_last else -(-rows // batch_size)


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision (early stop) for every rank."""
    import torch.distributed as dist

    if not _distributed():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def _memory_mib() -> dict[str, float]:
    """This process's memory now (Linux /proc): ``rss`` (resident, shared pages included),
    ``anon`` (private), ``shmem`` (shared memory it has touched: Ray's object store pages)."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssShmem": "shmem"}
    out = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key = line.split(":", 1)[0]
                if key in fields:
                    out[fields[key]] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def _gather_floats(values: list[float], device: torch.device) -> list[list[float]]:
    """Every rank's `values`, in rank order (collective)."""
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.float64, device=device)
    if not _distributed():
        return [values]
    parts = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return [p.tolist() for p in parts]


def _save_checkpoint(engine, state: TrainState, metrics: dict[str, float], rank: int) -> None:
    """Collective: every rank writes its engine shard and RNG state, then reports to Ray."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, CKPT_TAG).mkdir()
        engine.save_checkpoint(tmp, tag=CKPT_TAG)
        torch.save(_rng_state(), Path(tmp, f"rng_rank{rank}.pt"))
        if rank == 0:
            Path(tmp, STATE_FILE).write_text(json.dumps(asdict(state)))
        pg = ray.util.get_current_placement_group()
        ray.train.report(
            {**metrics, PLACEMENT_GROUP_KEY: pg.id.hex() if pg else None},
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_{state.global_step:09d}",
        )


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


def _epoch(
    shard, t: TrainConfig, names: list[str], epoch: int, rank: int, with_ids: bool, skip: int
) -> Iterator[CollatedBatch]:
    """This rank's batches of `epoch`, the first `skip` (consumed before a restart) left out.
    Skipped batches are still read: the split hands every worker its rows in one pass."""
    batches = stream_batches(
        shard,
        names,
        t.batch_size,
        drop_last=t.drop_last,
        prefetch=t.prefetch_batches,
        shuffle_rows=t.shuffle_buffer_rows,
        seed=epoch_seed(t.seed, epoch, rank),
        with_ids=with_ids,
        pin_memory=t.use_gpu,
    )
    for i, batch in enumerate(batches):
        if i >= skip:
            yield batch


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train one worker. `loop_config`: ``acml`` (an ACMLConfig dump), ``modality_dims``
    (name -> cached vector width), ``train_rows`` (rows of the training table), ``best_uri``
    (where rank 0 keeps the best model), ``tracking`` (a `TrackingRun` or None) and
    ``batch_callbacks`` (`BatchCallback`s)."""
    entered = time.perf_counter()
    _quiet_report_log()
    cfg = ACMLConfig.model_validate(loop_config["acml"])
    modality_dims: dict[str, int] = loop_config["modality_dims"]
    tracking = loop_config.get("tracking")
    callbacks: list[BatchCallback] = list(loop_config.get("batch_callbacks") or [])
    with_ids = any(getattr(c, "wants_ids", True) for c in callbacks)
    t = cfg.train
    names = list(modality_dims)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed)  # identical initial weights on every worker
    device = ray.train.torch.get_device() if t.use_gpu else torch.device("cpu")

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if rank == 0 else None
    n_rows = int(loop_config["train_rows"])
    n_steps = steps_per_epoch(n_rows, t.batch_size, world, t.drop_last)
    if n_steps == 0:
        raise ValueError(f"{n_rows} training rows give no full global batch of {t.batch_size} x {world} workers")
    model = (loop_config.get("model_factory") or ACMLModel.from_config)(cfg, modality_dims)
    if t.sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    engine = build_engine(model, cfg, model.trainable_parameters(), total_steps=t.epochs * n_steps)
    dtype = next(engine.module.graph_projections.parameters()).dtype
    gather = t.gather_negatives and world > 1
    state = _restore(engine, rank)
    step_log: list[tuple[int, dict[str, float]]] = []  # rank 0 -> MLflow at checkpoints
    first_step_s: float | None = None
    peak_anon = 0.0

    def flush_step_log() -> None:
        if rank == 0 and tracking is not None and step_log:
            tracking.log_metrics(step_log)
        step_log.clear()

    for epoch in range(state.epoch, t.epochs):
        if state.stopped_early:
            break
        engine.train()
        elapsed, graphs_seen, epoch_losses, steps_done = 0.0, 0, [], state.step_in_epoch
        started = time.perf_counter()
        for collated in _epoch(train_shard, t, names, epoch, rank, with_ids, skip=state.step_in_epoch):
            batch = collated.to(device, dtype, non_blocking=t.use_gpu)
            out = engine(batch.graphs, batch.inputs, gather=gather)
            engine.backward(out["loss"])
            engine.step()
            loss = float(out["loss"].detach())
            if first_step_s is None:
                first_step_s = time.perf_counter() - entered
            state.global_step += 1
            state.step_in_epoch += 1
            graphs_seen += len(batch) * world
            epoch_losses.append(loss)
            if state.step_in_epoch % 16 == 1:
                peak_anon = max(peak_anon, _memory_mib().get("anon", 0.0))
            if callbacks:
                info = BatchInfo(
                    epoch=epoch,
                    step=state.global_step,
                    step_in_epoch=state.step_in_epoch,
                    rank=rank,
                    world_size=world,
                    loss=loss,
                    ids=[str(v) for v in collated.ids.to_pylist()] if with_ids and collated.ids is not None else None,
                )
                for callback in callbacks:
                    callback.on_batch(info)
            if rank == 0 and state.global_step % t.log_every_steps == 0:
                step_log.append((state.global_step, {"train/step_loss": loss, "train/lr": engine.get_lr()[0]}))
            if (
                t.checkpoint_every_steps
                and state.global_step % t.checkpoint_every_steps == 0
                and state.step_in_epoch < n_steps
            ):  # the epoch-end checkpoint follows anyway
                elapsed += time.perf_counter() - started
                flush_step_log()
                _save_checkpoint(
                    engine,
                    state,
                    {"epoch": epoch, "step": state.global_step, "train/loss": float(np.mean(epoch_losses))},
                    rank,
                )
                started = time.perf_counter()
        elapsed += time.perf_counter() - started  # training steps only: no checkpoints/validation
        if state.step_in_epoch != n_steps:  # every rank got n_rows // world rows: cannot happen
            raise RuntimeError(
                f"rank {rank}: epoch {epoch} had {state.step_in_epoch} steps, planned {n_steps} "
                f"({steps_done} before a restart)"
            )

        state.epoch, state.step_in_epoch = epoch + 1, 0
        peak_anon = max(peak_anon, _memory_mib().get("anon", 0.0))
        # ru_maxrss: peak resident memory, shared object-store pages the worker read included.
        memory = _gather_floats([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, peak_anon], device)
        rss = [m[0] for m in memory]
        metrics: dict[str, float] = {
            "epoch": epoch + 1,
            "step": state.global_step,
            "train/loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
            "train/graphs_per_s": graphs_seen / max(elapsed, 1e-9),
            "train/lr": engine.get_lr()[0],
            "sys/peak_rss_mib_max": max(rss),
            **{f"sys/peak_rss_mib/rank{r}": v for r, v in enumerate(rss)},
            # Private memory (RssAnon), sampled every 16 steps: what the worker itself holds.
            **{f"sys/peak_private_mib/rank{r}": m[1] for r, m in enumerate(memory)},
        }
        if first_step_s is not None:
            metrics["sys/first_step_s"] = first_step_s
        metrics.update({f"temperature/{k}": v for k, v in engine.module.temperatures().items()})
        stop = False
        if rank == 0:
            val_batches = stream_batches(
                val_shard, names, t.batch_size, drop_last=False, prefetch=t.prefetch_batches, pin_memory=t.use_gpu
            )
            metrics.update(validate(engine.module, val_batches, cfg, device))
            score = metrics.get(t.early_stopping_metric, float("nan"))
            state.history.append(metrics)
            if _improved(score, state.best_score, cfg):
                state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
                save_best(
                    engine.module,
                    cfg,
                    loop_config["best_uri"],
                    {
                        "epoch": epoch + 1,
                        "step": state.global_step,
                        "metric": t.early_stopping_metric,
                        "score": score,
                        "metrics": metrics,
                    },
                    state.history,
                )
            else:
                state.bad_epochs += 1
            stop = t.patience is not None and state.bad_epochs >= t.patience
            metrics["best/epoch"] = float(state.best_epoch or 0)
            print(
                f"[acml] epoch {epoch + 1}/{t.epochs} step {state.global_step} "
                f"train_loss {metrics['train/loss']:.4f} val_loss {metrics['val/loss']:.4f} "
                f"val_score {metrics[SCORE_METRIC]:.3f} ({metrics['train/graphs_per_s']:.0f} graphs/s, "
                f"peak RSS {max(rss):.0f} MiB)" + (" early stop" if stop else ""),
                flush=True,
            )
            step_log.append((state.global_step, metrics))
            flush_step_log()
        state.stopped_early = _broadcast_flag(stop, device)
        _save_checkpoint(engine, state, metrics, rank)
