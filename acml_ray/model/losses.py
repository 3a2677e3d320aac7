"""Contrastive objectives aligning projected modality embeddings with projected graph embeddings.

Both losses are pure functions of full ``[N, D]`` matrices with no hidden state, so a
distributed trainer can pass all-gathered matrices (every worker's rows) unchanged.
Convention: ``c`` = modality side (rows of the logits), ``g`` = graph side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acml_ray.config import LossConfig

TAU_MIN = 0.01
TAU_MAX = 100.0


def _shape_error(c: Tensor, g: Tensor) -> str:
    return f"expected two [N, D] matrices of equal shape, got {tuple(c.shape)} and {tuple(g.shape)}"


def _soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-row cross-entropy against a target distribution: ``sum_j -t_ij log softmax(p)_ij``."""
    return (-targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def clip_soft_target_loss(c: Tensor, g: Tensor, temperature: float | Tensor, *, detach_targets: bool = False) -> Tensor:
    """The reference ACML loss (soft CLIP targets from in-modality similarities).

    ``logits = c g^T / tau``; ``targets = softmax_row(tau * (c c^T + g g^T) / 2)``;
    ``loss = mean_rows[(CE(logits, targets) + CE(logits^T, targets^T)) / 2]``.
    No L2 normalisation, as in the reference. Gradients flow through the targets too (the
    reference does not detach them); pass ``detach_targets=True`` to stop that.
    """
    if c.shape != g.shape or c.dim() != 2:
        raise ValueError(_shape_error(c, g))
    logits = c @ g.T / temperature
    targets = F.softmax(temperature * (c @ c.T + g @ g.T) / 2, dim=-1)
    if detach_targets:
        targets = targets.detach()
    per_row = (_soft_cross_entropy(logits, targets) + _soft_cross_entropy(logits.T, targets.T)) / 2
    return per_row.mean()


def info_nce_loss(c: Tensor, g: Tensor, temperature: float | Tensor) -> Tensor:
    """Symmetric InfoNCE: L2-normalise both sides, ``logits = c_n g_n^T / tau``, identity
    targets, mean of the modality->graph and graph->modality cross-entropies."""
    if c.shape != g.shape or c.dim() != 2:
        raise ValueError(_shape_error(c, g))
    logits = F.normalize(c, dim=-1) @ F.normalize(g, dim=-1).T / temperature
    labels = torch.arange(logits.size(0), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class Temperature(nn.Module):
    """Softmax temperature ``tau``: a fixed buffer or a learnable ``log tau`` parameter.

    Learnable temperatures are optimised in log space (positive, scale-free steps) and clamped to
    ``[TAU_MIN, TAU_MAX]`` so the logits cannot blow up. ``forward()`` returns a 0-d tensor.
    """

    def __init__(self, initial: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        if not TAU_MIN <= initial <= TAU_MAX:
            raise ValueError(f"temperature must lie in [{TAU_MIN}, {TAU_MAX}], got {initial}")
        self.learnable = learnable
        # Shape [1], not 0-d: DeepSpeed broadcasts parameters as byte views, impossible for 0-d.
        log_tau = torch.tensor([math.log(initial)], dtype=torch.float32)
        if learnable:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    def forward(self) -> Tensor:
        return self.log_tau.clamp(math.log(TAU_MIN), math.log(TAU_MAX)).exp().reshape(())

    def extra_repr(self) -> str:
        return f"tau={float(self()):.4g}, learnable={self.learnable}"


class ContrastiveLoss(nn.Module):
    """One modality's contrastive objective.

    ``kind="clip_soft"`` is the reference loss, ``kind="infonce"`` the standard one; ``temperature``
    is fixed or, with ``learnable_temperature``, optimised (see `Temperature`).
    ``forward(modality_emb, graph_emb)`` takes two ``[N, D]`` matrices and returns a scalar.
    """

    def __init__(self, kind: str = "clip_soft", temperature: float = 1.0, learnable_temperature: bool = False) -> None:
        super().__init__()
        if kind not in ("clip_soft", "infonce"):
            raise ValueError(f"unknown loss kind {kind!r}")
        self.kind = kind
        self.temperature = Temperature(temperature, learnable_temperature)

    @classmethod
    def from_config(cls, config: LossConfig | None = None) -> ContrastiveLoss:
        """Build from the YAML section ``loss``."""
        config = config if config is not None else LossConfig()
        return cls(kind=config.kind, temperature=config.temperature, learnable_temperature=config.learnable_temperature)

    def forward(self, modality_emb: Tensor, graph_emb: Tensor) -> Tensor:
        tau = self.temperature()
        if self.kind == "clip_soft":
            return clip_soft_target_loss(modality_emb, graph_emb, tau)
        return info_nce_loss(modality_emb, graph_emb, tau)

    def extra_repr(self) -> str:
        return f"kind={self.kind}"
