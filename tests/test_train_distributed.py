"""Ray Train + DeepSpeed end to end on CPU workers (slow): two modalities with a missing-modality
mask, MLflow records, early stopping and the best marker, resume of a stopped run, cross-worker
negatives (2 workers == 1 process on the concatenated batch), a SIGKILLed worker (exact replay
from the last checkpoint, no row of an epoch skipped), and workers streaming disjoint shares.

Tables (the `tables` fixture in tests/conftest.py) are real ChEMBL approved drugs with cheap
deterministic modality vectors: RDKit Morgan count fingerprints ("morgan", every molecule) and
MACCS keys ("maccs", missing for about a third of the molecules).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from acml_ray.config import ACMLConfig, load_config
from acml_ray.data.columnar import collate
from acml_ray.train import BatchCallback, BatchInfo

pytestmark = pytest.mark.slow

TINY = {
    "graph_encoder.hidden_dim": 16,
    "graph_encoder.num_layers": 2,
    "projection.dims": [16],
    "loss.kind": "infonce",
    "loss.temperature": 0.1,
    "train.batch_size": 16,
    "eval.pool_size": 16,
    "eval.top_k": [1, 5],
}
MODALITIES = [{"name": "morgan", "weight": 1.0}, {"name": "maccs", "weight": 0.5}]


def _cfg(tmp_path: Path, tables: dict[str, str], **overrides) -> ACMLConfig:
    return load_config(
        overrides={
            **TINY,
            "modalities": MODALITIES,
            "output_dir": str(tmp_path),
            "train.train_table": tables["train"],
            "train.val_table": tables["val"],
            **overrides,
        }
    )


def test_two_modalities_tracking_early_stop_and_resume(ray_local, tables, tmp_path):
    from mlflow.tracking import MlflowClient

    from acml_ray.model.serialization import load_model
    from acml_ray.train import fit

    # 160 rows / batch 16 = 10 steps per epoch; a checkpoint every 4 steps and at epoch ends.
    cfg = _cfg(
        tmp_path,
        tables,
        **{
            "train.epochs": 2,
            "train.checkpoint_every_steps": 4,
            "train.lr_schedule": "cosine",
            "train.log_every_steps": 2,
        },
    )
    first = fit(cfg, run_name="run")
    assert [h["step"] for h in first.history] == [10, 20]
    assert all(np.isfinite(h["val/loss"]) for h in first.history)
    assert {"val/morgan->graph/pool_16/top5", "val/maccs->graph/pool_16/top5"} <= set(first.history[-1])
    model, saved, extra = load_model(first.best_model_dir)
    assert model.modalities == ["morgan", "maccs"] and model.loss_weights["maccs"] == 0.5
    # The saved config names the tables the run used (evaluate falls back to train.val_table).
    assert (saved.train.train_table, saved.train.val_table) == (
        str(Path(tables["train"]).resolve()),
        str(Path(tables["val"]).resolve()),
    )
    marker = json.loads((first.best_model_dir / "BEST.json").read_text())
    assert marker["epoch"] == extra["epoch"] and marker["metric"] == "val/score"

    client = MlflowClient(f"sqlite:///{tmp_path.resolve()}/mlflow.db")
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "2"
    assert {"train/step_loss", "val/loss", "val/maccs_to_graph/pool_16/top5", "train/graphs_per_s"} <= set(
        run.data.metrics
    )
    assert len(client.get_metric_history(run.info.run_id, "train/step_loss")) == 10
    assert run.data.tags["best_epoch"] == str(marker["epoch"]) and "mlflow.source.git.commit" in run.data.tags
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model", "split"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "split")} == {
        "split/train_ids.csv",
        "split/val_ids.csv",
    }

    with pytest.raises(FileExistsError):
        fit(cfg, run_name="run")
    # Continue the stopped run for one more epoch; patience 1 with min_delta 1 stops it there.
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 5, "patience": 1, "min_delta": 1.0})})
    resumed = fit(more, run_name="run", resume=True)
    assert [h["step"] for h in resumed.history] == [10, 20, 30] and resumed.stopped_early
    assert resumed.mlflow_run_id == first.mlflow_run_id
    assert len(client.get_metric_history(run.info.run_id, "train/step_loss")) == 15


def _gradient_probe(config: dict) -> None:
    """One training step of a DeepSpeed engine on this rank's slice of a fixed global batch;
    rank 0 writes the loss and the (data-parallel averaged) gradients."""
    import ray.train

    from acml_ray.model.acml import ACMLModel
    from acml_ray.train.engine import build_engine

    cfg = ACMLConfig.model_validate(config["acml"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    table = pq.read_table(config["table"])
    idx = np.array_split(np.asarray(config["global_batch"]), world)[rank]
    torch.manual_seed(0)
    model = ACMLModel.from_config(cfg, config["dims"])
    engine = build_engine(model, cfg, model.trainable_parameters())
    engine.train()
    engine.module.graph_encoder.norms.eval()  # running statistics: same on every worker
    batch, inputs = collate(table.take(idx), list(config["dims"]))  # the training path's collation
    out = engine(batch, inputs, gather=config["gather"])
    engine.backward(out["loss"])
    if rank == 0:
        grads = {n: p.grad.detach().clone() for n, p in engine.module.named_parameters() if p.grad is not None}
        torch.save({"loss": out["loss"].detach(), "grads": grads}, config["out"])


def test_two_workers_gather_equals_one_process_on_concatenated_batch(ray_local, tables, tmp_path):
    """BatchNorm in eval mode and dropout 0 make the per-worker forward identical to the full
    batch forward; what remains is what this test is about: gathered negatives and the
    gradient average across workers."""
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from acml_ray.model.acml import ACMLModel

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = _cfg(
        tmp_path,
        tables,
        **{"graph_encoder.dropout": 0.0, "projection.dropout": 0.0, "loss.learnable_temperature": True},
    )
    dims = {"morgan": 128, "maccs": 167}
    global_batch = list(range(0, 48, 2))  # 24 rows, 12 per worker; some lack maccs

    def probe(gather: bool, name: str) -> dict:
        out = tmp_path / f"{name}.pt"
        TorchTrainer(
            _gradient_probe,
            train_loop_config={
                "acml": cfg.model_dump(mode="json"),
                "table": tables["train"],
                "dims": dims,
                "global_batch": global_batch,
                "gather": gather,
                "out": str(out),
            },
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name=name, storage_path=str(tmp_path / "ray")),
        ).fit()
        return torch.load(out)

    two = probe(True, "gathered")
    torch.manual_seed(0)
    model = ACMLModel.from_config(cfg, dims)
    model.train()
    model.graph_encoder.norms.eval()
    batch, inputs = collate(pq.read_table(tables["train"]).take(global_batch), list(dims))
    reference = model(batch, inputs)
    reference["loss"].backward()
    torch.testing.assert_close(two["loss"], reference["loss"].detach(), rtol=1e-5, atol=1e-6)
    assert set(two["grads"]) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(two["grads"][name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    # Without gathering each worker only contrasts its own 12 rows: a different loss.
    local = probe(False, "local")
    assert not torch.allclose(local["loss"], reference["loss"].detach(), rtol=1e-3)


class BatchLog(BatchCallback):
    """Appends {"epoch", "step", "keys"} per step to <folder>/rank<r>.jsonl."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_batch(self, info: BatchInfo) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        with open(Path(self.folder, f"rank{info.rank}.jsonl"), "a") as log:
            log.write(json.dumps({"epoch": info.epoch, "step": info.step, "keys": info.ids}) + "\n")


class KillOnce(BatchCallback):
    """SIGKILLs rank `rank` right after global step `step`, once (a marker file remembers)."""

    wants_ids = False

    def __init__(self, step: int, rank: int, marker: str) -> None:
        self.step, self.rank, self.marker = step, rank, marker

    def on_batch(self, info: BatchInfo) -> None:
        import os
        import signal

        if info.step == self.step and info.rank == self.rank and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(info.step))
            os.kill(os.getpid(), signal.SIGKILL)


def _log(folder: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (folder / f"rank{rank}.jsonl").read_text().splitlines()]


def test_killed_worker_resumes_with_exact_replay_and_no_row_skipped(ray_local, tables, tmp_path):
    """What a resume replays: the batches after the last checkpoint, exactly (the epoch's order
    is a function of seed and epoch); what it skips: nothing. Each rank streams its own rows."""
    import ray.cloudpickle

    from acml_ray.train import fit

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # The training table as 4 files, streamed from them every epoch (not held in the object
    # store): the path large tables take, file order shuffled by the seed.
    shards = tmp_path / "train"
    shards.mkdir()
    table = pq.read_table(tables["train"])
    for i in range(4):
        pq.write_table(table.slice(40 * i, 40), shards / f"part-{i}.parquet")
    # 160 rows, 2 workers: 80 rows each, batch 16 -> 5 steps per epoch, 10 in all; checkpoints
    # every 3 steps; rank 1 is SIGKILLed right after step 7 (last checkpoint: step 6).
    cfg = _cfg(
        tmp_path,
        {**tables, "train": str(shards)},
        **{
            "train.epochs": 2,
            "train.num_workers": 2,
            "train.cpus_per_worker": 0.5,
            "train.checkpoint_every_steps": 3,
            "train.max_failures": 1,
            "train.shuffle_buffer_rows": 48,
            "train.object_store_table_mib": 0,
            "tracking.enabled": False,
        },
    )
    logs = tmp_path / "batches"
    result = fit(
        cfg, run_name="faulty", batch_callbacks=[BatchLog(str(logs)), KillOnce(7, 1, str(tmp_path / "killed"))]
    )
    assert (tmp_path / "killed").read_text() == "7"
    assert [h["step"] for h in result.history] == [5, 10]

    train_keys = pq.read_table(tables["train"], columns=["inchikey"])["inchikey"].to_pylist()
    epochs: dict[int, list[set]] = {0: [], 1: []}
    for rank in (0, 1):
        rows = _log(logs, rank)
        steps = [r["step"] for r in rows]
        # Steps 1-7 ran, then the restart replayed from the last checkpoint Ray had registered
        # (step 6; step 5, the epoch end, if the step-6 report was still in flight) through step 7
        # and went on: every planned step, at most one checkpoint interval of them twice.
        assert sorted(set(steps)) == list(range(1, 11))
        replayed = sorted(s for s in set(steps) if steps.count(s) == 2)
        assert replayed and replayed[-1] == 7 and replayed == list(range(replayed[0], 8)) and len(replayed) <= 3
        assert all(steps.count(s) <= 2 for s in steps)
        by_step: dict[int, list[list[str]]] = {}
        for r in rows:
            by_step.setdefault(r["step"], []).append(r["keys"])
        # Exact replay: a step run twice trained on the same rows in the same order.
        assert all(all(k == keys[0] for k in keys) for keys in by_step.values())
        for e in (0, 1):
            keys = sum((by_step[s][0] for s in range(1 + 5 * e, 6 + 5 * e)), [])
            assert len(keys) == len(set(keys)) == 80  # no row twice within an epoch
            epochs[e].append(set(keys))
    for e, (rank0, rank1) in epochs.items():
        # The workers' shares are disjoint and together they are every training row: none skipped.
        assert not rank0 & rank1 and rank0 | rank1 == set(train_keys), e
    # Epochs differ in order (local shuffle reseeded per epoch), not in who holds which rows.
    first = [k for r in _log(logs, 0) if r["epoch"] == 0 for k in r["keys"]]
    second = [k for r in _log(logs, 0) if r["epoch"] == 1 for k in r["keys"]]
    assert first != second and set(first) == set(second)


def test_training_read_is_cut_into_blocks_of_at_most_block_mib(ray_local, tables):
    """A worker's read-ahead is a few blocks: the training read slices a one-file table into
    blocks of at most ``train.block_mib`` (so the worker's memory does not follow the file
    layout), in file order, every row once."""
    import pyarrow.dataset as pads

    from acml_ray.train.trainer import _read_parquet

    table = pq.read_table(tables["train"])
    cap_mib = 0.02  # ~20 KB: the 160-row table (~170 KB) is one file, one row group
    t = load_config(overrides={"train.object_store_table_mib": 0, "train.block_mib": cap_mib}).train
    ds = _read_parquet(tables["train"], pads.dataset(tables["train"]), table.column_names, t)
    ds.context.execution_options.preserve_order = True
    sizes = [m.size_bytes for bundle in ds.iter_internal_ref_bundles() for m in bundle.metadata]
    # Ray slices read outputs by its size estimate of the rows, so a block may overshoot a little.
    assert len(sizes) >= 5 and max(sizes) <= 2 * cap_mib * 2**20
    assert [r["inchikey"] for r in ds.take_all()] == table["inchikey"].to_pylist()
