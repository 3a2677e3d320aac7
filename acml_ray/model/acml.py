"""The ACML model: a trainable graph encoder aligned with frozen modality encoders.

Asymmetric: the modality side is pretrained and frozen (its embeddings are usually cached), the
graph side is a shallow GIN trained from scratch. Each modality gets its own pair of projection
heads and its own contrastive loss (with its own, possibly learnable, temperature).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from acml_ray.config import ACMLConfig
from acml_ray.model.gin import GraphEncoder
from acml_ray.model.losses import ContrastiveLoss
from acml_ray.model.projection import ProjectionHead

MASK_SUFFIX = "__mask"
# Builds the model a run trains from its config and the cached vector widths; the default is
# `ACMLModel.from_config`. Give your own to `fit` (and to `load_model` to read it back) to train
# a model with your own parts.
ModelFactory = Callable[[ACMLConfig, Mapping[str, int]], "ACMLModel"]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather equal-shape tensors from every rank; the backward pass sums every rank's
    gradient for this rank's slice (a reduce-scatter written as all_reduce + slice, because gloo
    has no reduce_scatter and torch's own fallback needs all_to_all)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.rank, ctx.rows = dist.get_rank(), x.size(0)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_rows(x: Tensor) -> Tensor:
    """Rows of ``x`` from every rank, concatenated in rank order, differentiable w.r.t. the local
    rows. Ranks may hold different row counts (padded to the largest for the collective).

    Every rank then computes the same global loss L, and the backward sum gives the local rows
    ``world_size * dL/dx``; the data-parallel gradient average divides that by ``world_size``
    again, so parameter gradients equal those of one process on the concatenated batch (no
    loss rescaling needed). Parameters outside the gathered path (a learnable temperature) get
    ``dL/dtau`` on every rank, which averaging leaves unchanged.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if x.dtype == torch.bool:  # gloo has no bool collectives
        return gather_rows(x.to(torch.uint8)).bool()
    sizes = torch.tensor([x.size(0)], device=x.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(dist.get_world_size())]
    dist.all_gather(all_sizes, sizes)
    counts = [int(s) for s in all_sizes]
    longest = max(counts)
    if longest != x.size(0):
        x = torch.cat([x, x.new_zeros((longest - x.size(0), *x.shape[1:]))])
    gathered = _GatherWithGrad.apply(x)
    keep = torch.cat([torch.arange(c, device=x.device) + r * longest for r, c in enumerate(counts)])
    return gathered[keep]


def _check_name(name: str) -> None:
    # nn.ModuleDict keys cannot contain "." and the mask convention reserves the suffix.
    if not name or "." in name or name.endswith(MASK_SUFFIX):
        raise ValueError(f"invalid modality name {name!r}")


class ACMLModel(nn.Module):
    """Graph encoder + per-modality projection heads + per-modality contrastive losses.

    The parts are plain arguments (as in chemprop's ``MPNN(message_passing, agg, predictor)``);
    `from_config` assembles the default ones from YAML. Every modality needs its own heads and
    its own loss (with its own temperature), so heads and losses are given as factories.

    Args:
        graph_encoder: the trainable graph side: any module with an ``out_dim`` attribute and
            ``forward(batch) -> [num_graphs, out_dim]`` (default: `GraphEncoder`).
        modality_dims: raw (frozen-encoder output / cached) embedding width per modality.
        projection: ``projection(in_dim) -> module`` with an ``out_dim`` attribute; called for the
            graph side and the modality side of every modality (default: `ProjectionHead`).
        loss: ``loss() -> module``, ``forward(modality_emb, graph_emb) -> scalar``, called once
            per modality (default: `ContrastiveLoss`, the reference soft-target loss at tau 1).
        frozen_encoders: optional pretrained encoders per modality, for on-the-fly embedding
            when no cache exists. They are frozen (``requires_grad=False``) and stay in eval mode
            whatever ``train()`` is called with.
        loss_weights: default per-modality loss weights (1.0 where absent); ``forward(weights=)``
            overrides them per call.
    """

    def __init__(
        self,
        graph_encoder: nn.Module,
        modality_dims: Mapping[str, int],
        projection: Callable[[int], nn.Module] = ProjectionHead,
        loss: Callable[[], nn.Module] = ContrastiveLoss,
        frozen_encoders: Mapping[str, nn.Module] | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if not modality_dims:
            raise ValueError("ACMLModel needs at least one modality")
        for name in modality_dims:
            _check_name(name)
        unknown = set(frozen_encoders or {}) - set(modality_dims)
        if unknown:
            raise ValueError(f"frozen encoders for modalities without dims: {sorted(unknown)}")

        self.graph_encoder = graph_encoder
        self.modality_dims: dict[str, int] = {k: int(v) for k, v in modality_dims.items()}
        graph_dim = int(cast(Any, graph_encoder).out_dim)  # any module with an `out_dim`
        self.graph_projections = nn.ModuleDict({name: projection(graph_dim) for name in modality_dims})
        self.modality_projections = nn.ModuleDict({name: projection(dim) for name, dim in self.modality_dims.items()})
        widths = {
            int(cast(Any, head).out_dim)
            for head in [*self.graph_projections.values(), *self.modality_projections.values()]
        }
        if len(widths) != 1:
            raise ValueError(f"projection heads must share one joint width, got {sorted(widths)}")
        self.losses = nn.ModuleDict({name: loss() for name in modality_dims})
        self.loss_weights: dict[str, float] = {
            name: float((loss_weights or {}).get(name, 1.0)) for name in modality_dims
        }
        self.frozen_encoders = nn.ModuleDict(dict(frozen_encoders or {}))
        for encoder in self.frozen_encoders.values():
            encoder.requires_grad_(False)
            encoder.eval()
        self.embed_dim: int = widths.pop()

    @classmethod
    def from_config(
        cls,
        cfg: ACMLConfig,
        modality_dims: Mapping[str, int],
        frozen_encoders: Mapping[str, nn.Module] | None = None,
    ) -> ACMLModel:
        """Build from ``cfg.graph_encoder``, ``cfg.projection``, ``cfg.loss``; loss weights come
        from ``cfg.modalities``."""
        return cls(
            GraphEncoder.from_config(cfg.graph_encoder),
            modality_dims,
            projection=functools.partial(ProjectionHead.from_config, config=cfg.projection),
            loss=functools.partial(ContrastiveLoss.from_config, cfg.loss),
            frozen_encoders=frozen_encoders,
            loss_weights={m.name: m.weight for m in cfg.modalities},
        )

    @property
    def modalities(self) -> list[str]:
        return list(self.modality_dims)

    def train(self, mode: bool = True) -> ACMLModel:
        """Like `nn.Module.train`, but frozen encoders always stay in eval mode (the reference
        left them in train mode, so their dropout stayed active)."""
        super().train(mode)
        for encoder in self.frozen_encoders.values():
            encoder.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimiser should see (frozen encoders excluded)."""
        return (p for p in self.parameters() if p.requires_grad)

    def temperatures(self) -> dict[str, float]:
        """Current temperature per modality (for logging)."""
        # A user-supplied loss without a `temperature` is simply not listed.
        return {
            name: float(cast(Any, loss).temperature().detach())
            for name, loss in self.losses.items()
            if hasattr(loss, "temperature")
        }

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modality_dims:
            raise KeyError(f"unknown modality {modality!r}; model has {self.modalities}")

    def encode_graph(self, batch) -> Tensor:
        """Raw graph embedding ``[num_graphs, graph_encoder.out_dim]`` (for downstream tasks)."""
        return self.graph_encoder(batch)

    def project_graph(self, batch, modality: str) -> Tensor:
        """Graph embedding in ``modality``'s joint space ``[num_graphs, embed_dim]``."""
        self._check_modality(modality)
        return self.graph_projections[modality](self.encode_graph(batch))

    def project_modality(self, x: Tensor, modality: str) -> Tensor:
        """Cached/frozen modality embedding ``[B, modality_dims[modality]]`` -> joint space."""
        self._check_modality(modality)
        return self.modality_projections[modality](x)

    def encode_modality(self, raw, modality: str) -> Tensor:
        """Run ``modality``'s frozen encoder on raw inputs without gradients (no-cache path)."""
        self._check_modality(modality)
        if modality not in self.frozen_encoders:
            raise KeyError(f"no frozen encoder registered for modality {modality!r}")
        encoder = self.frozen_encoders[modality]
        encoder.eval()  # belt and braces: someone may have called encoder.train() directly
        with torch.no_grad():
            return encoder(raw)

    def forward(
        self,
        batch,
        modality_inputs: Mapping[str, Tensor],
        weights: Mapping[str, float] | None = None,
        gather: bool = False,
    ) -> dict[str, Tensor]:
        """Weighted sum of per-modality contrastive losses.

        With ``gather=True`` under torch.distributed, projected embeddings (and masks) of every
        rank are all-gathered before the loss, so negatives span the global batch (every rank
        must call forward the same number of times; see `gather_rows`).

        ``modality_inputs`` maps modality name -> embedding ``[B, dim]`` row-aligned with the
        graphs in ``batch``, plus optional ``f"{name}__mask"`` bool ``[B]`` (False = molecule
        lacks that modality; the row is left out of that modality's loss). A modality with fewer
        than 2 usable rows is skipped (no contrast possible) and has no ``loss/<name>`` entry.

        Returns ``{"loss": total (differentiable), "loss/<name>": per-modality loss (detached)}``.
        """
        names = [k for k in modality_inputs if not k.endswith(MASK_SUFFIX)]
        for name in names:
            self._check_modality(name)
        for key in modality_inputs:
            if key.endswith(MASK_SUFFIX) and key[: -len(MASK_SUFFIX)] not in names:
                raise KeyError(f"mask {key!r} given without its modality")
        if not names:
            raise ValueError("modality_inputs holds no modality embeddings")

        graph_emb = self.encode_graph(batch)
        # Zero that still depends on the graph side, so backward() works when all are skipped.
        total = graph_emb.sum() * 0.0
        out: dict[str, Tensor] = {}
        for name in names:
            x = modality_inputs[name]
            if x.size(0) != graph_emb.size(0):
                raise ValueError(f"{name}: {x.size(0)} embeddings for {graph_emb.size(0)} graphs")
            g = graph_emb
            mask = modality_inputs.get(name + MASK_SUFFIX)
            if gather:
                # Project every row, then gather rows and masks: ranks' masks differ, and the
                # collective needs the same call sequence everywhere (no early `continue`).
                if mask is None:
                    mask = torch.ones(x.size(0), dtype=torch.bool, device=graph_emb.device)
                keep = gather_rows(mask.to(device=graph_emb.device, dtype=torch.bool).reshape(-1))
                c_proj = gather_rows(self.modality_projections[name](x))[keep]
                g_proj = gather_rows(self.graph_projections[name](g))[keep]
            else:
                if mask is not None:
                    mask = mask.to(device=graph_emb.device, dtype=torch.bool).reshape(-1)
                    # Projection heads are row-wise (LayerNorm, no BatchNorm), so masking before
                    # projection equals masking after, and is cheaper.
                    x, g = x[mask.to(x.device)], g[mask]
                if x.size(0) < 2:
                    continue
                c_proj = self.modality_projections[name](x)
                g_proj = self.graph_projections[name](g)
            if c_proj.size(0) < 2:
                continue
            loss = self.losses[name](c_proj, g_proj)
            weight = (weights or {}).get(name, self.loss_weights[name])
            total = total + float(weight) * loss
            out[f"loss/{name}"] = loss.detach()
        out["loss"] = total
        return out
