"""Embeddings for evaluation, batch by batch, without gradients: joint-space projections of
held-out examples, raw graph-encoder outputs, and frozen-modality vectors of new molecules
(through the run's embedding cache, so the same encoder never embeds a molecule twice)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, cast

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from tqdm.auto import tqdm

from acml_ray.cache import CachedEmbedder
from acml_ray.chem import GraphFeaturizer, Rejected
from acml_ray.config import ACMLConfig
from acml_ray.data.paired import PairedExamples
from acml_ray.modalities import build_modality
from acml_ray.model.acml import ACMLModel

log = logging.getLogger(__name__)


class _HasOutDim(Protocol):
    """What `ACMLModel` asks of a graph encoder besides being a module: its output width."""

    out_dim: int


@torch.no_grad()
def project_examples(
    model: ACMLModel, examples: PairedExamples, modality: str, batch_size: int = 512, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Joint-space (modality, graph) embeddings of the examples that have `modality`."""
    was_training = model.training
    model.eval()
    keep = np.flatnonzero(examples.masks[modality].numpy())
    mods, graphs = [], []
    for start in range(0, len(keep), batch_size):
        idx = keep[start : start + batch_size]
        batch, inputs = examples.batch(idx)
        batch = batch.to(device)
        dtype = next(model.graph_projections[modality].parameters()).dtype
        mods.append(model.project_modality(inputs[modality].to(device, dtype), modality).float().cpu())
        graphs.append(model.project_graph(batch, modality).float().cpu())
    model.train(was_training)
    if not mods:
        return np.zeros((0, model.embed_dim), np.float32), np.zeros((0, model.embed_dim), np.float32)
    return torch.cat(mods).numpy(), torch.cat(graphs).numpy()


@torch.no_grad()
def graph_embeddings(
    model: ACMLModel, graphs: Sequence[Data], modality: str | None = None, batch_size: int = 512
) -> np.ndarray:
    """Graph embeddings of PyG graphs: raw encoder output (``modality=None``, what downstream
    tasks see) or projected into `modality`'s joint space."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(graphs), batch_size):
        batch = Batch.from_data_list(list(graphs[start : start + batch_size]))
        emb = model.encode_graph(batch) if modality is None else model.project_graph(batch, modality)
        out.append(emb.float().cpu())
    model.train(was_training)
    width = cast(_HasOutDim, model.graph_encoder).out_dim if modality is None else model.embed_dim
    return torch.cat(out).numpy() if out else np.zeros((0, width), np.float32)


@torch.no_grad()
def project_vectors(model: ACMLModel, vectors: np.ndarray, modality: str, batch_size: int = 2048) -> np.ndarray:
    """Frozen-modality vectors ``[n, dim]`` -> `modality`'s joint space ``[n, embed_dim]``."""
    was_training = model.training
    model.eval()
    dtype = next(model.modality_projections[modality].parameters()).dtype
    out = [
        model.project_modality(torch.as_tensor(vectors[s : s + batch_size], dtype=dtype), modality).float().cpu()
        for s in range(0, len(vectors), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, model.embed_dim), np.float32)


def paired_from_smiles(
    smiles: Sequence[str], cfg: ACMLConfig, cache_dir: str | None = None, progress: bool = False
) -> tuple[PairedExamples, np.ndarray]:
    """Featurise molecules with the run's featuriser and embed them with the run's frozen
    modalities through the cache -> (examples, indices of `smiles` that were kept).

    Molecules the featuriser rejects are dropped; a modality that rejects a molecule leaves its
    mask False (as in the training table). `progress` shows a bar per modality (cache hits
    count at the end).
    """
    results = GraphFeaturizer(cfg.featurizer).featurize_batch(list(smiles))
    kept = np.array([i for i, r in enumerate(results) if not isinstance(r, Rejected)], dtype=np.int64)
    mol_graphs = [results[i] for i in kept]
    vectors: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for mcfg in cfg.modalities:
        modality = build_modality(mcfg.name, mcfg.options)
        if modality.input_column != "smiles":
            # Spectra etc. are not derivable from a SMILES string: such modalities need a table.
            log.warning("modality %s reads %r, not SMILES: skipped for new molecules", mcfg.name, modality.input_column)
            continue
        bar = tqdm(total=len(mol_graphs), desc=f"embed {mcfg.name}", unit="mol", disable=not progress)
        embedder = CachedEmbedder(modality, cache_dir or cfg.resolved_cache_dir(), progress=bar.update)
        result = embedder.embed([g.smiles for g in mol_graphs])
        bar.update(bar.total - bar.n)
        bar.close()
        vectors[mcfg.name] = torch.from_numpy(result.vectors)
        masks[mcfg.name] = torch.from_numpy(result.ok)
    return PairedExamples([g.to_pyg() for g in mol_graphs], vectors, masks), kept
