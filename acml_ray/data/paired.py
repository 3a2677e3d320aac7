"""The training table: one row per molecule, its graph arrays and one cached vector per modality.

Column contract (read by training, written by the embedding pipeline):
- graph columns from `MolGraph.to_row()` (`num_atoms`, `x`, `edge_index`, `edge_attr`, ...,
  `smiles`, `inchikey`);
- ``emb__<modality>``: fixed-size float32 list; ``has__<modality>``: bool, False where that
  modality's input was missing or rejected (the row still trains the other modalities).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch_geometric.data import Batch, Data

from acml_ray.chem import MolGraph


def emb_column(modality: str) -> str:
    return f"emb__{modality}"


def mask_column(modality: str) -> str:
    return f"has__{modality}"


def build_table(
    graphs: Sequence[MolGraph],
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
    extra: Mapping[str, Sequence] | None = None,
) -> pa.Table:
    """Assemble graphs and per-modality (vectors [n, dim], ok mask [n]) into the training table."""
    rows = [g.to_row() for g in graphs]
    columns: dict[str, pa.Array] = {}
    for name in rows[0].keys() if rows else []:
        values = [r[name] for r in rows]
        if isinstance(values[0], np.ndarray):
            columns[name] = pa.array([v.tolist() for v in values])
        else:
            columns[name] = pa.array(values)
    for modality, (vectors, ok) in embeddings.items():
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(vectors) != len(rows):
            raise ValueError(f"{modality}: {len(vectors)} vectors for {len(rows)} graphs")
        columns[emb_column(modality)] = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), vectors.shape[1]
        )
        columns[mask_column(modality)] = pa.array(np.asarray(ok, dtype=bool))
    for name, extra_values in (extra or {}).items():
        columns[name] = pa.array(list(extra_values))
    return pa.table(columns)


def validation_mask(inchikeys: Iterable[str | None], val_fraction: float, seed: int) -> np.ndarray:
    """True for the molecules of the validation split (the reference: 80/20, seed 4).

    Each molecule's side is a seeded hash of its InChIKey, not a draw over the whole list: the
    same molecule lands on the same side in every pipeline (`acml demo`, `acml embed`), in
    every shard and batch, and stays there as the data set grows. Missing keys count as "".
    """
    fractions = [
        int.from_bytes(hashlib.sha256(f"{seed}:{key or ''}".encode()).digest()[:8], "big") / 2**64 for key in inchikeys
    ]
    return np.array(fractions, dtype=np.float64) < val_fraction


@dataclass
class PairedExamples:
    """Materialised training examples: PyG graphs plus per-modality vectors and masks."""

    graphs: list[Data]
    vectors: dict[str, torch.Tensor]  # modality -> float32 [n, dim]
    masks: dict[str, torch.Tensor]  # modality -> bool [n]

    def __len__(self) -> int:
        return len(self.graphs)

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping], modalities: Sequence[str]) -> PairedExamples:
        """Build from table rows (dicts as Ray Data or pyarrow's `to_pylist` yield them)."""
        graphs = [MolGraph.from_row(r).to_pyg() for r in rows]
        vectors = {
            m: torch.tensor(np.stack([np.asarray(r[emb_column(m)], dtype=np.float32) for r in rows]))
            if rows
            else torch.zeros(0)
            for m in modalities
        }
        masks = {m: torch.tensor([bool(r[mask_column(m)]) for r in rows], dtype=torch.bool) for m in modalities}
        return cls(graphs, vectors, masks)

    @classmethod
    def from_table(cls, table: pa.Table, modalities: Sequence[str]) -> PairedExamples:
        return cls.from_rows(table.to_pylist(), modalities)

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[Batch, dict[str, torch.Tensor]]:
        """Collate examples into a PyG `Batch` and the model's modality inputs (with masks)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        batch = Batch.from_data_list([self.graphs[i] for i in idx.tolist()])
        inputs: dict[str, torch.Tensor] = {}
        for m, v in self.vectors.items():
            inputs[m] = v[idx]
            inputs[f"{m}__mask"] = self.masks[m][idx]
        return batch, inputs

    def epoch_batches(
        self, batch_size: int, epoch: int, seed: int, drop_last: bool = True, start_step: int = 0
    ) -> list[np.ndarray]:
        """Index batches of one epoch: a permutation seeded by (seed, epoch), so a resumed run
        sees exactly the same order and can skip the `start_step` batches it already used."""
        order = np.random.default_rng([seed, epoch]).permutation(len(self))
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        batches = [order[i : i + batch_size] for i in range(0, stop, batch_size)]
        return batches[start_step:]
