"""SMILES -> categorical molecular graph, with the reference ACML molecule filter.

One RDKit parse per molecule yields everything downstream needs: the atom/bond feature
indices (see `features.py`), the canonical isomeric SMILES and the InChIKey (both computed
from the already parsed `Mol`, never by re-parsing). Feature extraction is plain Python over
RDKit getters with dict look-ups and a single `np.array` call per table, which keeps it well
ahead of `torch_geometric.utils.from_smiles` (see `benchmarks/featurize.py`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from rdkit import Chem
from rdkit.rdBase import BlockLogs

from acml_ray.chem.features import (
    ATOM_VOCABS,
    BOND_VOCABS,
    NUM_ATOM_FEATURES,
    NUM_BOND_FEATURES,
)
from acml_ray.config import FeaturizerConfig

if TYPE_CHECKING:  # torch_geometric is only needed by `to_pyg`; keep imports of this module light.
    import pyarrow as pa
    from torch_geometric.data import Data

__all__ = [
    "FeaturizationError",
    "GraphFeaturizer",
    "MolGraph",
    "Rejected",
    "canonical_identity",
    "row_arrow_schema",
]

# Longest input text kept verbatim in a `Rejected` record (rejects can be arbitrary garbage).
_MAX_INPUT_CHARS = 256


def _index_map(vocab: list) -> tuple[dict, int]:
    """Value -> vocabulary index, plus the "other" index (last slot) for unknown values."""
    return {value: i for i, value in enumerate(vocab)}, len(vocab)


# Bound `dict.get` methods and their "other" fallbacks, resolved once: the per-atom loop is the
# hot path, so it must not look anything up by name.
_ATOM_MAPS = [_index_map(v) for v in ATOM_VOCABS.values()]
_BOND_MAPS = [_index_map(v) for v in BOND_VOCABS.values()]
assert list(ATOM_VOCABS) == [
    "atomic_num", "chiral_tag", "degree", "formal_charge", "total_hs", "hybridization", "aromatic"
], "update GraphFeaturizer._atom_features when ATOM_VOCABS changes"
assert list(BOND_VOCABS) == ["bond_type", "stereo", "conjugated", "in_ring"], (
    "update GraphFeaturizer._bond_features when BOND_VOCABS changes"
)


class FeaturizationError(ValueError):
    """A molecule could not be turned into a graph; `reason` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Rejected:
    """An input that did not become a graph, kept so that callers can report and count rejects.

    `input` is a printable, UTF-8 safe rendering of what was given (the text itself for strings,
    `repr` otherwise), truncated to a few hundred characters.
    """

    index: int
    input: str
    reason: str


@dataclass(eq=False)  # numpy fields make the generated __eq__ ambiguous; compare arrays explicitly
class MolGraph:
    """One molecule as a categorical graph.

    `x` is int64 [num_atoms, NUM_ATOM_FEATURES] and `edge_attr` int64 [num_edges,
    NUM_BOND_FEATURES], each column an index into the matching vocabulary of `features.py`.
    `edge_index` is int64 [2, num_edges] and holds both directions of every bond: columns 2k and
    2k + 1 are bond k as (begin, end) and (end, begin).
    """

    x: np.ndarray
    edge_index: np.ndarray
    edge_attr: np.ndarray
    smiles: str
    inchikey: str

    @property
    def num_atoms(self) -> int:
        """Number of graph nodes (heavy atoms plus any hydrogens written explicitly as isotopes)."""
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        """Number of directed edges (twice the number of bonds)."""
        return int(self.edge_index.shape[1])

    def to_pyg(self) -> Data:
        """A `torch_geometric.data.Data` with long tensors plus `smiles` and `inchikey` attributes."""
        import torch
        from torch_geometric.data import Data

        # from_numpy shares memory with the (already int64) arrays: no copy, no per-atom torch ops.
        return Data(
            x=torch.from_numpy(self.x),
            edge_index=torch.from_numpy(self.edge_index),
            edge_attr=torch.from_numpy(self.edge_attr),
            smiles=self.smiles,
            inchikey=self.inchikey,
        )

    def to_row(self) -> dict[str, Any]:
        """A flat, Arrow/Parquet friendly record; `from_row` is its exact inverse.

        Arrays are flattened row-major and narrowed (every vocabulary index fits int8; node
        indices fit int32) so that stored data sets stay small. See `row_arrow_schema`.
        """
        return {
            "num_atoms": self.num_atoms,
            "num_edges": self.num_edges,
            "x": self.x.astype(np.int8).ravel(),
            "edge_index": self.edge_index.astype(np.int32).ravel(),
            "edge_attr": self.edge_attr.astype(np.int8).ravel(),
            "smiles": self.smiles,
            "inchikey": self.inchikey,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> MolGraph:
        """Rebuild a graph from `to_row` output, as lists, numpy arrays or Arrow values."""
        num_atoms = int(row["num_atoms"])
        num_edges = int(row["num_edges"])
        return cls(
            x=_as_int64(row["x"]).reshape(num_atoms, NUM_ATOM_FEATURES),
            edge_index=_as_int64(row["edge_index"]).reshape(2, num_edges),
            edge_attr=_as_int64(row["edge_attr"]).reshape(num_edges, NUM_BOND_FEATURES),
            smiles=str(row["smiles"]),
            inchikey=str(row["inchikey"]),
        )

    def equals(self, other: MolGraph) -> bool:
        """True when both graphs have identical arrays (shape, values) and identity strings."""
        return (
            self.smiles == other.smiles
            and self.inchikey == other.inchikey
            and np.array_equal(self.x, other.x)
            and np.array_equal(self.edge_index, other.edge_index)
            and np.array_equal(self.edge_attr, other.edge_attr)
        )


def _as_int64(value: Any) -> np.ndarray:
    # Ray Data hands back numpy arrays, pyarrow scalars (ListScalar) or plain lists, depending on
    # the path the row took; None stands for an empty list in some Arrow round trips.
    if value is None:
        return np.zeros(0, dtype=np.int64)
    if hasattr(value, "as_py"):
        value = value.as_py()
    return np.asarray(value, dtype=np.int64).ravel()


def row_arrow_schema() -> pa.Schema:
    """The pyarrow schema of `MolGraph.to_row` records (pass it when writing Parquet)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("num_atoms", pa.int32()),
            ("num_edges", pa.int32()),
            ("x", pa.list_(pa.int8())),
            ("edge_index", pa.list_(pa.int32())),
            ("edge_attr", pa.list_(pa.int8())),
            ("smiles", pa.string()),
            ("inchikey", pa.string()),
        ]
    )


def _safe_text(value: object) -> str:
    """A short, UTF-8 encodable rendering of any input (lone surrogates would break Arrow)."""
    try:
        text = value if isinstance(value, str) else repr(value)
    except Exception:  # a hostile __repr__ must not escape featurize_batch
        text = f"<unrepresentable {type(value).__name__}>"
    if len(text) > _MAX_INPUT_CHARS:
        text = text[:_MAX_INPUT_CHARS] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _parse(smiles: object) -> Chem.Mol:
    """Parse one SMILES or raise FeaturizationError with the reason."""
    if not isinstance(smiles, str):
        if isinstance(smiles, float) and math.isnan(smiles):
            raise FeaturizationError("not a string: float (NaN, a missing value)")
        raise FeaturizationError(f"not a string: {type(smiles).__name__}")
    text = smiles.strip()  # RDKit reads a space as "name follows": leading blanks would fail
    if not text:
        raise FeaturizationError("empty input")
    mol = Chem.MolFromSmiles(text)
    if mol is None:
        raise FeaturizationError("unparsable SMILES")
    return mol


def _identity(mol: Chem.Mol) -> tuple[str, str]:
    """Canonical isomeric SMILES and InChIKey of an already parsed molecule."""
    inchikey = Chem.MolToInchiKey(mol)
    if not inchikey:  # e.g. dummy atoms (*) or elements InChI does not cover
        raise FeaturizationError("InChI generation failed")
    return Chem.MolToSmiles(mol), inchikey


def canonical_identity(smiles: str) -> tuple[str, str]:
    """(canonical isomeric SMILES, InChIKey) of one SMILES; raises FeaturizationError."""
    with BlockLogs():
        return _identity(_parse(smiles))


class GraphFeaturizer:
    """Turns SMILES into `MolGraph`s, applying the reference filter of `FeaturizerConfig`.

    Stateless apart from the configuration, so one instance per Ray worker is enough. RDKit's
    log is blocked while it works: bad SMILES are reported as `Rejected`, not as log spam.
    """

    def __init__(self, config: FeaturizerConfig | None = None) -> None:
        self.config = config if config is not None else FeaturizerConfig()

    def featurize(self, smiles: str) -> MolGraph:
        """Featurise one SMILES; raises FeaturizationError (a ValueError) with the reason."""
        with BlockLogs():
            return self._featurize(smiles)

    def featurize_batch(self, smiles: Sequence[object]) -> list[MolGraph | Rejected]:
        """Featurise many inputs; never raises for any element.

        The result has the input's length and order: a `MolGraph` or a `Rejected` (with the
        element's index and the reason) per element. Non-strings, None and NaN are rejected.
        """
        out: list[MolGraph | Rejected] = []
        with BlockLogs():
            for i, item in enumerate(smiles):
                try:
                    out.append(self._featurize(item))
                except FeaturizationError as err:
                    out.append(Rejected(i, _safe_text(item), err.reason))
                except Exception as err:  # RDKit/boost errors: one bad item must not sink a batch
                    reason = f"{type(err).__name__}: {err}"
                    out.append(Rejected(i, _safe_text(item), _safe_text(reason)))
        return out

    def _featurize(self, smiles: object) -> MolGraph:
        mol = _parse(smiles)
        # Reference filter (ACML): drop > max_heavy_atoms heavy atoms and tiny molecules.
        heavy = mol.GetNumHeavyAtoms()
        if heavy > self.config.max_heavy_atoms:
            raise FeaturizationError(
                f"too many heavy atoms: {heavy} > {self.config.max_heavy_atoms}"
            )
        num_atoms = mol.GetNumAtoms()
        if num_atoms < self.config.min_atoms:
            raise FeaturizationError(
                f"too few atoms: {num_atoms} <= {self.config.min_atoms - 1}"
            )
        # Stereo needs no extra pass: MolFromSmiles sanitises and assigns chiral tags and
        # E/Z bond stereo (STEREOE/STEREOZ) from the SMILES; tests pin this down.
        x = self._atom_features(mol)
        edge_index, edge_attr = self._bond_features(mol)
        canonical, inchikey = _identity(mol)
        return MolGraph(x, edge_index, edge_attr, canonical, inchikey)

    @staticmethod
    def _atom_features(mol: Chem.Mol) -> np.ndarray:
        (an, an_o), (ch, ch_o), (dg, dg_o), (fc, fc_o), (hs, hs_o), (hy, hy_o), (ar, ar_o) = (
            _ATOM_MAPS
        )
        an_get, ch_get, dg_get, fc_get = an.get, ch.get, dg.get, fc.get
        hs_get, hy_get, ar_get = hs.get, hy.get, ar.get
        # Degree counts hydrogens too (GetTotalDegree), as in OGB and PyG's from_smiles.
        rows = [
            (
                an_get(a.GetAtomicNum(), an_o),
                ch_get(a.GetChiralTag(), ch_o),
                dg_get(a.GetTotalDegree(), dg_o),
                fc_get(a.GetFormalCharge(), fc_o),
                hs_get(a.GetTotalNumHs(), hs_o),
                hy_get(a.GetHybridization(), hy_o),
                ar_get(a.GetIsAromatic(), ar_o),
            )
            for a in mol.GetAtoms()
        ]
        return np.array(rows, dtype=np.int64).reshape(-1, NUM_ATOM_FEATURES)

    @staticmethod
    def _bond_features(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
        (bt, bt_o), (st, st_o), (cj, cj_o), (rg, rg_o) = _BOND_MAPS
        bt_get, st_get, cj_get, rg_get = bt.get, st.get, cj.get, rg.get
        ends: list[int] = []
        attrs: list[tuple[int, int, int, int]] = []
        for b in mol.GetBonds():
            i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
            e = (
                bt_get(b.GetBondType(), bt_o),
                st_get(b.GetStereo(), st_o),
                cj_get(b.GetIsConjugated(), cj_o),
                rg_get(b.IsInRing(), rg_o),
            )
            ends += (i, j, j, i)
            attrs += (e, e)
        # ends is [i0, j0, j0, i0, i1, ...]: pairs of (src, dst); transpose once to [2, E].
        edge_index = np.array(ends, dtype=np.int64).reshape(-1, 2).T.copy()
        edge_attr = np.array(attrs, dtype=np.int64).reshape(-1, NUM_BOND_FEATURES)
        return edge_index, edge_attr
