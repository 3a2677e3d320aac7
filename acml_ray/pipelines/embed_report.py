"""What the embedding stage counted: the summary of its status columns and its one result type.

`summarise` turns the small status columns (`embed_batches.stats_columns`) of a finished table
into counts, per-modality reports and the quarantine table; `EmbeddedData` is what both drivers
(`prepare` and `acml embed`) return and write as their report (`prepare.json`, `report.json`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from acml_ray.chem import reason_counts
from acml_ray.data.paired import mask_column
from acml_ray.pipelines.embed_batches import COUNTERS, QUARANTINE_SCHEMA, STATUS_SCHEMA, counter_column, reason_column


@dataclass
class EmbedSummary:
    """What a run did: counts, per-modality reports (EmbedReport fields) and the quarantine."""

    counts: dict[str, int]
    reports: dict[str, dict[str, Any]]
    quarantined_by_reason: dict[str, int]
    quarantine: pa.Table = field(repr=False)


def summarise(stats: pa.Table, modalities: Sequence[str], keep_columns: Sequence[str] = ()) -> EmbedSummary:
    """Counts and the quarantine table (input, stage, reason) from `stats_columns` of the output.

    A row is quarantined once per failure: rejected upstream (featurise/deduplicate), or by a
    modality (``stage="embed:<m>"``; the row still trains the other modalities).
    """
    keep = [c for c in keep_columns if c in stats.column_names and c not in STATUS_SCHEMA.names]
    upstream = stats.filter(pc.is_valid(stats.column("reason")))
    parts = [upstream.select([*STATUS_SCHEMA.names, *keep])]
    reports: dict[str, dict[str, Any]] = {}
    live = pc.is_null(stats.column("reason"))
    any_ok = pa.array(np.zeros(stats.num_rows, dtype=bool))
    for m in modalities:
        rejected = stats.filter(pc.is_valid(stats.column(reason_column(m))))
        reasons = rejected.column(reason_column(m))
        parts.append(
            pa.table(
                {
                    "mol_id": rejected.column("mol_id"),
                    "input": rejected.column("input"),
                    "stage": pa.array([f"embed:{m}"] * rejected.num_rows, pa.string()),
                    "reason": reasons,
                    **{c: rejected.column(c) for c in keep},
                }
            )
        )
        total = {c: int(pc.sum(stats.column(counter_column(m, c))).as_py() or 0) for c in COUNTERS}
        by_reason: dict[str, int] = {}
        for r in reasons.to_pylist():
            by_reason[r] = by_reason.get(r, 0) + 1
        reports[m] = {
            "rows": int(pc.sum(live).as_py() or 0),
            "cache_hits": total["hits"],
            "encoded": total["encoded"],
            "forward_passes": total["fwd"],
            "cache_shards_corrupt": total["corrupt"],
            "rejected": rejected.num_rows,
            "reasons": by_reason,
            "embedded": int(pc.sum(stats.column(mask_column(m))).as_py() or 0),
        }
        any_ok = pc.or_(any_ok, stats.column(mask_column(m)))
    quarantine = pa.concat_tables(
        [p.cast(pa.schema([*QUARANTINE_SCHEMA, *(upstream.schema.field(c) for c in keep)])) for p in parts]
    )
    stages = stats.column("stage").to_pylist()
    counts = {
        "input": stats.num_rows,
        "featurised": sum(s != "featurise" for s in stages),
        "duplicates": sum(s == "deduplicate" for s in stages),
        "usable": int(pc.sum(pc.and_(live, any_ok)).as_py() or 0),
        "quarantined": quarantine.num_rows,
    }
    return EmbedSummary(counts, reports, reason_counts(quarantine.column("reason").to_pylist()), quarantine)


@dataclass
class EmbeddedData:
    """The training table a stage wrote and what it counted (`prepare`, `run_embed_pipeline`).

    Its fields are the keys of the stage's report (``asdict`` of this is `report.json` /
    `prepare.json`). `counts` holds input, featurised, duplicates, usable and quarantined rows,
    and the rows written to the train and val tables (``train``, ``val``: the split a user trains
    on); `quarantined_by_reason` the quarantined rows by kind of
    reason; `reports` per modality: rows, cache hits, encoded rows, forward passes, corrupt cache
    shards (set aside, rows recomputed), rejected rows and their reasons, embedded rows.
    """

    train_path: str
    val_path: str
    quarantine_path: str
    report_path: str
    modality_dims: dict[str, int]
    fingerprints: dict[str, str]
    counts: dict[str, int]
    reports: dict[str, dict[str, Any]]
    quarantined_by_reason: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def quarantined(self) -> int:
        """Rows in the quarantine table (as `IndexBuildResult.quarantined`)."""
        return self.counts["quarantined"]
