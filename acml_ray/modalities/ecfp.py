"""ECFP: a Morgan count fingerprint as a cheap, deterministic baseline "modality".

There is nothing to learn or download: the "encoder" is the identity on the (optionally
log1p-compressed) count vector, so the fingerprint of this modality is its configuration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator
from torch import nn

from acml_ray.modalities.base import Modality, molecule_from_smiles


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
        self._generator = rdFingerprintGenerator.GetMorganGenerator(
            radius=self.radius, fpSize=self.n_bits, includeChirality=self.chirality
        )

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
        counts = self._generator.GetCountFingerprintAsNumPy(mol).astype(np.float32)
        return torch.from_numpy(np.log1p(counts) if self.log1p else counts)

    def _build_encoder(self) -> nn.Module:
        return nn.Identity()
