"""`fit(model_factory=...)` trains a model built from a user's own parts in every worker, and
`load_model(..., model_factory=...)` reads the best model back (slow: Ray Train + DeepSpeed)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from torch import nn

from acml_ray.chem.features import ATOM_FEATURE_DIMS
from acml_ray.config import ACMLConfig, load_config
from acml_ray.model import ACMLModel, ProjectionHead

pytestmark = pytest.mark.slow


class MeanAtomEncoder(nn.Module):
    """A user's own graph side: atom-type embeddings mean-pooled per graph (no message passing)."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.atoms = nn.Embedding(ATOM_FEATURE_DIMS[0], out_dim)

    def forward(self, batch) -> torch.Tensor:
        from torch_geometric.utils import scatter

        return scatter(self.atoms(batch.x[:, 0]), batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean")


def mean_atom_model(cfg: ACMLConfig, modality_dims: Mapping[str, int]) -> ACMLModel:
    return ACMLModel(
        MeanAtomEncoder(cfg.graph_encoder.hidden_dim),
        modality_dims,
        projection=lambda d: ProjectionHead(d, dims=cfg.projection.dims, dropout=0.0),
    )


def test_fit_builds_the_model_with_the_given_factory(ray_local, tables, tmp_path: Path):
    import ray.cloudpickle

    from acml_ray.model.serialization import load_model
    from acml_ray.train import fit

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    cfg = load_config(
        overrides={
            "graph_encoder.hidden_dim": 12,
            "projection.dims": [8],
            "loss.kind": "infonce",
            "loss.temperature": 0.1,
            "train.batch_size": 16,
            "train.epochs": 1,
            "eval.pool_size": 16,
            "eval.top_k": [1, 5],
            "modalities": [{"name": "morgan"}],
            "output_dir": str(tmp_path),
            "train.train_table": tables["train"],
            "train.val_table": tables["val"],
            "tracking.enabled": False,
        }
    )
    result = fit(cfg, run_name="factory", model_factory=mean_atom_model)
    assert [h["epoch"] for h in result.history] == [1]
    model, _, _ = load_model(result.best_model_dir, model_factory=mean_atom_model)
    assert isinstance(model.graph_encoder, MeanAtomEncoder) and model.embed_dim == 8
    with pytest.raises(RuntimeError, match="state_dict"):  # the default GIN cannot take its weights
        load_model(result.best_model_dir)
