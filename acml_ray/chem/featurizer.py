"""SMILES -> categorical molecular graph, with the reference ACML molecule filter.

One RDKit parse per molecule yields everything downstream needs: the atom/bond feature
indices (see `features.py`), the canonical isomeric SMILES and the InChIKey (both computed
from the already parsed `Mol`, never by re-parsing). Feature values are read column by column
into one numpy array per table and mapped to vocabulary indices in a few vectorised steps; see
`benchmarks/featurize.py` for the comparison with `torch_geometric.utils.from_smiles`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from rdkit import Chem
from rdkit.rdBase import BlockLogs

from acml_ray.chem.errors import InvalidInputError
from acml_ray.chem.features import (
    ATOM_VOCABS,
    BOND_VOCABS,
    NUM_ATOM_FEATURES,
    NUM_BOND_FEATURES,
)
from acml_ray.chem.guard import DEFAULT_LIMITS, SmilesLimits, parse_smiles
from acml_ray.config import FeaturizerConfig

if TYPE_CHECKING:  # torch_geometric is only needed by `to_pyg`; keep imports of this module light.
    import pyarrow as pa
    from torch_geometric.data import Data

__all__ = [
    "GraphFeaturizer",
    "MolGraph",
    "Rejected",
    "canonical_identity",
    "row_arrow_schema",
]

# Longest input text kept verbatim in a `Rejected` record (rejects can be arbitrary garbage).
_MAX_INPUT_CHARS = 256


class _Lookup:
    """Vectorised value -> vocabulary index for several categorical columns at once.

    Raw RDKit values (ints, bools, enums, which numpy reads as ints) are stacked as rows of one
    int64 array; one pass of numpy ops maps every row to its vocabulary, with values outside a
    vocabulary going to its last ("other") slot. This replaces per-atom Python look-ups.
    """

    def __init__(self, vocabs: Sequence[list]) -> None:
        los, spans, offsets, tables = [], [], [], []
        offset = 0
        for vocab in vocabs:
            values = [int(v) for v in vocab]
            lo, span = min(values), max(values) - min(values) + 1
            table = np.full(span + 1, len(vocab), dtype=np.int64)  # slot `span` = out of range
            for index, value in enumerate(values):
                table[value - lo] = index
            los.append(lo)
            spans.append(span)
            offsets.append(offset)
            tables.append(table)
            offset += span + 1
        self._lo = np.array(los, dtype=np.int64)[:, None]
        self._span = np.array(spans, dtype=np.int64)[:, None]
        self._offset = np.array(offsets, dtype=np.int64)[:, None]
        self._table = np.concatenate(tables)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Map raw values [num_columns, n] to indices, returned as [n, num_columns] (C order)."""
        shifted = raw - self._lo
        # A value outside its vocabulary's range goes to the table's last slot ("other").
        shifted = np.where((shifted < 0) | (shifted > self._span), self._span, shifted)
        return np.ascontiguousarray(self._table[shifted + self._offset].T)


_ATOM_LOOKUP = _Lookup(list(ATOM_VOCABS.values()))
_BOND_LOOKUP = _Lookup(list(BOND_VOCABS.values()))
assert list(ATOM_VOCABS) == [
    "atomic_num",
    "chiral_tag",
    "degree",
    "formal_charge",
    "total_hs",
    "hybridization",
    "aromatic",
], "update _graph_arrays when ATOM_VOCABS changes"
assert list(BOND_VOCABS) == ["bond_type", "stereo", "conjugated", "in_ring"], (
    "update _graph_arrays when BOND_VOCABS changes"
)
# Enum getters (chiral tag, bond type, bond stereo) cost ~3x an int getter, and the input text
# often proves their answer: chirality needs "@" and double-bond stereo "/" or "\\" in a SMILES
# (CXSMILES "|...|" extensions can also set both). Without those marks every tag is
# "unspecified". Likewise the only bond types a SMILES can give that GetBondTypeAsDouble cannot
# tell apart are dative ones ("->", "<-", CXSMILES coordinate bonds); without "<", ">" or "|"
# the cheap float getter decides SINGLE / AROMATIC / DOUBLE / TRIPLE exactly. Kept because it
# was measured (2026-12-01): graph extraction 227 us/molecule with it, 307 without (5k MOSES).
_CHIRAL_MARKS = ("@", "|")
_BOND_STEREO_MARKS = ("/", "\\", "|")
_DATIVE_MARKS = ("<", ">", "|")
# GetBondTypeAsDouble -> raw BondType value (other orders, e.g. quadruple, go to "other" via -1).
_BOND_ORDER_TO_TYPE: dict[float, int] = {
    1.0: int(Chem.BondType.SINGLE),
    1.5: int(Chem.BondType.AROMATIC),
    2.0: int(Chem.BondType.DOUBLE),
    3.0: int(Chem.BondType.TRIPLE),
}
# Molecules are processed in chunks, stage by stage (parse all, then features, then identity):
# running RDKit's parser, our Python loop and the InChI library back to back per molecule keeps
# evicting each other's code and data from the CPU caches.
_CHUNK = 256


@dataclass
class Rejected:
    """An input that did not become a graph, kept so that callers can report and count rejects.

    `input` is a printable, UTF-8 safe rendering of what was given (the text itself for strings,
    `repr` otherwise), truncated to a few hundred characters.
    """

    index: int
    input: str
    reason: str

    @classmethod
    def of(cls, index: int, item: object, reason: str) -> Rejected:
        """A record for any input and reason, both rendered safe to store (see the class doc)."""
        return cls(index, _safe_text(item), _safe_text(reason))


@dataclass(eq=False)  # numpy fields make the generated __eq__ ambiguous; compare arrays explicitly
class MolGraph:
    """One molecule as a categorical graph.

    `x` is int64 [num_atoms, NUM_ATOM_FEATURES] and `edge_attr` int64 [num_edges,
    NUM_BOND_FEATURES], each column an index into the matching vocabulary of `features.py`.
    `edge_index` is int64 [2, num_edges] and holds both directions of every bond: with B bonds,
    column k is bond k as (begin, end) and column B + k the same bond as (end, begin).
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


def _identity(mol: Chem.Mol) -> tuple[str, str]:
    """Canonical isomeric SMILES and InChIKey of an already parsed molecule."""
    inchikey = Chem.MolToInchiKey(mol)
    if not inchikey:  # e.g. dummy atoms (*) or elements InChI does not cover
        raise InvalidInputError("InChI generation failed")
    return Chem.MolToSmiles(mol), inchikey


def canonical_identity(smiles: str, limits: SmilesLimits | None = None) -> tuple[str, str]:
    """(canonical isomeric SMILES, InChIKey) of one SMILES; raises InvalidInputError.

    Parsed by `parse_smiles` within `limits` (default: the guard's `DEFAULT_LIMITS`).
    """
    with BlockLogs():
        return _identity(parse_smiles(smiles, limits or DEFAULT_LIMITS)[1])


def _graph_arrays(mol: Chem.Mol, text: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, edge_index, edge_attr) of a parsed molecule.

    `text` is the SMILES the molecule was parsed from; marks it lacks prove some enum values
    (no stereo, no dative bonds) so those are not read one by one. Pass None to read everything
    (any `Mol`, e.g. one built from a Mol block); the result is the same.
    """
    # GetAtomWithIdx/GetBondWithIdx build the wrappers faster than iterating GetAtoms()/GetBonds().
    n_atoms, n_bonds = mol.GetNumAtoms(), mol.GetNumBonds()
    atoms = list(map(mol.GetAtomWithIdx, range(n_atoms)))
    bonds = list(map(mol.GetBondWithIdx, range(n_bonds)))
    # Column-wise comprehensions and one np.array per table: the fastest way found to pull
    # values out of RDKit; skip the slow enum getters where the text proves the answer. (RDKit's
    # enums are ints: numpy reads both alike.)
    chiral: list[int]
    if text is None or any(mark in text for mark in _CHIRAL_MARKS):
        chiral = [a.GetChiralTag() for a in atoms]
    else:
        chiral = [0] * n_atoms
    raw_atoms = np.array(
        [
            [a.GetAtomicNum() for a in atoms],
            chiral,
            # Degree counts hydrogens too (GetTotalDegree), as in OGB and PyG's from_smiles.
            [a.GetTotalDegree() for a in atoms],
            [a.GetFormalCharge() for a in atoms],
            [a.GetTotalNumHs() for a in atoms],
            [a.GetHybridization() for a in atoms],
            [a.GetIsAromatic() for a in atoms],
        ],
        dtype=np.int64,
    ).reshape(NUM_ATOM_FEATURES, n_atoms)
    x = _ATOM_LOOKUP(raw_atoms)

    begin = [b.GetBeginAtomIdx() for b in bonds]
    end = [b.GetEndAtomIdx() for b in bonds]
    stereo: list[int]
    bond_type: list[int]
    if text is None or any(mark in text for mark in _BOND_STEREO_MARKS):
        stereo = [b.GetStereo() for b in bonds]
    else:
        stereo = [0] * n_bonds
    if text is None or any(mark in text for mark in _DATIVE_MARKS):
        bond_type = [b.GetBondType() for b in bonds]
    else:
        order_to_type = _BOND_ORDER_TO_TYPE.get
        bond_type = [order_to_type(b.GetBondTypeAsDouble(), -1) for b in bonds]
    raw_bonds = np.array(
        [
            bond_type,
            stereo,
            [b.GetIsConjugated() for b in bonds],
            [b.IsInRing() for b in bonds],
        ],
        dtype=np.int64,
    ).reshape(NUM_BOND_FEATURES, n_bonds)
    bond_attr = _BOND_LOOKUP(raw_bonds)
    # Both directions: edge k is bond k as (begin, end), edge n_bonds + k the same bond reversed.
    edge_index = np.array([begin + end, end + begin], dtype=np.int64).reshape(2, 2 * n_bonds)
    edge_attr = np.concatenate((bond_attr, bond_attr))
    return x, edge_index, edge_attr


class GraphFeaturizer:
    """Turns SMILES into `MolGraph`s, applying the reference filter of `FeaturizerConfig`.

    Stateless apart from the configuration, so one instance per Ray worker is enough. RDKit's
    log is blocked while it works: bad SMILES are reported as `Rejected`, not as log spam.
    """

    def __init__(self, config: FeaturizerConfig | None = None) -> None:
        self.config = config if config is not None else FeaturizerConfig()
        # The reference heavy-atom filter is the guard's atom bound: sanitising never changes the
        # heavy atoms, so checking them on the unsanitised parse rejects exactly the same
        # molecules, before sanitisation, ring perception or InChI can cost anything.
        self.limits = SmilesLimits(self.config.max_smiles_chars, self.config.max_heavy_atoms)

    def featurize(self, smiles: str) -> MolGraph:
        """Featurise one SMILES; raises InvalidInputError (a ValueError) with the reason."""
        with BlockLogs():
            text, mol = parse_smiles(smiles, self.limits)
            self._check(mol, text)
            x, edge_index, edge_attr = _graph_arrays(mol, text)
            canonical, inchikey = _identity(mol)
        return MolGraph(x, edge_index, edge_attr, canonical, inchikey)

    def featurize_batch(self, smiles: Sequence[object]) -> list[MolGraph | Rejected]:
        """Featurise many inputs; never raises for any element.

        The result has the input's length and order: a `MolGraph` or a `Rejected` (with the
        element's index and the reason) per element. Non-strings, None and NaN are rejected.
        """
        items = list(smiles)  # pandas Series / numpy arrays: positional, plain Python objects
        out: list[Any] = [None] * len(items)
        with BlockLogs():
            for start in range(0, len(items), _CHUNK):
                self._featurize_chunk(items, start, min(start + _CHUNK, len(items)), out)
        return out

    def _featurize_chunk(self, items: list[object], start: int, stop: int, out: list[Any]) -> None:
        """Fill out[start:stop], one stage at a time over the chunk (see _CHUNK)."""
        parsed: list[tuple[int, str, Chem.Mol]] = []
        for i in range(start, stop):
            try:
                text, mol = parse_smiles(items[i], self.limits)
                self._check(mol, text)
                parsed.append((i, text, mol))
            except Exception as err:  # noqa: BLE001 - one bad item must not sink a batch
                out[i] = _rejected(i, items[i], err)
        featurized: list[tuple[int, Chem.Mol, tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
        for i, text, mol in parsed:
            try:
                featurized.append((i, mol, _graph_arrays(mol, text)))
            except Exception as err:  # noqa: BLE001
                out[i] = _rejected(i, items[i], err)
        for i, mol, (x, edge_index, edge_attr) in featurized:
            try:
                canonical, inchikey = _identity(mol)
                out[i] = MolGraph(x, edge_index, edge_attr, canonical, inchikey)
            except Exception as err:  # noqa: BLE001
                out[i] = _rejected(i, items[i], err)

    def _check(self, mol: Chem.Mol, text: str) -> None:
        """The rest of the reference filter (ACML): too few atoms; then radicals.

        Its other half, too many heavy atoms, is the guard's atom bound (see `__init__`).
        """
        num_atoms = mol.GetNumAtoms()
        if num_atoms < self.config.min_atoms:
            # Phrased like the reference filter, which drops molecules with <= 2 atoms.
            raise InvalidInputError(f"too few atoms: {num_atoms} <= {self.config.min_atoms - 1}")
        # Only bracket atoms ("[C]", "[0C]": no hydrogens unless written) and CXSMILES radical
        # marks can leave unpaired electrons; organic-subset atoms are filled up with hydrogens.
        if not self.config.allow_radicals and ("[" in text or "|" in text):
            for atom in mol.GetAtoms():
                if atom.GetNumRadicalElectrons():
                    raise InvalidInputError(
                        f"radical: {atom.GetNumRadicalElectrons()} unpaired electron(s) on "
                        f"{atom.GetSymbol()} (atom {atom.GetIdx()})"
                    )


def _rejected(index: int, item: object, err: Exception) -> Rejected:
    """A Rejected record; errors other than ours (RDKit, boost) keep their type in the reason."""
    if isinstance(err, InvalidInputError):
        reason = err.reason
    else:
        try:
            reason = f"{type(err).__name__}: {err}"
        except Exception:  # noqa: BLE001 - an unprintable error is still a rejection
            reason = type(err).__name__
    return Rejected.of(index, item, reason)
