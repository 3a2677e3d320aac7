"""The modality interface: a frozen, pretrained encoder of one chemical modality.

A modality turns a raw input (a SMILES string for text and depictions, a spectrum for NMR or
MS) into a fixed-size vector with a deterministic preprocessing step and a frozen encoder.
Its `fingerprint` hashes the encoder weights and the preprocessing config, and `content_key`
hashes the raw input after canonicalisation; together they address the embedding cache, so a
vector is never computed twice by the same encoder and never reused by a different one.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from rdkit import Chem
from rdkit.rdBase import BlockLogs
from torch import nn

from acml_ray.chem.errors import InvalidInputError
from acml_ray.chem.guard import parse_smiles


def molecule_from_smiles(smiles: Any) -> Chem.Mol:
    """The molecule of a SMILES input, parsed within the guard's bounds (`acml_ray.chem.guard`).

    Every SMILES-reading modality parses through here, so a pathological string is rejected in
    milliseconds, as the featuriser rejects it, never handed to depiction or fingerprinting.
    Raises `InvalidInputError` with the guard's reason.
    """
    with BlockLogs():
        return parse_smiles(smiles)[1]


def hash_module_weights(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes), in key order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Modality(ABC):
    """Base class of every frozen modality encoder.

    Subclasses set `name`, `input_column` (the column of the molecule table holding the raw
    input) and implement `preprocess_one`, `_build_encoder`, `preprocess_config` and `dim`.
    """

    name: str = ""
    input_column: str = "smiles"

    def __init__(self) -> None:
        self._encoder: nn.Module | None = None
        self._fingerprint: str | None = None

    # -- what subclasses provide -------------------------------------------------------
    @property
    @abstractmethod
    def dim(self) -> int:
        """Size of the embedding vector."""

    @abstractmethod
    def preprocess_config(self) -> dict[str, Any]:
        """Every setting that changes the preprocessed tensor (goes into the fingerprint)."""

    @abstractmethod
    def preprocess_one(self, raw: Any) -> torch.Tensor:
        """Deterministically turn one raw input into the encoder's input tensor.

        Raises `InvalidInputError` with a reason for inputs it cannot handle.
        """

    @abstractmethod
    def _build_encoder(self) -> nn.Module:
        """Construct the pretrained encoder (called once, lazily)."""

    def canonical_input(self, raw: Any) -> str:
        """Canonical text form of a raw input; equal inputs give equal strings.

        The default suits SMILES columns that the featuriser already canonicalised.
        """
        if not isinstance(raw, str) or not raw:
            raise InvalidInputError(f"expected a non-empty string, got {type(raw).__name__}")
        return raw

    # -- shared machinery ---------------------------------------------------------------
    @property
    def encoder(self) -> nn.Module:
        """The frozen encoder: no gradients, always in eval mode."""
        if self._encoder is None:
            module = self._build_encoder()
            module.requires_grad_(False)
            module.eval()
            self._encoder = module
        return self._encoder

    @property
    def fingerprint(self) -> str:
        """Hash of encoder weights + preprocessing config (+ the class that interprets them)."""
        if self._fingerprint is None:
            config = json.dumps(
                {
                    "class": f"{type(self).__module__}.{type(self).__qualname__}",
                    "preprocess": self.preprocess_config(),
                    "dim": self.dim,
                },
                sort_keys=True,
                default=str,
            )
            digest = hashlib.sha256(config.encode())
            digest.update(hash_module_weights(self.encoder).encode())
            self._fingerprint = digest.hexdigest()[:32]
        return self._fingerprint

    def content_key(self, raw: Any) -> str:
        """Content hash of the canonical input (the preprocessing is in the fingerprint)."""
        return hashlib.sha256(self.canonical_input(raw).encode()).hexdigest()[:32]

    def to(self, device: str | torch.device) -> Modality:
        """Move the frozen encoder (e.g. onto an embedding actor's GPU); inputs follow it."""
        self._device = torch.device(device)
        self.encoder.to(self._device)
        return self

    @torch.no_grad()
    def encode_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the frozen encoder on an already preprocessed batch (on the encoder's device)."""
        encoder = self.encoder
        encoder.eval()  # defend against a caller that flipped the shared module to train()
        device = getattr(self, "_device", None)  # set by `to`; subclasses need not know
        return encoder(batch if device is None else batch.to(device))

    def encode(self, raws: Sequence[Any]) -> np.ndarray:
        """Preprocess and encode a batch of raw inputs -> float32 [len(raws), dim].

        Raises `InvalidInputError` if any input is bad; use `preprocess_one` per row first
        when some rows may fail (the embedding pipeline does).
        """
        if len(raws) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.stack([self.preprocess_one(r) for r in raws])
        return self.encode_tensors(batch).float().cpu().numpy()
