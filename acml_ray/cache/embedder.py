"""Embed raw inputs with a frozen modality encoder, reading and filling the cache.

Only inputs whose (fingerprint, content key) is not cached reach the encoder; duplicates
within a call are encoded once. Inputs the modality cannot preprocess are reported with a
reason (quarantined), never raised, so one bad row never stops a job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from acml_ray.cache.store import EmbeddingCache
from acml_ray.chem.errors import InvalidInputError
from acml_ray.modalities.base import Modality

log = logging.getLogger(__name__)


@dataclass
class EmbedReport:
    """Counts for one `embed` call."""

    rows: int = 0
    cache_hits: int = 0
    encoded: int = 0
    forward_passes: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    corrupt_shards: int = 0  # cache shards that failed their checksum (set aside, rows recomputed)


@dataclass
class EmbedResult:
    vectors: np.ndarray  # float32 [n, dim]; zeros where rejected
    ok: np.ndarray  # bool [n]
    reasons: list[str | None]  # per row: None, or why it was rejected
    report: EmbedReport


class CachedEmbedder:
    """A modality encoder behind its content-addressed cache."""

    def __init__(
        self,
        modality: Modality,
        cache_root: str,
        batch_size: int = 32,
        flush_every: int = 512,
        progress: Callable[[int], None] | None = None,
        filesystem: pafs.FileSystem | None = None,
    ) -> None:
        self.modality = modality
        self.batch_size = batch_size
        self.flush_every = flush_every  # persist progress so a crash loses little work
        self.progress = progress
        self.cache = EmbeddingCache(
            cache_root, modality.name, modality.fingerprint, modality.dim, filesystem=filesystem
        )

    def embed(self, raws: Sequence[Any]) -> EmbedResult:
        """Vectors for `raws` (cached or freshly encoded), with per-row rejection reasons."""
        n = len(raws)
        report = EmbedReport(rows=n)
        corrupt_before = self.cache.stats.shards_corrupt
        reasons: list[str | None] = [None] * n
        keys: list[str | None] = [None] * n
        for i, raw in enumerate(raws):
            try:
                keys[i] = self.modality.content_key(raw)
            except InvalidInputError as exc:
                reasons[i] = exc.reason
        valid = {i: key for i, key in enumerate(keys) if key is not None}
        vectors = np.zeros((n, self.modality.dim), dtype=np.float32)
        cached, found = self.cache.lookup(list(valid.values()))
        missing: dict[str, int] = {}  # key -> first row needing it
        for j, (i, key) in enumerate(valid.items()):
            if found[j]:
                vectors[i] = cached[j]
                report.cache_hits += 1
            else:
                missing.setdefault(key, i)
        computed = self._encode_missing(raws, missing, reasons, report)
        for i, key in valid.items():
            if reasons[i] is None and key in computed:
                vectors[i] = computed[key]
            elif reasons[i] is None and key in missing:
                reasons[i] = reasons[missing[key]]  # a duplicate of a rejected input
        ok = np.array([r is None for r in reasons], dtype=bool)
        report.corrupt_shards = self.cache.stats.shards_corrupt - corrupt_before
        report.rejected = int((~ok).sum())
        for r in reasons:
            if r is not None:
                report.reasons[r] = report.reasons.get(r, 0) + 1
        return EmbedResult(vectors, ok, reasons, report)

    def _encode_missing(
        self,
        raws: Sequence[Any],
        missing: dict[str, int],
        reasons: list[str | None],
        report: EmbedReport,
    ) -> dict[str, np.ndarray]:
        computed: dict[str, np.ndarray] = {}
        pending_keys: list[str] = []
        pending_vecs: list[np.ndarray] = []
        batch_keys: list[str] = []
        batch_tensors: list[torch.Tensor] = []

        def run_batch() -> None:
            if not batch_tensors:
                return
            out = self.modality.encode_tensors(torch.stack(batch_tensors)).float().cpu().numpy()
            report.forward_passes += 1
            report.encoded += len(batch_keys)
            for key, vec in zip(batch_keys, out):
                computed[key] = vec
            pending_keys.extend(batch_keys)
            pending_vecs.extend(out)
            if self.progress is not None:
                self.progress(len(batch_keys))
            batch_keys.clear()
            batch_tensors.clear()

        def flush() -> None:
            if pending_keys:
                self.cache.put(list(pending_keys), np.stack(pending_vecs))
                pending_keys.clear()
                pending_vecs.clear()

        for key, row in missing.items():
            try:
                batch_tensors.append(self.modality.preprocess_one(raws[row]))
                batch_keys.append(key)
            except InvalidInputError as exc:
                reasons[row] = exc.reason
            except Exception as exc:  # a preprocessing crash on odd input quarantines the row
                reasons[row] = f"preprocessing failed: {type(exc).__name__}: {exc}"
            if len(batch_tensors) >= self.batch_size:
                run_batch()
            if len(pending_keys) >= self.flush_every:
                flush()
        run_batch()
        flush()
        return computed
