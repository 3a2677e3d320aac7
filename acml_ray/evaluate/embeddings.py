"""Project held-out examples into the joint space, batch by batch, without gradients."""

from __future__ import annotations

import numpy as np
import torch

from acml_ray.data.paired import PairedExamples
from acml_ray.model.acml import ACMLModel


@torch.no_grad()
def project_examples(model: ACMLModel, examples: PairedExamples, modality: str,
                     batch_size: int = 512, device: torch.device | str = "cpu"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Joint-space (modality, graph) embeddings of the examples that have `modality`."""
    was_training = model.training
    model.eval()
    keep = np.flatnonzero(examples.masks[modality].numpy())
    mods, graphs = [], []
    for start in range(0, len(keep), batch_size):
        idx = keep[start:start + batch_size]
        batch, inputs = examples.batch(idx)
        batch = batch.to(device)
        dtype = next(model.graph_projections[modality].parameters()).dtype
        mods.append(model.project_modality(inputs[modality].to(device, dtype), modality).float().cpu())
        graphs.append(model.project_graph(batch, modality).float().cpu())
    model.train(was_training)
    if not mods:
        return np.zeros((0, model.embed_dim), np.float32), np.zeros((0, model.embed_dim), np.float32)
    return torch.cat(mods).numpy(), torch.cat(graphs).numpy()
