"""Prepare a training table in the driver (small data, `acml demo`): load sources, then the
building blocks of `acml_ray.pipelines.embed_batches` (featurise, deduplicate, embed every
modality through the cache), the train/validation split, and Parquet that training reads
directly. Rejected rows are kept in a quarantine table, with reasons. Returns and writes
(`prepare.json`) the stage's one result type, `EmbeddedData`, as `acml embed` does (Ray Data,
for large data)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
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
from acml_ray.pipelines.embed_batches import (
    InchikeyDeduper,
    embed_table,
    featurise_table,
    modality_input_columns,
    stats_columns,
    training_rows,
)
from acml_ray.pipelines.embed_report import EmbeddedData, summarise

log = logging.getLogger(__name__)


def prepare(cfg: ACMLConfig, progress: bool = True) -> EmbeddedData:
    """Build ``OUTPUT/data/{train,val,quarantine}.parquet`` and ``prepare.json`` from the configured sources."""
    started = time.perf_counter()
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

    live = table.column("reason").null_count  # rows with no rejection reason get embedded
    for modality in modalities:
        bar = tqdm(total=live, desc=f"embed {modality.name}", unit="mol", disable=not progress)
        embedder = CachedEmbedder(modality, cfg.resolved_cache_dir(), progress=bar.update)
        # Corrupt cache shards are counted once, by `embed_table`'s counter column (see summarise).
        table = embed_table(table, embedder, modality.input_column)
        bar.update(bar.total - bar.n)  # cache hits never pass through the encoder's progress
        bar.close()
    embedded = time.perf_counter()

    summary = summarise(table.select(stats_columns(names, keep)), names, keep)
    usable = training_rows(table, names, keep)
    in_val = validation_mask(usable.column("inchikey").to_pylist(), cfg.data.val_fraction, cfg.data.split_seed)
    train_idx, val_idx = np.flatnonzero(~in_val), np.flatnonzero(in_val)
    if not len(train_idx) or not len(val_idx):
        raise ValueError(
            f"{usable.num_rows} usable molecules leave the {'validation' if not len(val_idx) else 'training'} "
            f"split empty at data.val_fraction={cfg.data.val_fraction}: add molecules"
        )
    prepared = EmbeddedData(
        train_path=str(out / "train.parquet"),
        val_path=str(out / "val.parquet"),
        quarantine_path=str(out / "quarantine.parquet"),
        report_path=str(out / "prepare.json"),
        modality_dims={m.name: m.dim for m in modalities},
        fingerprints={m.name: m.fingerprint for m in modalities},
        counts=summary.counts | {"train": len(train_idx), "val": len(val_idx)},
        reports=summary.reports,
        quarantined_by_reason=summary.quarantined_by_reason,
    )
    pq.write_table(usable.take(pa.array(train_idx)), prepared.train_path)
    pq.write_table(usable.take(pa.array(val_idx)), prepared.val_path)
    pq.write_table(summary.quarantine, prepared.quarantine_path)
    finished = time.perf_counter()
    prepared.timings = {"embed_s": embedded - started, "write_s": finished - embedded, "total_s": finished - started}
    Path(prepared.report_path).write_text(json.dumps(asdict(prepared), indent=2))
    log.info("prepared %s", prepared.counts)
    return prepared
