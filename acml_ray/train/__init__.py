"""Distributed ACML training: Ray Train `TorchTrainer` workers running DeepSpeed engines."""

from acml_ray.environment import init_ray  # Ray start-up lives with the environment defaults
from acml_ray.train.engine import build_engine, deepspeed_config
from acml_ray.train.loop import BatchCallback, BatchInfo, TrainState, train_loop_per_worker
from acml_ray.train.trainer import TrainResult, fit, modality_dims_from_table, run_location

__all__ = [
    "BatchCallback",
    "BatchInfo",
    "TrainResult",
    "TrainState",
    "build_engine",
    "deepspeed_config",
    "fit",
    "init_ray",
    "modality_dims_from_table",
    "run_location",
    "train_loop_per_worker",
]
