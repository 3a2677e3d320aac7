"""How many IVF lists a query scans by default: measured per index and modality when it is built.

An IVF index's recall at a given ``nprobe`` depends on where the *queries* fall, not only on
the library. Cross-modal queries (a depiction's, a SMILES string's or a spectrum's projection)
sit between the lists that k-means drew around the graph-side vectors, and how far between
depends on the model: at the full MOSES set (1.58 M rows, nlist 4096) nprobe 64 reached
recall@10 0.992 for a 13C model's spectrum queries but 0.928 for an image+SMILES model's SMILES
queries (docs/results.md). No fixed default serves every model, so after every FAISS update the
build encodes real queries of each modality, searches them exhaustively (every list: exact) and
at nprobe 1, 2, 4, ..., and keeps the smallest nprobe whose recall@k against exact search
reaches ``index.target_recall`` for every source of queries (the sources differ: at the full
MOSES set an image+SMILES model's SMILES queries of library rows reached 0.996 at nprobe 64,
those of its held-out molecules, 517 of 709 of them ChEMBL drugs, 0.95). The curves, the
sources and the settings go into the manifest (`AnnEntry.calibration`); `acml search` uses
the chosen nprobe unless told otherwise.

Queries come, per modality, from each of these that has inputs for it:

1. ``index.calibration_table``: the user's own queries (a query table or folder as
   ``acml search --query`` takes; e.g. real 13C spectra with an ``nmr13c`` column);
2. the library itself, for modalities whose input is the structure (SMILES text, depictions):
   rows drawn evenly over the shards, rendered/encoded as in training;
3. the model run's held-out table (``data/val.parquet``): molecules the model never trained on,
   often from outside the library's chemistry, and the only source of spectra and other inputs
   a structure does not give: their cached frozen embeddings (``emb__<modality>``, as
   `acml embed` wrote them) are projected as they are, else the raw input column is encoded.

A modality with none keeps the largest nprobe calibrated for the index's other
modalities (at least ``FALLBACK_NPROBE``), marked uncalibrated with the reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from acml_ray.config import IndexConfig
from acml_ray.modalities import Modality
from acml_ray.search.inputs import embed_queries, model_modality, preprocess_query, project_frozen, read_queries
from acml_ray.search.layout import IndexStore, Manifest

log = logging.getLogger(__name__)

# The previous fixed default; kept for modalities with no queries to measure.
FALLBACK_NPROBE = 64
# Bumped when the way nprobe is chosen changes, so indexes calibrated the old way recalibrate.
METHOD = 3


@dataclass
class QuerySet:
    """Joint-space query vectors of one modality and where their inputs came from."""

    vectors: np.ndarray  # [n, dim] float32, L2-normalised
    source: str
    skipped: int = 0  # inputs that did not preprocess (counted, never silently lost)


def recall_at_k(found_scores: np.ndarray, exact_scores: np.ndarray, k: int) -> float:
    """Mean fraction of each query's exact top-k that a search found, by score.

    A found row counts when its score is at least the exact k-th score (minus float noise), so
    ties at the boundary (stereoisomers share a graph vector when stereo is not featurised) do
    not count as misses merely because another of the tied rows was returned.
    """
    if len(exact_scores) == 0:
        return 1.0
    kth = exact_scores[:, k - 1 : k]
    hits = (found_scores[:, :k] >= kth - 1e-5) & np.isfinite(found_scores[:, :k])
    return float(np.minimum(hits.sum(axis=1), k).mean() / k)


def sweep_nprobe(
    index: Any,
    query_sets: list[np.ndarray],
    nlist: int,
    k: int,
    target: float,
    fixed: int | None = None,
    resolution: int = 8,
) -> tuple[int, list[dict[int, float]]]:
    """(chosen nprobe, one {nprobe: recall@k} curve per query set).

    nprobe doubles from 1 until every set reaches `target`, then bisects between the last miss
    and that hit down to 1/`resolution` of the hit (a power-of-two grid alone would cost up to
    twice the needed scan, e.g. 1024 lists where 640 do). With `fixed`, that nprobe is measured
    (and the doubling up to it, for the record) and returned whatever it reaches.
    """
    import faiss

    def at(vectors: np.ndarray, nprobe: int) -> np.ndarray:
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        return index.search(vectors, k, params=params)[0]

    k = min(k, int(index.ntotal))
    exact = [at(v, nlist) for v in query_sets]  # every list: exhaustive, i.e. exact
    curves: list[dict[int, float]] = [{} for _ in query_sets]

    def reaches(probe: int) -> bool:
        for curve, vectors, truth in zip(curves, query_sets, exact):
            if probe not in curve:
                curve[probe] = recall_at_k(at(vectors, probe), truth, k)
        return min(c[probe] for c in curves) >= target

    if fixed is not None:
        fixed = min(fixed, nlist)
        probe = 1
        while probe < fixed:
            reaches(probe)
            probe *= 2
        reaches(fixed)
        return fixed, [dict(sorted(c.items())) for c in curves]
    lo, hi = 0, 1  # lo: the largest nprobe known to miss (0: none measured)
    while hi < nlist and not reaches(hi):
        lo, hi = hi, min(hi * 2, nlist)
    if hi >= nlist:
        reaches(nlist)  # exhaustive, so it reaches the target; measured for the record
    step = max(1, hi // resolution)
    while lo and hi - lo > step:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    return hi, [dict(sorted(c.items())) for c in curves]


def held_out_rows(count: int, n: int, seed: int) -> np.ndarray:
    """Positions of the held-out rows (of `count` with an input) that calibration uses; a
    benchmark leaves them out to measure recall on queries calibration never saw."""
    return np.random.default_rng(seed).permutation(count)[:n]


class CalibrationQueries:
    """Builds each modality's calibration queries on first use (encoders load only if needed).

    Args:
        store, manifest: the index (its shards give the library sample).
        model, model_cfg: the index's model (its modality projections make the queries).
        cfg: ``index.calibration_queries``, ``index.calibration_table`` and the seed.
        held_out: the model run's held-out table, when known.
    """

    def __init__(
        self,
        store: IndexStore,
        manifest: Manifest,
        model: Any,
        model_cfg: Any,
        cfg: IndexConfig,
        held_out: str | Path | None = None,
    ) -> None:
        self.store, self.manifest, self.model, self.model_cfg, self.cfg = store, manifest, model, model_cfg, cfg
        self.held_out = Path(held_out) if held_out is not None and Path(held_out).is_file() else None
        self._held_out_names = set(pq.read_schema(self.held_out).names) if self.held_out is not None else set()
        self._sets: dict[str, list[QuerySet] | str] = {}

    def _from_table(self, encoder: Modality, n: int) -> tuple[list[torch.Tensor], str, int] | None:
        if self.cfg.calibration_table is None:
            return None
        queries, errors = read_queries([self.cfg.calibration_table], encoder)
        tensors, skipped = self._preprocess([q.raw for q in queries[:n]], lambda raw: preprocess_query(encoder, raw))
        if not tensors:
            return None
        return tensors, f"calibration table {self.cfg.calibration_table}", skipped + len(errors)

    def _library_smiles(self, n: int) -> list[str]:
        rng = np.random.default_rng(self.cfg.calibration_seed)
        shards = self.manifest.shards
        total = sum(s.rows for s in shards)
        picked: list[str] = []
        for shard in shards:
            take = min(shard.rows, max(1, round(n * shard.rows / total)))
            smiles = pq.read_table(self.store.path(shard.name), columns=["smiles"], filesystem=self.store.fs)
            column = smiles.column(0).to_pylist()
            picked += [column[i] for i in sorted(rng.choice(len(column), take, replace=False))]
        order = rng.permutation(len(picked))[:n]
        return [picked[i] for i in order]

    def _held_out_frozen(self, modality: str, n: int) -> np.ndarray | None:
        """The held-out rows' cached frozen embeddings (``emb__<modality>``, as `acml embed`
        writes them), where the row has one: the encoder's output without re-encoding."""
        from acml_ray.data.paired import emb_column, mask_column

        if self.held_out is None or emb_column(modality) not in self._held_out_names:
            return None
        table = pq.read_table(self.held_out, columns=[emb_column(modality), mask_column(modality)])
        has = np.asarray(table.column(1).to_numpy(zero_copy_only=False), dtype=bool)
        rows = np.flatnonzero(has)
        if len(rows) == 0:
            return None
        picked = rows[held_out_rows(len(rows), n, self.cfg.calibration_seed)]
        column = table.column(0).take(pa.array(picked)).combine_chunks()
        dim = column.type.list_size if pa.types.is_fixed_size_list(column.type) else len(column[0])
        return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)

    def _held_out_inputs(self, encoder: Modality, n: int) -> list[Any]:
        if self.held_out is None or encoder.input_column not in self._held_out_names:
            return []
        column = pq.read_table(self.held_out, columns=[encoder.input_column]).column(0).to_pylist()
        present = [v for v in column if v is not None and not (isinstance(v, float) and np.isnan(v))]
        return [present[i] for i in held_out_rows(len(present), n, self.cfg.calibration_seed)]

    @staticmethod
    def _preprocess(raws: list[Any], prepare: Any) -> tuple[list[torch.Tensor], int]:
        tensors, skipped = [], 0
        for raw in raws:
            try:
                tensors.append(prepare(raw))
            except Exception:  # noqa: BLE001 - one bad input is counted, the others calibrate
                skipped += 1
        return tensors, skipped

    def get(self, modality: str) -> list[QuerySet] | str:
        """The modality's query sets (one per source that has inputs), or why there are none."""
        if modality in self._sets:
            return self._sets[modality]
        n = self.cfg.calibration_queries
        if n == 0:
            self._sets[modality] = "calibration off (index.calibration_queries = 0)"
            return self._sets[modality]
        encoder = model_modality(self.model_cfg, modality)
        found = [self._from_table(encoder, n)]
        if encoder.input_column == "smiles":
            tensors, skipped = self._preprocess(self._library_smiles(n), encoder.preprocess_one)
            found.append((tensors, "library rows", skipped))
        frozen = self._held_out_frozen(modality, n)
        if frozen is None:
            tensors, skipped = self._preprocess(self._held_out_inputs(encoder, n), encoder.preprocess_one)
            found.append((tensors, f"held-out table {self.held_out}", skipped))
        sets = [
            QuerySet(embed_queries(self.model, encoder, modality, tensors), source, skipped)
            for tensors, source, skipped in (f for f in found if f is not None)
            if tensors
        ]
        if frozen is not None:  # the cached frozen embeddings: projected, not re-encoded
            vectors = project_frozen(self.model, modality, torch.from_numpy(frozen))
            sets.append(QuerySet(vectors, f"held-out table {self.held_out} (cached embeddings)"))
        self._sets[modality] = sets or (
            f"no {encoder.input_column!r} inputs to calibrate with (give index.calibration_table, "
            "or build with the model's run folder, whose held-out table has them)"
        )
        return self._sets[modality]


def calibrate(
    index: Any, nlist: int, cfg: IndexConfig, queries: list[QuerySet] | str
) -> tuple[int | None, dict[str, Any]]:
    """(nprobe, the calibration record) of one modality's IVF index; nprobe None when there were
    no queries (the caller picks the fallback). ``record["recall"]`` is ``[nprobe, recall]`` pairs,
    each the lowest recall over the query sources; each source's own curve is in
    ``record["sources"]``."""
    record: dict[str, Any] = {"target_recall": cfg.target_recall, "top_k": cfg.calibration_top_k}
    if isinstance(queries, str):
        record["uncalibrated"] = queries
        return None, record
    t = time.perf_counter()
    nprobe, curves = sweep_nprobe(
        index, [q.vectors for q in queries], nlist, cfg.calibration_top_k, cfg.target_recall, cfg.nprobe
    )
    worst = {p: min(c[p] for c in curves) for p in curves[0]}  # every set was measured at every nprobe
    record.update(
        queries=sum(len(q.vectors) for q in queries),
        source=", ".join(q.source for q in queries),
        sources=[
            {
                "source": q.source,
                "queries": len(q.vectors),
                "skipped_inputs": q.skipped,
                "recall": [[p, round(r, 4)] for p, r in c.items()],
            }
            for q, c in zip(queries, curves)
        ],
        recall=[[p, round(r, 4)] for p, r in worst.items()],  # [nprobe, recall@k], nprobe ascending
        recall_at_nprobe=round(worst[nprobe], 4),
        reached=worst[nprobe] >= cfg.target_recall,
        fixed=cfg.nprobe is not None,
        seconds=round(time.perf_counter() - t, 2),
    )
    return nprobe, record


def calibration_settings(cfg: IndexConfig) -> dict[str, Any]:
    """The settings a stored calibration was made under (a change re-runs it)."""
    return {
        "method": METHOD,
        "target_recall": cfg.target_recall,
        "top_k": cfg.calibration_top_k,
        "queries": cfg.calibration_queries,
        "table": cfg.calibration_table,
        "fixed": cfg.nprobe,
        "seed": cfg.calibration_seed,
    }


__all__ = [
    "FALLBACK_NPROBE",
    "CalibrationQueries",
    "QuerySet",
    "calibrate",
    "calibration_settings",
    "held_out_rows",
    "recall_at_k",
    "sweep_nprobe",
]
