"""Fine-tuning a graph encoder with an MLP head on one task (masked loss, early stopping on the
validation loss); the same loop trains the randomly initialised "scratch" control."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from acml_ray.config import DownstreamConfig


class PropertyModel(nn.Module):
    """Graph encoder + MLP head (out_dim -> hidden -> n_tasks) for fine-tuning.

    `encoder`: any module with an ``out_dim`` attribute that maps a PyG `Batch` to
    [num_graphs, out_dim] (as `ACMLModel`'s graph encoder).
    """

    def __init__(self, encoder: nn.Module, n_tasks: int, hidden: int) -> None:
        super().__init__()
        self.encoder = encoder
        out_dim = int(cast(Any, encoder).out_dim)
        self.head = nn.Sequential(nn.Linear(out_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_tasks))

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.encoder(batch))


def _masked_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mask = torch.isfinite(y)
    target = torch.where(mask, y, torch.zeros_like(y))
    if kind == "classification":
        per = nn.functional.binary_cross_entropy_with_logits(out, target, reduction="none")
    else:
        per = (out - target) ** 2
    return (per * mask).sum() / mask.sum().clamp(min=1)


def _batches(graphs: Sequence[Data], size: int) -> list[Batch]:
    return [Batch.from_data_list(list(graphs[s : s + size])) for s in range(0, len(graphs), size)]


@torch.no_grad()
def _predict(model: PropertyModel, batches: Sequence[Batch]) -> torch.Tensor:
    model.eval()
    return torch.cat([model(b) for b in batches])


def train_graph_model(
    encoder: nn.Module,
    kind: str,
    graphs: Sequence[Data],
    labels: np.ndarray,
    train: np.ndarray,
    valid: np.ndarray,
    test: np.ndarray,
    cfg: DownstreamConfig,
    seed: int,
) -> tuple[np.ndarray, dict]:
    """Train encoder + head on `train` (masked loss) for at most ``cfg.epochs`` epochs, stopping
    after ``cfg.patience`` epochs without a lower validation loss; keep the best epoch and return
    its test scores (probabilities) or predictions (original units) with ``{"epochs", "best_epoch"}``."""
    torch.manual_seed(seed)
    model = PropertyModel(encoder, labels.shape[1], cfg.head_hidden)
    y = torch.tensor(labels, dtype=torch.float32)  # a copy: `labels` may be a read-only shared array
    # Regression targets are standardised per task on the training rows, for a well-scaled loss.
    mu = torch.nanmean(y[train], dim=0) if kind == "regression" else torch.zeros(y.shape[1])
    sd = torch.as_tensor(np.nan_to_num(np.nanstd(labels[train], axis=0), nan=1.0), dtype=torch.float32)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd)) if kind == "regression" else torch.ones(y.shape[1])
    mu = torch.nan_to_num(mu)
    y_scaled = (y - mu) / sd
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(seed)
    # Validation and test batches never change: collate them once, not every epoch.
    valid_batches = _batches([graphs[i] for i in valid], 256)
    best_loss, best_state, best_epoch, stale, epoch = float("inf"), copy.deepcopy(model.state_dict()), 0, 0, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(train)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two graphs
                continue
            loss = _masked_loss(kind, model(Batch.from_data_list([graphs[i] for i in idx])), y_scaled[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if len(valid):
            val_loss = float(_masked_loss(kind, _predict(model, valid_batches), y_scaled[valid]))
        else:
            val_loss = 0.0  # no validation molecules: keep the last epoch
        if val_loss <= best_loss:
            best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if cfg.patience is not None and stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    out = _predict(model, _batches([graphs[i] for i in test], 256))
    out = torch.sigmoid(out) if kind == "classification" else out * sd + mu
    return out.numpy(), {"epochs": epoch, "best_epoch": best_epoch}
