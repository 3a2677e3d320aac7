"""Molecule table -> training table: featurise, deduplicate, embed every modality (cached).

The building blocks work on one pyarrow batch and are shared by the two drivers:

- `featurise_table`: SMILES -> graph columns (`MolGraph.to_row` schema), with `stage`/`reason`
  set on rows that failed (they travel on, so nothing is lost and everything is counted);
- `InchikeyDeduper`: marks every repeat of an InChIKey as a duplicate (the first one wins);
- `embed_table`: one modality through its `CachedEmbedder`; adds ``emb__<m>``, ``has__<m>``,
  ``reason__<m>`` and this batch's counters (cache hits, encoded rows, forward passes) on the
  batch's first row, so counts come back through the data from any number of actors;
- `summarise`: counts, per-modality reports and the quarantine table from those columns;
- `training_rows`: the rows and columns training reads (the `acml_ray.data.paired` contract).

`run_embed_pipeline` (`acml embed`, `jobs/embed.py`) chains them with Ray Data: read Parquet or
CSV shards from a path or s3://, featurise with tasks, deduplicate in one light actor, run each
encoder as an actor pool, and write Parquet shards split train/val by a hash of the InChIKey.
`acml_ray.pipelines.prepare` runs the same blocks in the driver for small data (`acml demo`).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from acml_ray.cache import CachedEmbedder, EmbeddingCache
from acml_ray.chem import GraphFeaturizer, MolGraph, Rejected, row_arrow_schema
from acml_ray.config import ACMLConfig, IsolationConfig, ModalityConfig
from acml_ray.data.columnar import list_column
from acml_ray.data.csv_source import csv_read_options, read_csv_dataset
from acml_ray.data.paired import emb_column, mask_column, validation_mask
from acml_ray.modalities import Modality, build_modality
from acml_ray.sandbox import Sandbox
from acml_ray.storage import check_access, join, storage_lost

log = logging.getLogger(__name__)

# Bookkeeping columns every row carries through the pipeline (never written for training).
STATUS_SCHEMA = pa.schema(
    [("mol_id", pa.string()), ("input", pa.string()), ("stage", pa.string()), ("reason", pa.string())]
)
QUARANTINE_SCHEMA = STATUS_SCHEMA
_COUNTERS = ("hits", "encoded", "fwd", "corrupt")


def reason_column(modality: str) -> str:
    return f"reason__{modality}"


def counter_column(modality: str, counter: str) -> str:
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
    columns["reason"] = pa.array([r.reason if bad_row else None for r, bad_row in zip(results, failed)], pa.string())
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
        _COUNTERS, (report.cache_hits, report.encoded, report.forward_passes, report.corrupt_shards)
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
        names += [mask_column(m), reason_column(m), *(counter_column(m, c) for c in _COUNTERS)]
    return names


def reason_counts(reasons: Iterable[str]) -> dict[str, int]:
    """Reasons grouped by kind ("too many heavy atoms: 63 > 50" -> "too many heavy atoms")."""
    counts: dict[str, int] = {}
    for reason in reasons:
        key = reason.split(":")[0]
        if key.startswith("duplicate InChIKey"):
            key = "duplicate InChIKey"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


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
        total = {c: int(pc.sum(stats.column(counter_column(m, c))).as_py() or 0) for c in _COUNTERS}
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


def modality_input_columns(modalities: Sequence[Modality]) -> list[str]:
    """Raw input columns the modalities read besides the (canonicalised) SMILES."""
    return [m.input_column for m in modalities if m.input_column != "smiles"]


# -- the Ray Data driver --------------------------------------------------------------------
class ModalityEmbedActor:
    """One encoder actor: builds the modality once, then embeds batches through the cache."""

    def __init__(
        self,
        config: dict[str, Any],
        cache_path: str,
        cache_fs: pafs.FileSystem,
        encoder_batch_size: int,
        num_cpus: float,
        use_gpu: bool,
    ) -> None:
        import torch

        torch.set_num_threads(max(1, int(num_cpus)))  # share the node with the other actors
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


@dataclass
class EmbedRunResult:
    """Where `run_embed_pipeline` wrote its tables, and what it counted."""

    train_path: str
    val_path: str
    quarantine_path: str
    report_path: str
    modality_dims: dict[str, int]
    fingerprints: dict[str, str]
    counts: dict[str, int]
    reports: dict[str, dict[str, Any]]
    quarantined_by_reason: dict[str, int]
    timings: dict[str, float]


def _input_format(fs: pafs.FileSystem, path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"embed input not found: {path}")
    names = (
        [path]
        if info.type == pafs.FileType.File
        else [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.is_file]
    )
    if any(n.lower().endswith((".csv", ".csv.gz")) for n in names):
        return "csv"
    return "parquet"


def check_input_columns(fs: pafs.FileSystem, path: str, fmt: str, location: str, wanted: Sequence[str]) -> None:
    """Read only the input's schema, on the driver, and name what is wrong before Ray starts.

    An empty or corrupt file, or a missing column, would otherwise surface from inside a Ray
    task as a long remote traceback. CSV is parsed with the reader's own `csv_read_options`.
    """
    import pyarrow.dataset as pads

    source: str | list[str] = path
    if fmt == "csv" and fs.get_file_info(path).type == pafs.FileType.Directory:
        source = sorted(
            i.path
            for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if i.is_file and i.path.lower().endswith((".csv", ".gz"))
        )  # as read_csv
        if not source:
            raise ValueError(f"no csv data files in {location}")
    file_format: Any = fmt
    if fmt == "csv":
        file_format = pads.CsvFileFormat(parse_options=csv_read_options()["parse_options"])
    try:
        schema = pads.dataset(source, filesystem=fs, format=file_format).schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"cannot read {location} as {fmt}: {exc}") from None
    if not schema.names:
        raise ValueError(f"no {fmt} data files in {location}")
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise ValueError(
            f"{location}: no column {', '.join(map(repr, missing))} "
            f"(columns: {schema.names}); set embed.smiles_column / embed.id_column / "
            "the modality input columns to match the file"
        )


def _say(message: str) -> None:
    print(f"[acml embed] {message}", flush=True)


def _remote_args_allowed(run: Callable[[ACMLConfig], EmbedRunResult]) -> Callable[[ACMLConfig], EmbedRunResult]:
    """Ray 2.60 deprecates remote args such as `max_retries` / `max_restarts` on reads, maps and
    writes, yet offers no other way to bound a task's retries or an actor's restarts (its
    default is forever): keep them, without the warning, until the pin passes Ray 2.63."""

    @functools.wraps(run)
    def wrapper(cfg: ACMLConfig) -> EmbedRunResult:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            return run(cfg)

    return wrapper


@_remote_args_allowed
def run_embed_pipeline(cfg: ACMLConfig) -> EmbedRunResult:
    """Run the Ray Data embedding pipeline described by ``cfg.embed`` (see the module doc).

    Needs a connected Ray (`acml_ray.train.init_ray`). Storage is checked from the driver
    first, so bad credentials or a wrong endpoint fail in seconds with a `StorageError`.
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    ec = cfg.embed
    if not ec.input:
        raise ValueError("embed.input is required: a Parquet/CSV file or folder (path or s3:// URI)")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    in_fs, in_path = check_access(ec.input)
    output = ec.output or join(cfg.output_dir, "embedded")
    out_fs, out_path = check_access(output, write=True)
    cache_fs, cache_path = check_access(cfg.resolved_cache_dir(), write=True)
    modalities = [build_modality(m.name, m.options) for m in cfg.modalities]
    names = [m.name for m in modalities]
    passthrough = list(dict.fromkeys([*ec.keep_columns, *modality_input_columns(modalities)]))
    fmt = _input_format(in_fs, in_path, ec.input_format)
    wanted = list(dict.fromkeys([ec.smiles_column, *([ec.id_column] if ec.id_column else []), *passthrough]))
    check_input_columns(in_fs, in_path, fmt, ec.input, wanted)

    # Deterministic output order: the deduplicator keeps the first occurrence in input order.
    # The dataset keeps a copy of the context it was read with; the caller's stays as it was.
    context = DataContext.get_current()
    previous = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    # Bounded retries everywhere: Ray's defaults retry a task, or restart an actor, forever, so a
    # row that kills its worker would stall the job. Crashes inside featurisation never reach Ray
    # (the sandbox turns them into quarantined rows); these bounds are for lost nodes and workers.
    tasks = {"max_retries": ec.max_retries}
    actors = {"max_restarts": ec.max_retries, "max_task_retries": ec.max_retries}
    text_columns = [ec.smiles_column, *([ec.id_column] if ec.id_column else [])]
    try:
        if fmt == "csv":
            ds = read_csv_dataset(  # Ray's read_csv mis-splits rows with NUL bytes (see csv_source)
                in_path, in_fs, text_columns, wanted, file_extensions=["csv", "gz"], ray_remote_args=tasks
            )
            ds = ds.select_columns(wanted)
        else:
            ds = ray.data.read_parquet(in_path, filesystem=in_fs, columns=wanted, ray_remote_args=tasks)
    finally:
        context.execution_options.preserve_order = previous
    _say(f"reading {fmt} from {ec.input}; modalities {names}; cache {cfg.resolved_cache_dir()}")
    ds = ds.map_batches(
        featurise_table,
        batch_format="pyarrow",
        batch_size=ec.featurize_batch_size,
        fn_kwargs={
            "featurizer": GraphFeaturizer(cfg.featurizer),
            "smiles_column": ec.smiles_column,
            "id_column": ec.id_column,
            "passthrough": passthrough,
            "text_columns": passthrough if fmt == "csv" else (),
            "isolation": ec.isolation,
        },
        **tasks,
    )
    # One light actor (no CPU reserved) so that it never starves the encoder pools. Never
    # restarted: a fresh one would have forgotten the InChIKeys seen, and let duplicates through.
    ds = ds.map_batches(
        InchikeyDeduper,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=1),
        num_cpus=0,
        max_restarts=0,
        max_task_retries=0,
    )
    for mcfg in cfg.modalities:
        ds = ds.map_batches(
            ModalityEmbedActor,
            batch_format="pyarrow",
            batch_size=ec.actor_batch_size,
            compute=ActorPoolStrategy(size=ec.concurrency),
            num_cpus=ec.num_cpus_per_actor,
            num_gpus=ec.num_gpus_per_actor,
            **actors,
            fn_constructor_kwargs={
                "config": mcfg.model_dump(mode="json"),
                "cache_path": cache_path,
                "cache_fs": cache_fs,
                "encoder_batch_size": ec.encoder_batch_size,
                "num_cpus": ec.num_cpus_per_actor,
                "use_gpu": ec.num_gpus_per_actor > 0,
            },
        )

    def uri(path: str) -> str:
        return f"s3://{path}" if isinstance(out_fs, pafs.S3FileSystem) else path

    # What is under way and what is complete, for a one-line error if storage goes away mid-run.
    written: list[str] = []
    writing: str | None = None
    try:
        doing = f"reading {ec.input} and embedding (cache {cfg.resolved_cache_dir()})"
        ds = ds.materialize()
        timings["embed_s"] = time.perf_counter() - started

        t = time.perf_counter()
        parts = ray.get(ds.select_columns(stats_columns(names, ec.keep_columns)).to_arrow_refs())
        if not parts or sum(p.num_rows for p in parts) == 0:
            raise ValueError(f"no rows read from {ec.input}")
        stats = pa.concat_tables(parts)
        summary = summarise(stats, names, ec.keep_columns)
        paths = {split: f"{out_path}/{split}" for split in ("train", "val")}
        for split, path in paths.items():
            doing, writing = f"writing {uri(path)}", uri(path)
            out_fs.delete_dir_contents(path, missing_dir_ok=True)  # a re-run replaces, never appends
            rows = ds.map_batches(
                training_rows,
                batch_format="pyarrow",
                **tasks,
                fn_kwargs={
                    "modalities": names,
                    "keep_columns": ec.keep_columns,
                    "split": split,
                    "val_fraction": cfg.data.val_fraction,
                    "seed": cfg.data.split_seed,
                },
            )
            rows.write_parquet(path, filesystem=out_fs, ray_remote_args=tasks)
            written.append(writing)
            writing = None
        quarantine_path = f"{out_path}/quarantine.parquet"
        doing, writing = f"writing {uri(quarantine_path)}", uri(quarantine_path)
        pq.write_table(summary.quarantine, quarantine_path, filesystem=out_fs)
        timings["write_s"] = time.perf_counter() - t
        written.append(writing)
        writing = None
        if ec.compact_cache:
            doing = f"compacting the cache {cfg.resolved_cache_dir()}"
            for m in modalities:
                cache = EmbeddingCache(cache_path, m.name, m.fingerprint, m.dim, filesystem=cache_fs)
                cache.compact()
                # Shards that turned corrupt after the actors read the cache are found here.
                summary.reports[m.name]["cache_shards_corrupt"] += cache.stats.shards_corrupt
        timings["total_s"] = time.perf_counter() - started

        result = EmbedRunResult(
            train_path=uri(paths["train"]),
            val_path=uri(paths["val"]),
            quarantine_path=uri(quarantine_path),
            report_path=uri(f"{out_path}/report.json"),
            modality_dims={m.name: m.dim for m in modalities},
            fingerprints={m.name: m.fingerprint for m in modalities},
            counts=summary.counts,
            reports=summary.reports,
            quarantined_by_reason=summary.quarantined_by_reason,
            timings=timings,
        )
        doing, writing = f"writing {result.report_path}", result.report_path
        with out_fs.open_output_stream(f"{out_path}/report.json") as stream:
            stream.write(json.dumps(asdict(result), indent=2).encode())
    except Exception as exc:
        if writing is not None:
            partial = f"{writing} may be partly written"
        else:
            partial = "no output was being written"
        partial += (f"; complete: {', '.join(written)}" if written else "; nothing else was written") + (
            "; cache shards already stored are whole and a re-run reuses them"
        )
        lost = storage_lost(exc, doing, partial)
        if lost is None:
            raise
        raise lost from None
    c = summary.counts
    _say(
        f"read {c['input']}, featurised {c['featurised']}, duplicates {c['duplicates']}, "
        f"usable {c['usable']}, quarantined {c['quarantined']}"
    )
    for m, r in summary.reports.items():
        _say(
            f"{m}: embedded {r['embedded']}, cache hits {r['cache_hits']}, encoded {r['encoded']}, "
            f"forward passes {r['forward_passes']}, rejected {r['rejected']}, "
            f"corrupt cache shards {r['cache_shards_corrupt']} (set aside, rows recomputed)"
        )
    _say(f"quarantined by reason: {summary.quarantined_by_reason}")
    _say(f"wrote {result.train_path}, {result.val_path}, {result.quarantine_path} in {timings['total_s']:.1f} s")
    if c["usable"] == 0:  # the report and quarantine above say why; no training table exists
        raise ValueError(
            f"no usable molecules in {ec.input}: all {c['input']} rows quarantined "
            f"{summary.quarantined_by_reason}; see {result.quarantine_path}"
        )
    return result
