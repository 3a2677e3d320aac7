"""ECFP is computed in one place (`acml_ray.modalities.ecfp.morgan_counts`): the downstream
baselines' bit vectors are exactly RDKit's Morgan bit vectors, and the ECFP modality's counts are
RDKit's Morgan counts, on real drugs."""

from __future__ import annotations

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from acml_ray.evaluate.baselines import ecfp
from acml_ray.modalities import build_modality
from acml_ray.modalities.ecfp import morgan_counts


def _drugs(chembl_drugs, n: int = 300) -> list[str]:
    smiles = chembl_drugs["smiles"].dropna().astype(str).tolist()[:n]
    return [s for s in smiles if Chem.MolFromSmiles(s) is not None]


def test_downstream_ecfp_bits_are_rdkits_morgan_bit_vectors(chembl_drugs) -> None:
    smiles = _drugs(chembl_drugs)
    assert len(smiles) > 250
    for n_bits in (2048, 1024):
        generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=n_bits)
        expected = np.stack([generator.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in smiles])
        got = ecfp(smiles, n_bits)
        assert got.dtype == np.uint8 and got.shape == (len(smiles), n_bits)
        assert np.array_equal(got, expected)
        assert expected.sum() > 20 * len(smiles)  # real fingerprints, not empty vectors


def test_set_counts_are_the_bit_vector_with_chirality_too(chembl_drugs) -> None:
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=512, includeChirality=True)
    for s in _drugs(chembl_drugs, 100):
        mol = Chem.MolFromSmiles(s)
        bits = generator.GetFingerprintAsNumPy(mol)
        assert np.array_equal((morgan_counts(mol, 3, 512, chirality=True) > 0).astype(np.uint8), bits), s


def test_ecfp_modality_reads_the_same_counts(chembl_drugs) -> None:
    modality = build_modality("ecfp", {"log1p": False})
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    for s in _drugs(chembl_drugs, 50):
        expected = generator.GetCountFingerprintAsNumPy(Chem.MolFromSmiles(s)).astype(np.float32)
        assert np.array_equal(modality.preprocess_one(s).numpy(), expected), s
