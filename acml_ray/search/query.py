"""`acml search`: rank an index's structures against queries of any modality the model knows.

A query (spectrum, picture or SMILES) goes through its frozen modality encoder and the model's
modality-side projection into that modality's joint space; the index's FAISS index of the same
modality (the library's graphs through the graph-side projection) returns the nearest
structures by cosine similarity. A formula or mass filter becomes a FAISS ``IDSelector`` over
the rows that pass (`acml_ray.search.filters`), searched exhaustively, so the top-K are the
best K among them.

The model comes from the index itself (the copy made when it was built); a model given by the
caller must be the same one (`ModelMismatchError` otherwise).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from acml_ray.search.filters import CandidateFilter, LibraryFilter
from acml_ray.search.inputs import Query, QueryError, embed_queries, model_modality, preprocess_query, read_queries
from acml_ray.search.layout import (
    METADATA_COLUMNS,
    IndexNotFoundError,
    IndexStore,
    ModelMismatchError,
    default_cache_dir,
    model_fingerprint,
)

if TYPE_CHECKING:  # faiss is imported where an index is first read
    import faiss

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ["query_id", "rank", "score", *METADATA_COLUMNS]


@dataclass
class SearchResult:
    """Ranked candidates of every query that ran, and one error line per query that did not."""

    modality: str
    candidates: pd.DataFrame  # CANDIDATE_COLUMNS, ranks from 1, best first per query
    errors: list[QueryError] = field(default_factory=list)
    filters: dict[str, str] = field(default_factory=dict)  # query_id -> filter description

    def to_records(self) -> list[dict[str, Any]]:
        """One record per query (in query order), candidates nested, errors inline."""
        out = []
        for qid, group in self.candidates.groupby("query_id", sort=False):
            rows = group.drop(columns=["query_id"]).to_dict("records")
            out.append(
                {
                    "query_id": qid,
                    "modality": self.modality,
                    "filter": self.filters.get(qid, "none"),
                    "candidates": rows,
                }
            )
        seen = {r["query_id"] for r in out}
        for qid, text in self.filters.items():  # queries that ran but had no candidate
            if qid not in seen:
                out.append({"query_id": qid, "modality": self.modality, "filter": text, "candidates": []})
        out += [{"query_id": e.query_id, "modality": self.modality, "error": e.error} for e in self.errors]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_records(), indent=2, default=float)

    def to_table(self) -> str:
        """A fixed-width text table of the candidates (what `acml search` prints)."""
        if self.candidates.empty:
            return "(no candidates)"
        frame = self.candidates.copy()
        frame["score"] = frame["score"].map(lambda v: f"{v:.4f}")
        frame["mass"] = frame["mass"].map(lambda v: f"{v:.4f}")
        return frame.to_string(index=False)


def _search_parameters(selector: faiss.IDSelector | None, nprobe: int | None) -> faiss.SearchParameters:
    """faiss search parameters, IVF ones when `nprobe` is given.

    Set as attributes: faiss's stubs declare only the no-argument constructors (its keyword
    constructor, ``SearchParametersIVF(nprobe=...)``, sets these same attributes).
    """
    import faiss

    if nprobe is None:
        params = faiss.SearchParameters()
    else:
        ivf = faiss.SearchParametersIVF()
        ivf.nprobe = nprobe
        params = ivf
    if selector is not None:
        params.sel = selector
    return params


def _split_work(index: Any, queries: int, nprobe: int) -> None:
    """Let FAISS spread an IVF search over the lists it scans when there are fewer queries than
    threads and many lists to scan (its default splits by query, so one query runs on one core):
    on 2 cores at 1.58 M rows and nprobe 768, one query's p50 went from 60-67 ms to 44-48 ms with
    the same results; at nprobe 16-64 the threads cost more than they save (+1-1.3 ms)."""
    import faiss

    if hasattr(index, "parallel_mode"):
        index.parallel_mode = 1 if queries < faiss.omp_get_max_threads() and nprobe >= 128 else 0


class StructureIndex:
    """An opened index: its manifest, model, metadata and (lazily) FAISS indexes and encoders.

    Args:
        location: the index folder, local path or ``s3://``.
        model: optional model reference (run folder, model folder, ``models:/NAME@alias``, ...);
            it must be the model the index was built with.
        cache_dir: local cache for indexes on object storage (default ``~/.cache/acml/index``).
        tracking_uri: MLflow tracking URI used to resolve a ``models:/`` reference.
    """

    def __init__(
        self,
        location: str,
        model: str | None = None,
        cache_dir: str | Path | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        from acml_ray.model.serialization import load_model

        self.store = IndexStore(location)
        manifest = self.store.read_manifest()
        if manifest is None:
            raise IndexNotFoundError(f"no structure index at {location} (no manifest.json); build one with acml index")
        self.manifest = manifest
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        model_file = self.store.local_copy("model/model.pt", self.cache_dir / "models")
        self.model, self.cfg, _ = load_model(model_file.parent)
        own = model_fingerprint(self.model, self.cfg)
        manifest.check_model(own, f"the model stored in {location}")  # a replaced model file
        if model is not None:
            from acml_ray.model.serialization import resolve_model

            with tempfile.TemporaryDirectory() as tmp:
                model_dir, _ = resolve_model(model, tmp, tracking_uri)
                other, other_cfg, _ = load_model(model_dir)
            manifest.check_model(model_fingerprint(other, other_cfg), model)
        self._faiss: dict[str, Any] = {}
        self._modalities: dict[str, Any] = {}
        self._metadata: pd.DataFrame | None = None
        self._filter: LibraryFilter | None = None

    # -- lazily loaded parts -----------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        return self.manifest.modalities

    @property
    def rows(self) -> int:
        return self.manifest.rows

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ValueError(f"the index's model has no modality {modality!r} (it has {', '.join(self.modalities)})")
        if modality not in self.manifest.ann:
            raise ValueError(
                f"the index has no FAISS index for {modality!r} yet: run acml index --out "
                f"{self.store.location} to finish it"
            )

    def metadata(self) -> pd.DataFrame:
        """id, smiles, inchikey, formula, mass of every row, in FAISS id order."""
        if self._metadata is None:
            from acml_ray.search.build import read_shard_metadata

            table = read_shard_metadata(self.store, self.manifest)
            self._filter = LibraryFilter(table.column("formula"), table.column("mass"))
            self._metadata = table.to_pandas()
        return self._metadata

    def library_filter(self) -> LibraryFilter:
        self.metadata()
        assert self._filter is not None
        return self._filter

    def faiss_index(self, modality: str) -> Any:
        """The modality's FAISS index, memory-mapped where FAISS supports it (pages load on use)."""
        import faiss

        self._check_modality(modality)
        if modality not in self._faiss:
            entry = self.manifest.ann[modality]
            path = str(self.store.local_copy(entry.file, self.cache_dir))
            try:
                index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:
                index = faiss.read_index(path)
            self._faiss[modality] = index
        return self._faiss[modality]

    def encoder(self, modality: str) -> Any:
        """The frozen encoder of `modality`, built from the model's own modality options."""
        self._check_modality(modality)
        if modality not in self._modalities:
            self._modalities[modality] = model_modality(self.cfg, modality)
        return self._modalities[modality]

    # -- searching -----------------------------------------------------------------------------
    def encode(
        self, modality: str, queries: Sequence[Query], batch_size: int = 32
    ) -> tuple[np.ndarray, list[int], list[QueryError]]:
        """Joint-space, L2-normalised vectors of the queries that preprocess -> (vectors, their
        positions in `queries`, errors of the others)."""
        encoder = self.encoder(modality)
        tensors, kept, errors = [], [], []
        for i, query in enumerate(queries):
            try:
                tensors.append(preprocess_query(encoder, query.raw))
                kept.append(i)
            except ValueError as exc:  # InvalidInputError and friends: one line per query
                errors.append(QueryError(query.query_id, getattr(exc, "reason", None) or str(exc)))
            except Exception as exc:  # noqa: BLE001 - a crash on odd input fails that query only
                errors.append(QueryError(query.query_id, f"preprocessing failed: {type(exc).__name__}: {exc}"))
        return embed_queries(self.model, encoder, modality, tensors, batch_size), kept, errors

    def search_vectors(
        self,
        modality: str,
        vectors: np.ndarray,
        k: int = 10,
        filters: Sequence[CandidateFilter | None] | None = None,
        exact: bool = False,
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each ``[len(vectors), k]`` (id -1 / score -inf where fewer than k pass).

        Unfiltered queries run as one batch; filtered ones each with their own ``IDSelector``
        over all lists of an IVF index (exact within the filter). `exact` scans every list for
        unfiltered queries too (the reference `benchmarks/search.py` measures recall against).
        """
        import faiss

        index = self.faiss_index(modality)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(vectors)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        if n == 0:
            return scores, ids
        entry = self.manifest.ann[modality]
        is_ivf = entry.kind == "ivf"
        lists = int(entry.nlist or 1)
        probe = lists if exact and is_ivf else int(nprobe or entry.nprobe or 32)
        filters = list(filters) if filters is not None else [None] * n
        plain = [i for i, f in enumerate(filters) if f is None or not f.active]
        if plain:
            params = _search_parameters(None, min(probe, lists)) if is_ivf else None
            _split_work(index, len(plain), min(probe, lists))
            d, i = index.search(vectors[plain], k, params=params)
            scores[plain], ids[plain] = d, i
        for row, flt in enumerate(filters):
            if flt is None or not flt.active:
                continue
            allowed = self.library_filter().ids(flt)
            if allowed is None or len(allowed) == 0:
                continue
            selector = faiss.IDSelectorBatch(allowed)
            filtered = _search_parameters(selector, lists if is_ivf else None)
            _split_work(index, 1, lists)
            d, i = index.search(vectors[row : row + 1], k, params=filtered)
            scores[row], ids[row] = d[0], i[0]
        scores[ids < 0] = -np.inf
        return scores, ids

    def search(
        self,
        modality: str,
        queries: Sequence[Any] | Any,
        top_k: int = 10,
        formula: str | None = None,
        mass: float | None = None,
        tol: float = 0.01,
        exact: bool = False,
        nprobe: int | None = None,
    ) -> SearchResult:
        """Rank the library against `queries` (see `search` for what they may be)."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self._check_modality(modality)
        default = CandidateFilter(formula=formula, mass=mass, tol=tol)
        if isinstance(queries, (str, Path)) or not isinstance(queries, Sequence):
            queries = [queries]
        parsed: list[Query] = []
        errors: list[QueryError] = []
        raw_items = [q for q in queries if not isinstance(q, Query)]
        parsed += [q for q in queries if isinstance(q, Query)]
        more, errors = read_queries(raw_items, self.encoder(modality), default)
        parsed += more
        vectors, kept, encode_errors = self.encode(modality, parsed)
        errors += encode_errors
        ran = [parsed[i] for i in kept]
        scores, ids = self.search_vectors(modality, vectors, top_k, [q.filter for q in ran], exact, nprobe)
        meta = self.metadata()
        frames = []
        for query, row_scores, row_ids in zip(ran, scores, ids):
            valid = row_ids >= 0
            hits = meta.iloc[row_ids[valid]].reset_index(drop=True)
            hits.insert(0, "score", row_scores[valid].astype(float))
            hits.insert(0, "rank", np.arange(1, int(valid.sum()) + 1))
            hits.insert(0, "query_id", query.query_id)
            frames.append(hits)
        candidates = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CANDIDATE_COLUMNS)
        return SearchResult(
            modality, candidates[CANDIDATE_COLUMNS], errors, {q.query_id: q.filter.describe() for q in ran}
        )


def search(
    index: str | StructureIndex,
    modality: str,
    queries: Sequence[Any] | Any,
    top_k: int = 10,
    formula: str | None = None,
    mass: float | None = None,
    tol: float = 0.01,
    model: str | None = None,
    exact: bool = False,
    nprobe: int | None = None,
) -> SearchResult:
    """Search a structure index by spectrum, picture or SMILES.

    Args:
        index: an index location (path or ``s3://``) or an opened `StructureIndex` (reuse it for
            many calls: opening loads the model and the metadata).
        modality: ``nmr13c``, ``nmr1h``, ``image``, ``smiles``, ``ms`` or any modality of the model.
        queries: one or many of: a file, a folder, a table (CSV/TSV/Parquet; per-row
            ``query_id``/``formula``/``mass``/``tol``), a SMILES or JSON peak-list string, a
            `Query`, or in-memory inputs (a PIL image, a peak list, a matchms ``Spectrum``).
        top_k: candidates per query.
        formula / mass / tol: filter every query's candidates (inside the index, before ranking).
        model: the model the caller expects; an index built with another is an error.
        exact: exhaustive search even where the index is an IVF (ANN) index.
        nprobe: IVF lists scanned per query (default: ``index.nprobe`` the index was built with).

    Returns a `SearchResult`; bad queries are in ``errors``, one line each, the rest ran.
    """
    opened = index if isinstance(index, StructureIndex) else StructureIndex(index, model=model)
    if isinstance(index, StructureIndex) and model is not None:
        raise ValueError("pass model= when opening the StructureIndex, not to search() on an opened one")
    return opened.search(
        modality, queries, top_k=top_k, formula=formula, mass=mass, tol=tol, exact=exact, nprobe=nprobe
    )


__all__ = ["CANDIDATE_COLUMNS", "ModelMismatchError", "SearchResult", "StructureIndex", "search"]
