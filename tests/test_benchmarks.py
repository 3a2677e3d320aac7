"""The benchmark scripts' contenders do the work they claim, on real molecules (no timings)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

featurize_bench = pytest.importorskip("benchmarks.featurize")


def test_featurize_contenders_see_the_same_molecules() -> None:
    # 200 real SMILES: ChEMBL approved drugs, some of which the reference filter drops.
    smiles = featurize_bench.load_smiles(20000, seed=0)[:200]
    assert len(smiles) == 200
    _, _, ours_made, ours_rejected = featurize_bench.run_ours(smiles)
    _, _, pyg_made, pyg_failed = featurize_bench.run_pyg(smiles)
    _, _, floor_made, floor_dropped = featurize_bench.run_identity_floor(smiles)
    _, _, key_made, _ = featurize_bench.run_identity_floor(smiles, canonical_smiles=False)
    assert pyg_made + pyg_failed == 200
    assert ours_made + ours_rejected == 200
    assert ours_rejected > 0  # large drugs exceed 50 heavy atoms
    # The floor pays for the identity of exactly the molecules ours keeps.
    assert (floor_made, floor_dropped) == (ours_made, ours_rejected)
    assert key_made == ours_made


image_bench = pytest.importorskip("benchmarks.image_encoder")


def test_image_benchmark_contenders_return_the_same_vectors(depiction_modality) -> None:
    smiles = image_bench.load_smiles(6, seed=0)
    modality = depiction_modality
    images = torch.stack([modality.preprocess_one(s) for s in smiles])
    whole = image_bench.encode(modality.encoder, images, batch_size=5, chunk=0)
    chunked = image_bench.encode(modality.encoder, images, batch_size=5, chunk=2)
    assert whole.shape == (6, 1280)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
