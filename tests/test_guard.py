"""Bounded parsing (acml_ray.chem.guard): pathological SMILES are rejected in milliseconds, with a
reason, by the featuriser, every SMILES-reading modality and `canonical_identity` alike."""

from __future__ import annotations

import time

import numpy as np
import pytest
from rdkit import Chem

from acml_ray.chem import (
    GraphFeaturizer,
    InvalidInputError,
    MolGraph,
    Rejected,
    canonical_identity,
    reason_counts,
    reason_kind,
)
from acml_ray.chem.featurizer import _graph_arrays
from acml_ray.chem.guard import SmilesLimits, parse_smiles
from acml_ray.config import FeaturizerConfig
from acml_ray.modalities import build_modality


def grid_smiles(rows: int, cols: int) -> str:
    """A rows x cols grid graph of carbons: row chains joined by ring closures down each column."""

    def atom(i: int, j: int) -> str:
        label = f"%({j + 1})"
        return "C" + (label if i > 0 else "") + (label if i < rows - 1 else "")

    return ".".join("".join(atom(i, j) for j in range(cols)) for i in range(rows))


# The inputs that segfaulted, ran for minutes or grew to 22 GB before the guard (issue 12).
HOSTILE = {
    "100k-atom ring": "C1" + "C" * 99996 + "C1",
    "100k aromatic carbons": "c" * 100000,
    "100k dummy atoms": "*" * 100000,
    "11k benzenes": "c1ccccc1." * 11000,
    "60x100 grid": grid_smiles(60, 100),
}


def test_grid_helper_is_a_grid() -> None:
    mol = Chem.MolFromSmiles(grid_smiles(3, 4))
    assert mol.GetNumAtoms() == 12 and mol.GetNumBonds() == 3 * 3 + 2 * 4


# Times are CPU time of this thread (wall time on a shared machine also counts other jobs' turns).
@pytest.mark.parametrize("name", list(HOSTILE))
def test_pathological_inputs_rejected_in_milliseconds(name: str) -> None:
    smiles = HOSTILE[name]
    # Default limits: the length cap answers before any parsing.
    start = time.thread_time()
    (result,) = GraphFeaturizer().featurize_batch([smiles])
    assert time.thread_time() - start < 0.05
    assert isinstance(result, Rejected) and result.reason == f"too long: {len(smiles)} characters > 2000"
    # Without the length cap, the atom count on the unsanitised parse answers (linear time),
    # before sanitisation or ring perception could segfault or eat memory.
    loose = GraphFeaturizer(FeaturizerConfig(max_smiles_chars=10**6))
    start = time.thread_time()
    (result,) = loose.featurize_batch([smiles])
    assert time.thread_time() - start < 1.0, name
    assert isinstance(result, Rejected)
    if name == "11k benzenes":  # the trailing "." makes it unparsable before any count
        assert result.reason == "unparsable SMILES"
    else:
        assert result.reason.startswith("too many heavy atoms: "), result.reason
    if name == "100k dummy atoms":
        assert result.reason == "too many heavy atoms: 100000 > 50 (100000 dummy atoms * included)"


def test_atom_bound_is_the_heavy_atom_filter() -> None:
    # Explicit hydrogens do not count (sanitisation removes them); heavy and dummy atoms do.
    limits = SmilesLimits(max_chars=2000, max_atoms=3)
    assert parse_smiles("[H]C([H])([H])C([H])([H])O[H]", limits)[1].GetNumAtoms() == 3
    with pytest.raises(InvalidInputError, match=r"too many heavy atoms: 4 > 3 \(1 dummy atoms"):
        parse_smiles("*CCO", limits)
    assert GraphFeaturizer().featurize_batch(["C" * 51])[0].reason == "too many heavy atoms: 51 > 50"
    # A dummy atom under the bound still never becomes a graph: InChI has no dummy atoms.
    assert GraphFeaturizer().featurize_batch(["*CCO"])[0].reason == "InChI generation failed"


def test_guarded_parse_is_exactly_rdkits_parse(chembl_drugs) -> None:
    """Parse unsanitised, count, then sanitise: the same molecules as Chem.MolFromSmiles."""
    from acml_ray.data.sources import package_dir

    nci = (package_dir("rdkit") / "Data" / "NCI" / "first_5K.smi").read_text().splitlines()[:1500]
    odd = [
        "[H][C@@](C)(N)O",
        "[2H]C([2H])([2H])O",
        "F/C=C/F",
        "C[C@H](F)Cl",
        "CC=CC |c:1|",
        "N->[Pt+2]<-N",
        "c1ccccc1",
        "[Na+].[Cl-]",
        "C1CC1",
        "O=C1C=CC(=O)C=C1",
    ]
    smiles = chembl_drugs["smiles"].dropna().tolist()[:1500] + [line.split("\t")[0] for line in nci] + odd
    for s in smiles:
        expected = Chem.MolFromSmiles(s)
        try:
            got = parse_smiles(s, SmilesLimits(max_chars=10**4, max_atoms=10**4))[1]
        except InvalidInputError:
            assert expected is None, s
            continue
        assert expected is not None, s
        assert Chem.MolToSmiles(got) == Chem.MolToSmiles(expected), s
        assert all(np.array_equal(a, b) for a, b in zip(_graph_arrays(got), _graph_arrays(expected))), s


def test_text_rules_strip_ends_reject_control_and_inner_non_ascii() -> None:
    featurizer = GraphFeaturizer()
    # Accepted oddity, by a written rule: a BOM or zero-width space at either end is stripped
    # like a blank (RDKit drops them too), so the molecule is ethanol.
    for text in ("\ufeffCCO", "\u200bCCO", "CCO\u200b", " \ufeff CCO\t"):
        assert featurizer.featurize(text).smiles == "CCO"
    out = featurizer.featurize_batch(["C\x00CO", "CCO\x00", "C\u200bCO", "CéC", "CCO éthanol"])
    # A NUL would end RDKit's C string ("C\x00CO" would read as methane): rejected, with the
    # reason CSV rows with NUL bytes get.
    assert out[0].reason == "invalid text encoding: control character U+0000 at position 1"
    assert out[1].reason.startswith("invalid text encoding: control character U+0000")
    assert out[2].reason == "not SMILES: non-ASCII character U+200B (zero width space) at position 1"
    assert out[3].reason.startswith("not SMILES: non-ASCII character U+00E9")
    assert isinstance(out[4], MolGraph) and out[4].smiles == "CCO"  # a name after the SMILES may be any text


def test_radicals_rejected_unless_allowed() -> None:
    # Decision: "[0C]CC" reads as isotope 0 (= none) on a bracket carbon without hydrogens, i.e.
    # the radical [C]CC. In SMILES data such radicals are nearly always lost hydrogens, so they
    # are quarantined with a reason; featurizer.allow_radicals keeps them.
    out = GraphFeaturizer().featurize_batch(["[0C]CC", "[C]CC", "[0CH3]CC", "C[N+](C)(C)C"])
    assert out[0].reason == "radical: 3 unpaired electron(s) on C (atom 0)"
    assert out[1].reason == out[0].reason
    assert isinstance(out[2], MolGraph) and out[2].smiles == "CCC"  # isotope 0 with its H: propane
    assert isinstance(out[3], MolGraph)
    kept = GraphFeaturizer(FeaturizerConfig(allow_radicals=True)).featurize("[0C]CC")
    assert kept.smiles == "[C]CC"


def test_length_cap_is_configurable() -> None:
    assert GraphFeaturizer(FeaturizerConfig(max_smiles_chars=5)).featurize_batch(["CCCCCC"])[0].reason == (
        "too long: 6 characters > 5"
    )
    assert canonical_identity("OCC") == ("CCO", "LFQSCWFLJHTTHZ-UHFFFAOYSA-N")
    with pytest.raises(InvalidInputError, match="too long"):
        canonical_identity("C" * 3000)


@pytest.mark.parametrize("name", ["ecfp", "smiles"])
def test_modalities_parse_through_the_guard(name: str) -> None:
    modality = build_modality(name)
    for smiles in HOSTILE.values():
        start = time.thread_time()
        with pytest.raises(InvalidInputError, match="too long"):
            modality.preprocess_one(smiles)
        assert time.thread_time() - start < 0.05
    with pytest.raises(InvalidInputError, match="invalid text encoding"):
        modality.preprocess_one("C\x00C")


def test_image_modality_parses_through_the_guard() -> None:
    modality = build_modality("image", {"image_size": 32})
    with pytest.raises(InvalidInputError, match="too long"):
        modality.render(HOSTILE["100k-atom ring"])
    with pytest.raises(InvalidInputError, match="too many heavy atoms: 600 > 500"):
        modality.render("C" * 600)
    assert modality.render("CCO").shape == (32, 32, 3)


def test_rejections_are_counted_by_the_fixed_phrase_of_their_reason() -> None:
    """Every report (embed, evaluate, index build) groups quarantined rows by one rule: the
    reason's fixed phrase, whatever detail (sizes, positions, keys, row numbers) follows it."""
    inputs = ["not a smiles", "C1CC", "[U]", "C" * 60, "[Na+].[Cl-]", "CC\x01C", "CCO", "c1ccccc1O"]
    rejected = [r for r in GraphFeaturizer().featurize_batch(inputs) if isinstance(r, Rejected)]
    assert reason_counts([r.reason for r in rejected]) == {
        "too few atoms": 2,  # "1 <= 2" and "2 <= 2": one kind
        "unparsable SMILES": 2,
        "too many heavy atoms": 1,
        "invalid text encoding": 1,
    }
    assert list(reason_counts(["b", "a: 1", "a: 2"])) == ["a", "b"]  # most frequent first
    assert reason_kind("duplicate InChIKey LFQSCWFLJHTTHZ-UHFFFAOYSA-N (row 3)") == "duplicate InChIKey"
    assert reason_kind("duplicate InChIKey LFQSCWFLJHTTHZ-UHFFFAOYSA-N") == "duplicate InChIKey"
