"""Prepare a training table: load sources, featurise, embed every modality through the cache,
split, and write Parquet that training reads directly. Rejected rows are kept, with reasons."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from acml_ray.cache import CachedEmbedder
from acml_ray.chem import GraphFeaturizer, MolGraph, Rejected
from acml_ray.config import ACMLConfig
from acml_ray.data.paired import build_table, split_indices
from acml_ray.data.sources import load_sources
from acml_ray.modalities import build_modality

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Paths and counts of a prepared training table."""

    train_path: str
    val_path: str
    quarantine_path: str
    modality_dims: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    embed_reports: dict[str, dict] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)


def _reason_counts(reasons: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in reasons:
        key = reason.split(":")[0]  # group "too many heavy atoms: 63 > 50" by its kind
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def prepare(cfg: ACMLConfig, progress: bool = True) -> PreparedData:
    """Build ``OUTPUT/data/{train,val,quarantine}.parquet`` from the configured sources."""
    out = Path(cfg.output_dir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    frame = load_sources(cfg.data.sources)
    smiles = frame["smiles"].tolist()
    featurizer = GraphFeaturizer(cfg.featurizer)
    results = []
    for start in tqdm(range(0, len(smiles), 1024), desc="featurise", unit="batch", disable=not progress):
        results.extend(featurizer.featurize_batch(smiles[start:start + 1024]))
    quarantine: list[dict] = [
        {"row": r.index, "source": frame["source"].iat[r.index], "input": r.input, "stage": "featurise",
         "reason": r.reason} for r in results if isinstance(r, Rejected)]
    # Duplicates (same InChIKey, e.g. a drug also in MOSES) would be false negatives in the
    # contrastive batch and would leak between train and validation: keep the first.
    seen: set[str] = set()
    graphs: list[MolGraph] = []
    rows: list[int] = []
    for i, r in enumerate(results):
        if isinstance(r, Rejected):
            continue
        if r.inchikey in seen:
            quarantine.append({"row": i, "source": frame["source"].iat[i], "input": smiles[i],
                               "stage": "deduplicate", "reason": f"duplicate InChIKey {r.inchikey}"})
            continue
        seen.add(r.inchikey)
        graphs.append(r)
        rows.append(i)

    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    prepared = PreparedData("", "", "", {})
    for mcfg in cfg.modalities:
        modality = build_modality(mcfg.name, mcfg.options)
        bar = tqdm(total=len(graphs), desc=f"embed {mcfg.name}", unit="mol", disable=not progress)
        embedder = CachedEmbedder(modality, cfg.resolved_cache_dir(), progress=bar.update)
        column = modality.input_column
        raws = [g.smiles for g in graphs] if column == "smiles" else frame[column].iloc[rows].tolist()
        result = embedder.embed(raws)
        bar.update(result.report.cache_hits)
        bar.close()
        embeddings[mcfg.name] = (result.vectors, result.ok)
        prepared.modality_dims[mcfg.name] = modality.dim
        prepared.fingerprints[mcfg.name] = modality.fingerprint
        prepared.embed_reports[mcfg.name] = asdict(result.report) | {
            "cache_shards_corrupt": embedder.cache.stats.shards_corrupt}
        for row, reason in zip(rows, result.reasons):
            if reason is not None:
                quarantine.append({"row": row, "source": frame["source"].iat[row], "input": smiles[row],
                                   "stage": f"embed:{mcfg.name}", "reason": reason})

    # A molecule must have at least one modality to pair with.
    usable = np.any(np.stack([ok for _, ok in embeddings.values()]), axis=0)
    keep = np.flatnonzero(usable)
    graphs = [graphs[i] for i in keep]
    embeddings = {m: (v[keep], ok[keep]) for m, (v, ok) in embeddings.items()}
    table = build_table(graphs, embeddings, extra={"source": frame["source"].iloc[[rows[i] for i in keep]]})
    train_idx, val_idx = split_indices(len(graphs), cfg.data.val_fraction, cfg.data.split_seed)
    prepared.train_path = str(out / "train.parquet")
    prepared.val_path = str(out / "val.parquet")
    prepared.quarantine_path = str(out / "quarantine.parquet")
    pq.write_table(table.take(pa.array(train_idx)), prepared.train_path)
    pq.write_table(table.take(pa.array(val_idx)), prepared.val_path)
    pq.write_table(pa.Table.from_pylist(quarantine, schema=pa.schema([
        ("row", pa.int64()), ("source", pa.string()), ("input", pa.string()), ("stage", pa.string()),
        ("reason", pa.string())])), prepared.quarantine_path)
    prepared.counts = {"input": len(smiles), "featurised": len(rows), "usable": len(graphs),
                       "quarantined": len(quarantine), "train": len(train_idx), "val": len(val_idx)}
    prepared.rejected_reasons = _reason_counts([q["reason"] for q in quarantine])
    (out / "prepare.json").write_text(json.dumps(asdict(prepared), indent=2))
    log.info("prepared %s", prepared.counts)
    return prepared

