"""Prepare a training table in the driver (small data, `acml demo`): load sources, then the
building blocks of `acml_ray.pipelines.embed` (featurise, deduplicate, embed every modality
through the cache), the train/validation split, and Parquet that training reads directly. Rejected rows
are kept in a quarantine table, with reasons. Large data goes through `acml embed` (Ray Data)."""

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
from acml_ray.chem import GraphFeaturizer
from acml_ray.config import ACMLConfig
from acml_ray.data.paired import validation_mask
from acml_ray.data.sources import load_sources
from acml_ray.modalities import build_modality
from acml_ray.pipelines.embed import (
    InchikeyDeduper,
    embed_table,
    featurise_table,
    modality_input_columns,
    stats_columns,
    summarise,
    training_rows,
)

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


def prepare(cfg: ACMLConfig, progress: bool = True) -> PreparedData:
    """Build ``OUTPUT/data/{train,val,quarantine}.parquet`` from the configured sources."""
    out = Path(cfg.output_dir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    modalities = [build_modality(m.name, m.options) for m in cfg.modalities]
    names = [m.name for m in modalities]
    keep = ["source"]
    frame = load_sources(cfg.data.sources)
    columns = list(dict.fromkeys(["smiles", *keep, *modality_input_columns(modalities)]))
    source = pa.Table.from_pandas(frame[columns], preserve_index=False)

    featurizer = GraphFeaturizer(cfg.featurizer)
    chunks = [
        featurise_table(source.slice(start, 1024), featurizer, passthrough=columns)
        for start in tqdm(range(0, source.num_rows, 1024), desc="featurise", unit="batch", disable=not progress)
    ]
    table = InchikeyDeduper()(pa.concat_tables(chunks))

    prepared = PreparedData("", "", "", {})
    live = table.column("reason").null_count  # rows with no rejection reason get embedded
    for modality in modalities:
        bar = tqdm(total=live, desc=f"embed {modality.name}", unit="mol", disable=not progress)
        embedder = CachedEmbedder(modality, cfg.resolved_cache_dir(), progress=bar.update)
        table = embed_table(table, embedder, modality.input_column)
        bar.update(bar.total - bar.n)  # cache hits never pass through the encoder's progress
        bar.close()
        prepared.modality_dims[modality.name] = modality.dim
        prepared.fingerprints[modality.name] = modality.fingerprint
        prepared.embed_reports[modality.name] = {"cache_shards_corrupt": embedder.cache.stats.shards_corrupt}

    summary = summarise(table.select(stats_columns(names, keep)), names, keep)
    usable = training_rows(table, names, keep)
    in_val = validation_mask(usable.column("inchikey").to_pylist(), cfg.data.val_fraction, cfg.data.split_seed)
    train_idx, val_idx = np.flatnonzero(~in_val), np.flatnonzero(in_val)
    if not len(train_idx) or not len(val_idx):
        raise ValueError(
            f"{usable.num_rows} usable molecules leave the {'validation' if not len(val_idx) else 'training'} "
            f"split empty at data.val_fraction={cfg.data.val_fraction}: add molecules"
        )
    prepared.train_path = str(out / "train.parquet")
    prepared.val_path = str(out / "val.parquet")
    prepared.quarantine_path = str(out / "quarantine.parquet")
    pq.write_table(usable.take(pa.array(train_idx)), prepared.train_path)
    pq.write_table(usable.take(pa.array(val_idx)), prepared.val_path)
    pq.write_table(summary.quarantine, prepared.quarantine_path)
    prepared.counts = summary.counts | {"train": len(train_idx), "val": len(val_idx)}
    prepared.rejected_reasons = summary.quarantined_by_reason
    for name, report in summary.reports.items():
        prepared.embed_reports[name] = report | prepared.embed_reports[name]
    (out / "prepare.json").write_text(json.dumps(asdict(prepared), indent=2))
    log.info("prepared %s", prepared.counts)
    return prepared
