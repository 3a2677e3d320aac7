"""GraphFeaturizer: stereo, identity, the reference filter, row round trips, garbage input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rdkit import Chem

from acml_ray.chem import GraphFeaturizer, InvalidInputError, MolGraph, Rejected, canonical_identity
from acml_ray.chem.features import (
    ATOM_VOCABS,
    BOND_STEREOS,
    BOND_VOCABS,
    CHIRAL_TAGS,
    NUM_ATOM_FEATURES,
    NUM_BOND_FEATURES,
)
from acml_ray.chem.featurizer import _graph_arrays, row_arrow_schema
from acml_ray.config import FeaturizerConfig

CHIRAL_COL = list(ATOM_VOCABS).index("chiral_tag")
STEREO_COL = list(BOND_VOCABS).index("stereo")
# 51 heavy atoms: one over the reference limit.
C51 = "C" * 51


@pytest.fixture(scope="module")
def featurizer() -> GraphFeaturizer:
    return GraphFeaturizer()


def test_chirality_distinguishes_enantiomers(featurizer: GraphFeaturizer) -> None:
    l_ala = featurizer.featurize("C[C@@H](N)C(=O)O")
    d_ala = featurizer.featurize("C[C@H](N)C(=O)O")
    assert l_ala.x.shape == d_ala.x.shape
    assert l_ala.inchikey != d_ala.inchikey
    assert l_ala.smiles != d_ala.smiles
    # Only the chirality column differs.
    differing_cols = np.nonzero((l_ala.x != d_ala.x).any(axis=0))[0].tolist()
    assert differing_cols == [CHIRAL_COL]
    tags = {CHIRAL_TAGS[i] for i in l_ala.x[:, CHIRAL_COL] if i < len(CHIRAL_TAGS)}
    assert Chem.ChiralType.CHI_TETRAHEDRAL_CW in tags or Chem.ChiralType.CHI_TETRAHEDRAL_CCW in tags


def test_cis_trans_distinguished(featurizer: GraphFeaturizer) -> None:
    trans = featurizer.featurize("C/C=C/C")
    cis = featurizer.featurize("C/C=C\\C")
    assert np.array_equal(trans.x, cis.x)
    assert np.array_equal(trans.edge_index, cis.edge_index)
    trans_stereo = {BOND_STEREOS[i] for i in trans.edge_attr[:, STEREO_COL]}
    cis_stereo = {BOND_STEREOS[i] for i in cis.edge_attr[:, STEREO_COL]}
    assert Chem.BondStereo.STEREOE in trans_stereo and Chem.BondStereo.STEREOZ not in trans_stereo
    assert Chem.BondStereo.STEREOZ in cis_stereo and Chem.BondStereo.STEREOE not in cis_stereo
    assert trans.inchikey != cis.inchikey


def test_canonical_identity(featurizer: GraphFeaturizer) -> None:
    a, b = featurizer.featurize("OCC"), featurizer.featurize("CCO")
    assert a.smiles == b.smiles == "CCO"
    assert a.inchikey == b.inchikey == "LFQSCWFLJHTTHZ-UHFFFAOYSA-N"
    assert canonical_identity("OCC") == ("CCO", "LFQSCWFLJHTTHZ-UHFFFAOYSA-N")
    # Kekulé and aromatic benzene are the same molecule.
    assert featurizer.featurize("C1=CC=CC=C1").smiles == featurizer.featurize("c1ccccc1").smiles
    with pytest.raises(InvalidInputError):
        canonical_identity("not a smiles")


def test_reference_filter(featurizer: GraphFeaturizer) -> None:
    results = featurizer.featurize_batch([C51, "C" * 50, "C", "CC", "CCC"])
    assert isinstance(results[0], Rejected) and results[0].reason == "too many heavy atoms: 51 > 50"
    assert isinstance(results[1], MolGraph) and results[1].num_atoms == 50
    assert isinstance(results[2], Rejected) and results[2].reason.startswith("too few atoms: 1")
    assert isinstance(results[3], Rejected) and results[3].reason == "too few atoms: 2 <= 2"
    assert isinstance(results[4], MolGraph)
    with pytest.raises(InvalidInputError, match="too many heavy atoms") as err:
        featurizer.featurize(C51)
    assert err.value.reason == "too many heavy atoms: 51 > 50"
    assert isinstance(err.value, ValueError)


def test_filter_boundaries_configurable() -> None:
    loose = GraphFeaturizer(FeaturizerConfig(max_heavy_atoms=60, min_atoms=1))
    assert isinstance(loose.featurize(C51), MolGraph)
    assert loose.featurize("CC").num_atoms == 2
    strict = GraphFeaturizer(FeaturizerConfig(max_heavy_atoms=5, min_atoms=4))
    out = strict.featurize_batch(["CCCCCC", "CCC", "CCCC", "CCCCC"])
    assert [type(r).__name__ for r in out] == ["Rejected", "Rejected", "MolGraph", "MolGraph"]
    assert out[0].reason == "too many heavy atoms: 6 > 5"
    assert out[1].reason == "too few atoms: 3 <= 3"


def test_shapes_and_both_directions(featurizer: GraphFeaturizer) -> None:
    g = featurizer.featurize("CC(=O)Oc1ccccc1C(=O)O")  # aspirin: 13 atoms, 13 bonds
    assert g.num_atoms == 13 and g.num_edges == 26
    assert g.x.shape == (13, NUM_ATOM_FEATURES) and g.x.dtype == np.int64
    assert g.edge_index.shape == (2, 26) and g.edge_index.dtype == np.int64
    assert g.edge_attr.shape == (26, NUM_BOND_FEATURES) and g.edge_attr.dtype == np.int64
    pairs = {tuple(p) for p in g.edge_index.T.tolist()}
    assert len(pairs) == 26
    assert all((j, i) in pairs for i, j in pairs)
    assert not any(i == j for i, j in pairs)
    # The two directions of a bond carry the same attributes.
    attr = {tuple(p): tuple(a) for p, a in zip(g.edge_index.T.tolist(), g.edge_attr.tolist())}
    assert all(attr[(i, j)] == attr[(j, i)] for i, j in pairs)
    # Indices stay inside their vocabularies (last slot = "other").
    for col, vocab in enumerate(ATOM_VOCABS.values()):
        assert 0 <= g.x[:, col].min() and g.x[:, col].max() <= len(vocab)


def test_to_pyg(featurizer: GraphFeaturizer) -> None:
    g = featurizer.featurize("c1ccncc1")
    data = g.to_pyg()
    assert data.x.dtype == data.edge_index.dtype == data.edge_attr.dtype == torch.long
    assert tuple(data.x.shape) == (6, NUM_ATOM_FEATURES)
    assert tuple(data.edge_index.shape) == (2, 12)
    assert tuple(data.edge_attr.shape) == (12, NUM_BOND_FEATURES)
    assert data.num_nodes == 6
    assert data.smiles == g.smiles == "c1ccncc1"
    assert data.inchikey == g.inchikey
    assert torch.equal(data.x, torch.from_numpy(g.x))


def test_row_round_trip(featurizer: GraphFeaturizer) -> None:
    import pyarrow as pa

    g = featurizer.featurize("C[C@@H](N)C(=O)O")
    row = g.to_row()
    assert row["num_atoms"] == g.num_atoms and row["num_edges"] == g.num_edges
    assert row["x"].dtype == np.int8 and row["edge_attr"].dtype == np.int8
    assert row["edge_index"].dtype == np.int32
    assert MolGraph.from_row(row).equals(g)
    # As Ray Data / pyarrow hand rows back: plain lists, or via an Arrow table.
    as_lists = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}
    back = MolGraph.from_row(as_lists)
    assert back.equals(g) and back.x.dtype == np.int64
    table = pa.Table.from_pylist([row], schema=row_arrow_schema())
    assert MolGraph.from_row(table.to_pylist()[0]).equals(g)
    assert MolGraph.from_row({k: table.column(k)[0] for k in table.column_names}).equals(g)


def test_row_round_trip_single_atom() -> None:
    g = GraphFeaturizer(FeaturizerConfig(min_atoms=1)).featurize("O")
    assert g.num_atoms == 1 and g.edge_index.shape == (2, 0) and g.edge_attr.shape == (0, 4)
    assert MolGraph.from_row(g.to_row()).equals(g)


def test_mixed_garbage_batch(featurizer: GraphFeaturizer) -> None:
    inputs = [None, 3, "", "C1CC", "xyz", float("nan"), "CCO", b"CCO", "  c1ccccc1  "]
    out = featurizer.featurize_batch(inputs)
    assert len(out) == len(inputs)
    for i, r in enumerate(out):
        if isinstance(r, Rejected):
            assert r.index == i and r.reason
    kinds = [type(r).__name__ for r in out]
    assert kinds == ["Rejected"] * 6 + ["MolGraph", "Rejected", "MolGraph"]
    assert out[0].reason == "not a string: NoneType" and out[0].input == "None"
    assert out[1].reason == "not a string: int"
    assert out[2].reason == "empty input"
    assert out[3].reason == "unparsable SMILES" and out[3].input == "C1CC"
    assert out[4].reason == "unparsable SMILES"
    assert out[5].reason.startswith("not a string: float")
    assert out[6].smiles == "CCO"
    assert out[7].reason == "not a string: bytes"
    assert out[8].smiles == "c1ccccc1"


def test_batch_accepts_numpy_and_long_inputs(featurizer: GraphFeaturizer) -> None:
    out = featurizer.featurize_batch(np.array(["CCO", "C" * 600], dtype=object))
    assert isinstance(out[0], MolGraph)
    assert isinstance(out[1], Rejected) and len(out[1].input) < 300
    assert featurizer.featurize_batch([]) == []


SMILES_ALPHABET = "CNOSPFIBrcnos()[]=#@+-123456789%/\\.Hl*:$~ "


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.text(alphabet=SMILES_ALPHABET, max_size=40),
            st.none(),
            st.integers(),
            st.floats(allow_nan=True),
        ),
        max_size=8,
    )
)
def test_batch_never_raises(items: list[object]) -> None:
    out = GraphFeaturizer().featurize_batch(items)
    assert len(out) == len(items)
    for i, r in enumerate(out):
        assert isinstance(r, (MolGraph, Rejected))
        if isinstance(r, Rejected):
            assert r.index == i and r.reason
            r.input.encode("utf-8")  # safe to store
        else:
            assert r.edge_index.size == 0 or r.edge_index.max() < r.num_atoms


@pytest.fixture(scope="module")
def drug_smiles() -> list[str]:
    from acml_ray.data.sources import load_source

    return load_source("chembl_approved_drugs", limit=500, seed=0)["smiles"].tolist()


def test_real_drugs(featurizer: GraphFeaturizer, drug_smiles: list[str]) -> None:
    out = featurizer.featurize_batch(drug_smiles)
    graphs = [r for r in out if isinstance(r, MolGraph)]
    assert len(graphs) >= 0.9 * len(drug_smiles)
    for g in graphs:
        assert g.num_atoms >= 3
        assert g.edge_index.size == 0 or (0 <= g.edge_index.min() and g.edge_index.max() < g.num_atoms)
        assert g.edge_attr.shape[0] == g.edge_index.shape[1]
        assert len(g.inchikey) == 27
    for r in out:
        if isinstance(r, Rejected):
            assert r.reason.startswith(("too many heavy atoms", "too few atoms", "InChI"))


def test_text_shortcuts_match_full_read(drug_smiles: list[str]) -> None:
    """Skipping enum getters when the SMILES text proves the value never changes the graph."""
    extra = ["N->[Pt+2]<-N", "C=C", "F/C=C/F", "C[C@H](F)Cl", "CC=CC |c:1|", "C#N", "c1ccccc1"]
    for smiles in drug_smiles + extra:
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            continue
        fast, full = _graph_arrays(mol, smiles), _graph_arrays(mol, None)
        assert all(np.array_equal(a, b) for a, b in zip(fast, full)), smiles


def _vocab_index(vocab: list, value: object) -> int:
    """The index of `value` in `vocab`, or the vocabulary's last ("other") slot."""
    values = [int(v) for v in vocab]
    return values.index(int(value)) if int(value) in values else len(vocab)


def test_feature_columns_are_rdkit_values_as_vocabulary_indices(drug_smiles: list[str]) -> None:
    """Every column of x / edge_attr is the RDKit value's index in its vocabulary, "other" (the
    last slot) outside it, on real drugs and on inputs with stereo, dative bonds, CXSMILES,
    charges, isotopes and elements beyond the vocabularies' common values."""
    extra = ["N->[Pt+2]<-N", "F/C=C/F", "C[C@H](F)Cl", "CC=CC |c:1|", "C#N", "[2H]C([2H])Cl", "C[N+](C)(C)C", "F[Xe]F"]
    atom_values = {
        "atomic_num": Chem.Atom.GetAtomicNum,
        "chiral_tag": Chem.Atom.GetChiralTag,
        "degree": Chem.Atom.GetTotalDegree,
        "formal_charge": Chem.Atom.GetFormalCharge,
        "total_hs": Chem.Atom.GetTotalNumHs,
        "hybridization": Chem.Atom.GetHybridization,
        "aromatic": Chem.Atom.GetIsAromatic,
    }
    bond_values = {
        "bond_type": Chem.Bond.GetBondType,
        "stereo": Chem.Bond.GetStereo,
        "conjugated": Chem.Bond.GetIsConjugated,
        "in_ring": Chem.Bond.IsInRing,
    }
    seen_other = set()
    for smiles in drug_smiles + extra:
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            continue
        x, edge_index, edge_attr = _graph_arrays(mol)
        assert x.dtype == edge_attr.dtype == edge_index.dtype == np.int64
        for table, items, vocabs, values in (
            (x, mol.GetAtoms(), ATOM_VOCABS, atom_values),
            (edge_attr, mol.GetBonds(), BOND_VOCABS, bond_values),
        ):
            for item in items:
                for col, (name, vocab) in enumerate(vocabs.items()):
                    expected = _vocab_index(vocab, values[name](item))
                    assert table[item.GetIdx(), col] == expected, (smiles, name)
                    if expected == len(vocab):
                        seen_other.add(name)
    assert "bond_type" in seen_other  # dative bonds: the "other" slot was exercised
