"""ECFP: a Morgan count fingerprint as a cheap, deterministic baseline "modality".

There is nothing to learn or download: the "encoder" is the identity on the (optionally
log1p-compressed) count vector, so the fingerprint of this modality is its configuration.
`morgan_counts` is the one place acml-ray computes Morgan fingerprints (the downstream ECFP
baselines use its set bits).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator
from torch import nn

from acml_ray.modalities.base import Modality, molecule_from_smiles


@functools.cache  # a generator per setting: building one costs more than fingerprinting a molecule
def _morgan_generator(radius: int, n_bits: int, chirality: bool) -> Any:
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits, includeChirality=chirality)


def morgan_counts(mol: Chem.Mol, radius: int = 2, n_bits: int = 2048, chirality: bool = False) -> np.ndarray:
    """Morgan (ECFP) count vector of a parsed molecule, ``uint32 [n_bits]``, folded to `n_bits`.

    Bit i of RDKit's Morgan bit vector (same radius, size, chirality) is set exactly where count
    i is non-zero, so ``morgan_counts(mol) > 0`` is ECFP4 as a bit vector.
    """
    return _morgan_generator(int(radius), int(n_bits), bool(chirality)).GetCountFingerprintAsNumPy(mol)


class EcfpModality(Modality):
    """Morgan count fingerprint (ECFP4 by default: radius 2, 2,048 bits) of a SMILES.

    Options: `radius`, `n_bits`, `chirality` (include chirality in atom invariants),
    `log1p` (compress counts with log(1 + c), default True, so one frequent substructure
    does not dominate the vector).
    """

    name = "ecfp"
    input_column = "smiles"

    def __init__(self, radius: int = 2, n_bits: int = 2048, chirality: bool = False, log1p: bool = True) -> None:
        super().__init__()
        if radius < 0 or n_bits < 1:
            raise ValueError(f"need radius >= 0 and n_bits >= 1, got {radius}, {n_bits}")
        self.radius, self.n_bits = int(radius), int(n_bits)
        self.chirality, self.log1p = bool(chirality), bool(log1p)

    @property
    def dim(self) -> int:
        return self.n_bits

    def preprocess_config(self) -> dict[str, Any]:
        return {
            "fingerprint": "morgan-count",
            "radius": self.radius,
            "n_bits": self.n_bits,
            "chirality": self.chirality,
            "log1p": self.log1p,
            "rdkit": Chem.rdBase.rdkitVersion,
        }

    def preprocess_one(self, raw: Any) -> torch.Tensor:
        mol = molecule_from_smiles(self.canonical_input(raw))
        counts = morgan_counts(mol, self.radius, self.n_bits, self.chirality).astype(np.float32)
        return torch.from_numpy(np.log1p(counts) if self.log1p else counts)

    def _build_encoder(self) -> nn.Module:
        return nn.Identity()
