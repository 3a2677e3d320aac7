"""The trainable graph side: a Hu et al. (2020) "pretrain-gnns" style GIN with bond embeddings.

Atoms and bonds carry categorical integer features (see `acml_ray.chem.features`); each column
gets its own embedding table and the per-column embeddings are summed. Every layer adds self-loops
with a dedicated bond type, passes messages ``x_j + e_ij`` with sum aggregation and updates nodes
with a 2-layer MLP (h -> 2h -> h), as GIN/MolCLR/GraphCL/GraphMVP do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing, global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.utils import add_self_loops

from acml_ray.chem.features import ATOM_FEATURE_DIMS, BOND_FEATURE_DIMS, SELF_LOOP_BOND_TYPE
from acml_ray.config import GraphEncoderConfig

_POOLS = {"sum": global_add_pool, "mean": global_mean_pool, "max": global_max_pool}


class _CategoricalEncoder(nn.Module):
    """Sum of one xavier-initialised embedding per categorical column of an int64 [N, C] input."""

    def __init__(self, dims: Sequence[int], emb_dim: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(int(d), emb_dim) for d in dims)
        for emb in self.embeddings:
            nn.init.xavier_uniform_(cast(nn.Embedding, emb).weight)

    @property
    def num_columns(self) -> int:
        return len(self.embeddings)

    def forward(self, feats: Tensor) -> Tensor:
        # Graphs without bonds may carry a 1-D empty edge_attr; give it the expected column count.
        feats = feats.reshape(-1, self.num_columns)
        out = self.embeddings[0](feats[:, 0])
        for col, emb in enumerate(self.embeddings[1:], start=1):
            out = out + emb(feats[:, col])
        return out


class AtomEncoder(_CategoricalEncoder):
    """Embeds atom features (int64 ``[N, len(ATOM_FEATURE_DIMS)]``) to ``[N, emb_dim]``."""

    def __init__(self, emb_dim: int, dims: Sequence[int] = tuple(ATOM_FEATURE_DIMS)) -> None:
        super().__init__(dims, emb_dim)


class GINEBondConv(MessagePassing):
    """GIN layer with bond embeddings (Hu et al. 2020).

    ``h_i' = MLP( sum_{j in N(i) u {i}} (x_j + e_ij) )`` where ``e_ij`` is the sum of per-column
    bond embeddings and the self-loop ``(i, i)`` carries bond features
    ``[SELF_LOOP_BOND_TYPE, 0, 0, 0]``. Self-loops are added here, not by the featurizer, so
    cached graphs stay plain molecular graphs.
    """

    def __init__(self, emb_dim: int, bond_dims: Sequence[int] = tuple(BOND_FEATURE_DIMS)) -> None:
        super().__init__(aggr="add")
        self.emb_dim = emb_dim
        self.bond_encoder = _CategoricalEncoder(bond_dims, emb_dim)
        self.mlp = nn.Sequential(
            nn.Linear(emb_dim, 2 * emb_dim),
            nn.ReLU(),
            nn.Linear(2 * emb_dim, emb_dim),
        )

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """``x`` float [N, emb_dim], ``edge_index`` int64 [2, E], ``edge_attr`` int64 [E, C]."""
        num_cols = self.bond_encoder.num_columns
        edge_attr = edge_attr.reshape(-1, num_cols)
        loop_attr = torch.zeros(num_cols, dtype=edge_attr.dtype, device=edge_attr.device)
        loop_attr[0] = SELF_LOOP_BOND_TYPE
        edge_index, edge_attr = add_self_loops(edge_index, edge_attr, fill_value=loop_attr, num_nodes=x.size(0))
        edge_emb = self.bond_encoder(edge_attr)
        return self.mlp(self.propagate(edge_index, x=x, edge_attr=edge_emb))

    def message(self, x_j: Tensor, edge_attr: Tensor) -> Tensor:
        return x_j + edge_attr

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.emb_dim})"


class GraphEncoder(nn.Module):
    """Molecular graph -> one vector per graph.

    ``atom embedding -> num_layers x [GINEBondConv -> BatchNorm -> ReLU (not after the last) ->
    dropout] -> jumping knowledge -> global pooling -> Linear -> ReLU -> Linear``.

    Jumping knowledge follows Hu et al.: "last" uses the last layer, "sum" sums the atom
    embedding and every layer output, "concat" concatenates them (``(num_layers + 1) * hidden``
    wide before the readout MLP).

    Any module with an ``out_dim`` attribute and ``forward(batch) -> [num_graphs, out_dim]`` can
    stand in for it in `ACMLModel`.

    Attributes:
        out_dim: width of the output embedding (``out_dim`` or ``hidden_dim``).
    """

    def __init__(
        self,
        hidden_dim: int = 64,
        num_layers: int = 5,
        dropout: float = 0.2,
        pooling: str = "sum",
        jk: str = "last",
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"GraphEncoder needs num_layers >= 1, got {num_layers}")
        if hidden_dim < 1:
            raise ValueError(f"GraphEncoder needs hidden_dim >= 1, got {hidden_dim}")
        if pooling not in _POOLS:
            raise ValueError(f"unknown pooling {pooling!r}; expected sum, mean or max")
        if jk not in ("last", "sum", "concat"):
            raise ValueError(f"unknown jk {jk!r}; expected last, sum or concat")
        hidden = hidden_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.jk = jk
        self.pooling = pooling
        self.out_dim: int = out_dim or hidden

        self.atom_encoder = AtomEncoder(hidden)
        self.convs = nn.ModuleList(GINEBondConv(hidden) for _ in range(self.num_layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in range(self.num_layers))
        self.dropout = nn.Dropout(dropout)
        pooled_dim = hidden * (self.num_layers + 1) if self.jk == "concat" else hidden
        self.readout = nn.Sequential(
            nn.Linear(pooled_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.out_dim),
        )

    @classmethod
    def from_config(cls, config: GraphEncoderConfig | None = None) -> GraphEncoder:
        """Build from the YAML section ``graph_encoder`` (defaults: the reference GIN)."""
        config = config if config is not None else GraphEncoderConfig()
        return cls(
            hidden_dim=config.hidden_dim,
            num_layers=config.num_layers,
            dropout=config.dropout,
            pooling=config.pooling,
            jk=config.jk,
            out_dim=config.out_dim,
        )

    def node_embeddings(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """Per-atom representations after message passing and jumping knowledge."""
        h = self.atom_encoder(x)
        hs = [h]
        for layer, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(h, edge_index, edge_attr))
            if layer < self.num_layers - 1:
                h = torch.relu(h)
            h = self.dropout(h)
            hs.append(h)
        if self.jk == "last":
            return hs[-1]
        if self.jk == "sum":
            return torch.stack(hs, dim=0).sum(dim=0)
        return torch.cat(hs, dim=-1)

    def forward(self, batch) -> Tensor:
        """torch_geometric ``Batch`` (or a single ``Data``) -> ``[num_graphs, out_dim]``."""
        nodes = self.node_embeddings(batch.x, batch.edge_index, batch.edge_attr)
        index = getattr(batch, "batch", None)
        if index is None:  # a single un-batched graph
            index = torch.zeros(nodes.size(0), dtype=torch.long, device=nodes.device)
            num_graphs = 1
        else:
            num_graphs = int(batch.num_graphs)
        pooled = _POOLS[self.pooling](nodes, index, size=num_graphs)
        return self.readout(pooled)
