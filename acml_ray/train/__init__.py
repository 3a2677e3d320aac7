"""Distributed ACML training: Ray Train `TorchTrainer` workers running DeepSpeed engines."""

from acml_ray.train.engine import build_engine, deepspeed_config
from acml_ray.train.loop import train_loop_per_worker
from acml_ray.train.trainer import TrainResult, fit, init_ray

__all__ = ["build_engine", "deepspeed_config", "train_loop_per_worker", "TrainResult", "fit", "init_ray"]
