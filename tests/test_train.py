"""Fast training tests (no Ray): config validation, the cross-rank gather without a process
group, LR schedule, MLflow tracking into a sqlite store, the `acml train` parser."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from acml_ray.chem import GraphFeaturizer
from acml_ray.config import ACMLConfig, load_config
from acml_ray.model.acml import ACMLModel, gather_rows
from acml_ray.train.engine import deepspeed_config, lr_scheduler

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "C[C@H](N)C(=O)O", "C/C=C/C", "O=C(O)CCl"]


def test_precision_follows_device():
    assert ACMLConfig().train.resolved_precision() == "fp32"
    assert load_config(overrides={"train.use_gpu": True}).train.resolved_precision() == "bf16"
    assert deepspeed_config(ACMLConfig())["bf16"]["enabled"] is False
    with pytest.raises(ValueError, match="bf16 needs use_gpu"):
        load_config(overrides={"train.precision": "bf16"})
    with pytest.raises(ValueError, match="sync_batchnorm needs use_gpu"):
        load_config(overrides={"train.sync_batchnorm": True})


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_rows(x) is x
    cfg = load_config(
        overrides={
            "graph_encoder.hidden_dim": 8,
            "projection.dims": [8],
            "modalities": [{"name": "a"}, {"name": "b", "weight": 0.5}],
        }
    )
    torch.manual_seed(0)
    model = ACMLModel.from_config(cfg, {"a": 5, "b": 3}).eval()
    featurizer = GraphFeaturizer()
    batch = Batch.from_data_list([featurizer.featurize(s).to_pyg() for s in SMILES])
    inputs = {
        "a": torch.randn(6, 5),
        "b": torch.randn(6, 3),
        "b__mask": torch.tensor([True, False, True, True, False, True]),
    }
    plain, gathered = model(batch, inputs), model(batch, inputs, gather=True)
    assert set(plain) == {"loss", "loss/a", "loss/b"}
    for key in plain:
        torch.testing.assert_close(plain[key], gathered[key])


def test_cosine_schedule_warms_up_and_decays():
    cfg = load_config(overrides={"train.lr_schedule": "cosine", "train.warmup_steps": 2})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lr_scheduler(opt, cfg, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] < 0.1
    assert lr_scheduler(opt, ACMLConfig(), 10) is None


def test_tracking_run_in_sqlite_store(tmp_path):
    from mlflow.tracking import MlflowClient

    from acml_ray.tracking import resolve_tracking_uri, start_run

    cfg = load_config(overrides={"output_dir": str(tmp_path), "train.epochs": 3})
    assert resolve_tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    run = start_run(cfg, "r1")
    run.log_metrics([(1, {"train/step_loss": 2.0}), (2, {"val/image->graph/top1": 0.5, "bad": float("nan")})])
    run.finish()
    client = MlflowClient(run.uri)
    data = client.get_run(run.run_id).data
    assert data.params["train.epochs"] == "3" and data.params["loss.kind"] == "clip_soft"
    assert data.metrics == {"train/step_loss": 2.0, "val/image_to_graph/top1": 0.5}
    assert "mlflow.source.git.commit" in data.tags
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["config.yaml"]
    assert str(tmp_path.resolve() / "mlartifacts") in client.get_run(run.run_id).info.artifact_uri
    assert start_run(cfg, "r1", resume=True).run_id == run.run_id


def test_cli_train_parser():
    import argparse

    from acml_ray.cli import train
    from acml_ray.cli.main import COMMANDS

    assert "train" in COMMANDS
    parser = argparse.ArgumentParser()
    train.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", "c.yaml", "--resume", "run-1", "--set", "train.epochs=2"])
    assert args.command == "train" and args.resume == "run-1" and args.set == ["train.epochs=2"]


def test_config_logged_to_mlflow_has_no_uri_credentials() -> None:
    from acml_ray.tracking.mlflow_run import redact_credentials

    dumped = {
        "tracking": {"uri": "https://alice:s3cr3t@mlflow.example:5000"},
        "train": {"storage_path": "s3://bucket/runs", "tables": ["http://u:p@h/t", 3]},
    }
    clean = redact_credentials(dumped)
    assert "s3cr3t" not in str(clean) and "u:p@" not in str(clean)
    assert clean["tracking"]["uri"] == "https://***@mlflow.example:5000"
    assert clean["train"]["storage_path"] == "s3://bucket/runs"


def test_one_worker_engine_clips_like_torch_and_skips_the_all_reduce(monkeypatch):
    """A one-process DeepSpeed engine takes the same AdamW step as plain torch with
    `clip_grad_norm_` at the configured norm, and does not "all-reduce" with itself."""
    import socket

    import torch.distributed as dist

    from acml_ray.train.engine import build_engine

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = load_config(
        overrides={
            "graph_encoder.hidden_dim": 8,
            "projection.dims": [8],
            "modalities": [{"name": "a"}],
            "optimizer.grad_clip_norm": 0.05,  # small enough to bind on the first step
            "optimizer.lr": 0.1,
        }
    )
    assert deepspeed_config(cfg)["gradient_clipping"] == 0.05
    featurizer = GraphFeaturizer()
    batch = Batch.from_data_list([featurizer.featurize(s).to_pyg() for s in SMILES])
    inputs = {"a": torch.randn(6, 5, generator=torch.Generator().manual_seed(1))}

    torch.manual_seed(0)
    reference = ACMLModel.from_config(cfg, {"a": 5}).eval()
    optimizer = torch.optim.AdamW(reference.trainable_parameters(), lr=0.1, weight_decay=cfg.optimizer.weight_decay)
    reference(batch, inputs)["loss"].backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.trainable_parameters(), 0.05)
    assert norm > 0.05
    optimizer.step()

    torch.manual_seed(0)
    model = ACMLModel.from_config(cfg, {"a": 5}).eval()
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        engine = build_engine(model, cfg, model.trainable_parameters())
        assert engine.enable_backward_allreduce is False
        engine.backward(engine(batch, inputs)["loss"])
        engine.step()
    finally:
        dist.destroy_process_group()
    for (name, p), q in zip(reference.named_parameters(), engine.module.parameters()):
        torch.testing.assert_close(q, p, msg=name)
