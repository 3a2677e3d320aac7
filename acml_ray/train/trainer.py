"""Driver side of training: build the Ray `TorchTrainer` from config and run it."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from acml_ray.config import ACMLConfig
from acml_ray.train.loop import SCORE_METRIC, train_loop_per_worker

# Workers must stay on loopback and quiet, wherever the driver was started from.
WORKER_ENV = {
    "DS_ACCELERATOR": "cpu",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "GLOO_SOCKET_IFNAME": "lo",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def init_ray(num_cpus: int | None = None, use_gpu: bool = False) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (as under ``ray job submit``), or start a
    local Ray on loopback; workers get `WORKER_ENV` (caller's values win)."""
    if ray.is_initialized():
        return
    env = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
    if use_gpu:
        env.pop("DS_ACCELERATOR")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env})
        return
    # Without this Ray may swap 127.0.0.1 for the first NIC's address.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": env}, configure_logging=True, logging_level="WARNING")


@dataclass
class TrainResult:
    """Where the trained model is and how it scored."""

    best_model_dir: Path  # holds model.pt of the best validation epoch
    history: list[dict]  # per-epoch metrics up to the best epoch
    best_metrics: dict
    final_metrics: dict  # the last epoch's metrics


def fit(cfg: ACMLConfig, train_data: str, val_data: str, modality_dims: dict[str, int],
        run_name: str = "train") -> TrainResult:
    """Train on Parquet training tables (paths or directories) with Ray Train + DeepSpeed."""
    datasets = {
        "train": ray.data.read_parquet(train_data),
        "val": ray.data.read_parquet(val_data),
    }
    storage = Path(cfg.output_dir).resolve() / "ray_results"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"acml": cfg.model_dump(mode="json"), "modality_dims": modality_dims},
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name, storage_path=str(storage),
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=SCORE_METRIC,
                checkpoint_score_order="max"),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    best = result.best_checkpoints[0][0] if result.best_checkpoints else result.checkpoint
    if best is None:
        raise RuntimeError("training finished without a checkpoint")
    target = Path(cfg.output_dir) / "model"
    if target.exists():
        shutil.rmtree(target)
    with best.as_directory() as directory:
        shutil.copytree(directory, target)
    history = json.loads((target / "history.json").read_text())
    best_metrics = max(history, key=lambda m: m.get(SCORE_METRIC, 0.0))
    return TrainResult(best_model_dir=target, history=history, best_metrics=best_metrics,
                       final_metrics=dict(result.metrics or {}))
