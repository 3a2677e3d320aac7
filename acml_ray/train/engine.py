"""DeepSpeed engine setup for one training worker."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from acml_ray.config import ACMLConfig


def deepspeed_config(cfg: ACMLConfig) -> dict[str, Any]:
    """DeepSpeed JSON config from the typed config (ZeRO stage and precision).

    The trainable model is small (~1-2 M parameters), so ZeRO 0-1 is the honest default; what
    DeepSpeed brings here is a standard engine for data parallelism and bf16 on GPU.
    """
    t = cfg.train
    precision = t.resolved_precision()
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.optimizer.grad_clip_norm,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,  # we log ourselves, from rank 0
        "wall_clock_breakdown": False,
    }


def skip_shm_comm_build() -> None:
    """Stop DeepSpeed from JIT-compiling its shared-memory comm op (~90 s per fresh machine).

    Kept in its own function: a Ray train function that references `deepspeed.ops` directly
    fails to pickle (`cannot pickle '_Ops' object`).
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ACMLConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Linear warm-up then cosine decay to zero over `total_steps` (``lr_schedule: cosine``)."""
    t = cfg.train
    if t.lr_schedule == "none" and t.warmup_steps == 0:
        return None
    warmup, total = t.warmup_steps, max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if t.lr_schedule == "none":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_engine(model: torch.nn.Module, cfg: ACMLConfig, trainable, total_steps: int = 0) -> Any:
    """Wrap `model` in a DeepSpeed engine with a torch AdamW over `trainable` parameters and the
    configured LR schedule (stepped by ``engine.step()`` and saved with its checkpoints).

    A torch optimizer (not DeepSpeed's "Adam" type) avoids the CPU FusedAdam JIT build.
    """
    if not cfg.train.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    skip_shm_comm_build()
    import deepspeed

    optimizer = torch.optim.AdamW(list(trainable), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler(optimizer, cfg, total_steps),
        config=deepspeed_config(cfg),
    )
    if engine.dp_world_size == 1 and cfg.train.zero_stage == 0:
        # One worker has nothing to all-reduce, yet DeepSpeed would still flatten, "reduce" and
        # unflatten every gradient after each backward (~3% of a CPU step, measured).
        engine.enable_backward_allreduce = False
    return engine
