"""ACML model: ``embedding = projection(pool(message_passing(G)))`` on the graph side, aligned
by a contrastive loss with ``projection(frozen_encoder(modality))`` on the other side."""

from acml_ray.model.acml import MASK_SUFFIX, ACMLModel
from acml_ray.model.gin import AtomEncoder, GINEBondConv, GraphEncoder
from acml_ray.model.losses import (
    TAU_MAX,
    TAU_MIN,
    ContrastiveLoss,
    Temperature,
    clip_soft_target_loss,
    info_nce_loss,
)
from acml_ray.model.projection import ProjectionCell, ProjectionHead

__all__ = [
    "MASK_SUFFIX",
    "TAU_MAX",
    "TAU_MIN",
    "ACMLModel",
    "AtomEncoder",
    "ContrastiveLoss",
    "GINEBondConv",
    "GraphEncoder",
    "ProjectionCell",
    "ProjectionHead",
    "Temperature",
    "clip_soft_target_loss",
    "info_nce_loss",
]
