"""The per-batch building blocks of the embedding stage: pyarrow batch in, pyarrow batch out.

Both drivers chain them, `acml_ray.pipelines.embed` (`acml embed`, Ray Data tasks and actor
pools) and `acml_ray.pipelines.prepare` (in the driver, small data):

- `featurise_table`: SMILES -> graph columns (`MolGraph.to_row` schema), with `stage`/`reason`
  set on rows that failed (they travel on, so nothing is lost and everything is counted);
- `InchikeyDeduper`: marks every repeat of an InChIKey as a duplicate (the first one wins);
- `embed_table` (and `ModalityEmbedActor`, its Ray Data actor): one modality through its
  `CachedEmbedder`; adds ``emb__<m>``, ``has__<m>``, ``reason__<m>`` and this batch's counters
  (cache hits, encoded rows, forward passes, corrupt cache shards) on the batch's first row, so
  counts come back through the data from any number of actors;
- `training_rows`: the rows and columns training reads (the `acml_ray.data.paired` contract);
- `stats_columns`: the small columns `acml_ray.pipelines.embed_report.summarise` counts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from acml_ray.cache import CachedEmbedder
from acml_ray.chem import GraphFeaturizer, MolGraph, Rejected, row_arrow_schema
from acml_ray.config import IsolationConfig, ModalityConfig
from acml_ray.data.columnar import list_column
from acml_ray.data.paired import emb_column, mask_column, validation_mask
from acml_ray.modalities import Modality, build_modality
from acml_ray.sandbox import Sandbox

# Bookkeeping columns every row carries through the pipeline (never written for training).
STATUS_SCHEMA = pa.schema(
    [("mol_id", pa.string()), ("input", pa.string()), ("stage", pa.string()), ("reason", pa.string())]
)
QUARANTINE_SCHEMA = STATUS_SCHEMA
COUNTERS = ("hits", "encoded", "fwd", "corrupt")


def reason_column(modality: str) -> str:
    """The column holding why `modality` could not embed a row (None where it did)."""
    return f"reason__{modality}"


def counter_column(modality: str, counter: str) -> str:
    """The column carrying a batch's `counter` (one of `COUNTERS`) for `modality` on its first row."""
    return f"_{counter}__{modality}"


def decode_text(values: Sequence[Any], column: str, bad: dict[int, str]) -> list[Any]:
    """`values` with bytes decoded as UTF-8; rows that do not decode get a reason in `bad`.

    CSV text columns are read as bytes (see `csv_read_options`) so that one row in another
    encoding (latin-1, UTF-16) costs only that row: it is quarantined with reason ``invalid text
    encoding``, never the file, and never the whole column turned into bytes.
    """
    out = list(values)
    for i, value in enumerate(out):
        if isinstance(value, (bytes, bytearray)):
            try:
                out[i] = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                out[i] = bytes(value).decode("utf-8", "backslashreplace")  # shown in the quarantine
                bad.setdefault(
                    i,
                    f"invalid text encoding: column {column!r} is not UTF-8 "
                    f"(byte 0x{exc.object[exc.start]:02x} at position {exc.start})",
                )
    return out


# One sandbox (a child process, see acml_ray/sandbox.py) per Ray worker process and setting,
# reused by every featurise task the worker runs.
_SANDBOXES: dict[tuple, Sandbox] = {}


def _sandbox(isolation: IsolationConfig) -> Sandbox:
    key = (isolation.retries, isolation.timeout_s, isolation.memory_mb)
    if key not in _SANDBOXES:
        _SANDBOXES[key] = Sandbox(
            retries=isolation.retries,
            timeout_s=isolation.timeout_s,
            memory_mb=isolation.memory_mb,
            preload=["acml_ray.chem.featurizer"],
        )
    return _SANDBOXES[key]


def _crashed(item: object, reason: str) -> Rejected:
    return Rejected.of(0, item, reason)  # the index is set by the caller


def featurise_table(
    table: pa.Table,
    featurizer: GraphFeaturizer,
    smiles_column: str = "smiles",
    id_column: str | None = None,
    passthrough: Sequence[str] = (),
    text_columns: Sequence[str] = (),
    isolation: IsolationConfig | None = None,
) -> pa.Table:
    """Graph columns + status columns (+ `passthrough` input columns) for one batch.

    Never raises for bad molecules: they get ``stage="featurise"`` and the reason, and null
    graph columns. ``mol_id`` is the id column as text, or the InChIKey without one. Bytes in
    the SMILES, id and `text_columns` columns are decoded as UTF-8 row by row (`decode_text`).
    With `isolation` (enabled), RDKit runs in a `Sandbox` child process: a row that crashes it
    is quarantined with reason ``worker crashed: <signal>`` and the rest of the batch goes on.
    """
    if smiles_column not in table.column_names:
        raise ValueError(f"input has no column {smiles_column!r}; columns: {table.column_names}")
    bad: dict[int, str] = {}
    raw_smiles = table.column(smiles_column).to_pylist()
    smiles = decode_text(raw_smiles, smiles_column, bad)
    n = len(smiles)
    good = [i for i in range(n) if i not in bad]
    todo = [smiles[i] for i in good]
    if isolation is not None and isolation.enabled:
        done = _sandbox(isolation).map(featurizer.featurize_batch, todo, _crashed)
    else:
        done = featurizer.featurize_batch(todo)
    results: list[MolGraph | Rejected] = [None] * n  # type: ignore[list-item]
    for i, result in zip(good, done):
        if isinstance(result, Rejected):
            result.index = i  # the featuriser (or a bisected sub-batch) counted from 0
        results[i] = result
    ids = None
    if id_column:
        id_values = table.column(id_column)
        if pa.types.is_binary(id_values.type) or pa.types.is_large_binary(id_values.type):
            ids = decode_text(id_values.to_pylist(), id_column, bad)
        else:
            ids = id_values.cast(pa.string()).to_pylist()
    extra: dict[str, list] = {}
    for name in passthrough:
        if name in text_columns and name in table.column_names and name != smiles_column:
            column = table.column(name)
            if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
                extra[name] = decode_text(column.to_pylist(), name, bad)
    for i, reason in bad.items():  # decoding failures of any text column reject their row
        results[i] = Rejected.of(i, raw_smiles[i] if isinstance(raw_smiles[i], str) else smiles[i], reason)
    rows = [r.to_row() if isinstance(r, MolGraph) else None for r in results]
    columns: dict[str, pa.Array] = {}
    for f in row_arrow_schema():
        if pa.types.is_list(f.type):
            columns[f.name] = list_column([None if r is None else r[f.name] for r in rows], f.type.value_type)
        else:
            columns[f.name] = pa.array([None if r is None else r[f.name] for r in rows], f.type)
    if ids is None:
        ids = [None if r is None else r["inchikey"] for r in rows]
    columns["mol_id"] = pa.array(ids, pa.string())
    # Rejected.input is a safe, truncated rendering (inputs can be arbitrary garbage).
    columns["input"] = pa.array(
        [r.input if isinstance(r, Rejected) else s for r, s in zip(results, smiles)], pa.string()
    )
    failed = [not isinstance(r, MolGraph) for r in results]
    columns["stage"] = pa.array(["featurise" if bad_row else None for bad_row in failed], pa.string())
    columns["reason"] = pa.array([r.reason if isinstance(r, Rejected) else None for r in results], pa.string())
    for name in passthrough:
        if name in columns or name == smiles_column:
            continue
        if name not in table.column_names:
            raise ValueError(f"input has no column {name!r}; columns: {table.column_names}")
        columns[name] = pa.array(extra[name], pa.string()) if name in extra else table.column(name).combine_chunks()
    return pa.table(columns)


class InchikeyDeduper:
    """Marks repeats of an InChIKey as ``stage="deduplicate"`` (the first occurrence is kept).

    Duplicates (e.g. a drug that is also in MOSES) would be false negatives in a contrastive
    batch and would leak between train and validation. Stateful: in Ray Data it runs as a
    single actor, which sees every batch (in order, with `preserve_order`).
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, table: pa.Table) -> pa.Table:
        stages = table.column("stage").to_pylist()
        reasons = table.column("reason").to_pylist()
        for i, key in enumerate(table.column("inchikey").to_pylist()):
            if reasons[i] is not None:
                continue
            if key in self.seen:
                stages[i], reasons[i] = "deduplicate", f"duplicate InChIKey {key}"
            else:
                self.seen.add(key)
        table = table.set_column(table.schema.get_field_index("stage"), "stage", pa.array(stages, pa.string()))
        return table.set_column(table.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))


def embed_table(table: pa.Table, embedder: CachedEmbedder, input_column: str = "smiles") -> pa.Table:
    """Append one modality's vectors, mask, rejection reasons and counters to a batch.

    Rows already rejected upstream are not embedded (zero vector, mask False, no reason).
    The modality reads `input_column`; for ``smiles`` that is the canonical SMILES of the graph.
    """
    name, dim = embedder.modality.name, embedder.modality.dim
    n = table.num_rows
    live = [i for i, r in enumerate(table.column("reason").to_pylist()) if r is None]
    raws = table.column(input_column).to_pylist()
    result = embedder.embed([raws[i] for i in live])
    vectors = np.zeros((n, dim), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    reasons: list[str | None] = [None] * n
    if live:
        vectors[live] = result.vectors
        ok[live] = result.ok
        for j, i in enumerate(live):
            reasons[i] = result.reasons[j]
    report = result.report
    columns = {
        emb_column(name): pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        mask_column(name): pa.array(ok),
        reason_column(name): pa.array(reasons, pa.string()),
    }
    for counter, total in zip(
        COUNTERS, (report.cache_hits, report.encoded, report.forward_passes, report.corrupt_shards)
    ):
        values = np.zeros(n, dtype=np.int64)
        if n:
            values[0] = total  # batch totals ride on the first row; summing the column adds them up
        columns[counter_column(name, counter)] = pa.array(values)
    for column, values in columns.items():
        table = table.append_column(column, values)
    return table


def training_rows(
    table: pa.Table,
    modalities: Sequence[str],
    keep_columns: Sequence[str] = (),
    split: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 4,
) -> pa.Table:
    """Rows training can use (no upstream rejection, at least one modality) and their columns.

    With `split` ("train" or "val") only that side of the split (`validation_mask`) is returned.
    """
    usable = pc.is_null(table.column("reason"))
    any_modality = None
    for m in modalities:
        has = table.column(mask_column(m))
        any_modality = has if any_modality is None else pc.or_(any_modality, has)
    mask = pc.and_(usable, any_modality)
    if split is not None:
        in_val = validation_mask(table.column("inchikey").to_pylist(), val_fraction, seed)
        mask = pc.and_(mask, pa.array(in_val if split == "val" else ~in_val))
    names = ["mol_id", *row_arrow_schema().names]
    for m in modalities:
        names += [emb_column(m), mask_column(m)]
    names += [c for c in keep_columns if c in table.column_names and c not in names]
    return table.filter(mask).select(names)


def stats_columns(modalities: Sequence[str], keep_columns: Sequence[str] = ()) -> list[str]:
    """The small columns `summarise` needs (no graphs, no vectors): cheap to bring to the driver."""
    names = [*STATUS_SCHEMA.names, *keep_columns]
    for m in modalities:
        names += [mask_column(m), reason_column(m), *(counter_column(m, c) for c in COUNTERS)]
    return names


def modality_input_columns(modalities: Sequence[Modality]) -> list[str]:
    """Raw input columns the modalities read besides the (canonicalised) SMILES."""
    return [m.input_column for m in modalities if m.input_column != "smiles"]


class ModalityEmbedActor:
    """One encoder actor: builds the modality once, then embeds batches through the cache."""

    def __init__(
        self,
        config: dict[str, Any],
        cache_path: str,
        cache_fs: pafs.FileSystem,
        encoder_batch_size: int,
        num_threads: int,
        use_gpu: bool,
    ) -> None:
        import torch

        torch.set_num_threads(num_threads)  # EmbedConfig.threads_per_actor
        mcfg = ModalityConfig.model_validate(config)
        modality = build_modality(mcfg.name, mcfg.options)
        if use_gpu and torch.cuda.is_available():
            modality.to("cuda")
        self.embedder = CachedEmbedder(modality, cache_path, batch_size=encoder_batch_size, filesystem=cache_fs)
        self.rows = 0

    def __call__(self, table: pa.Table) -> pa.Table:
        out = embed_table(table, self.embedder, self.embedder.modality.input_column)
        name = self.embedder.modality.name
        self.rows += table.num_rows
        hits = int(pc.sum(out.column(counter_column(name, "hits"))).as_py() or 0)
        encoded = int(pc.sum(out.column(counter_column(name, "encoded"))).as_py() or 0)
        print(
            f"[acml embed] {name}: +{table.num_rows} rows ({hits} cache hits, {encoded} encoded); "
            f"{self.rows} rows in this actor",
            flush=True,
        )
        return out
