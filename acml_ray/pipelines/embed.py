"""`acml embed`: the embedding stage on Ray Data, molecule table -> training table.

`run_embed_pipeline` (`acml embed`, `jobs/embed.py`) chains the per-batch blocks of
`acml_ray.pipelines.embed_batches`: read Parquet or CSV shards from a path or s3://, featurise
with tasks, deduplicate in one light actor, run each encoder as an actor pool, and write Parquet
shards split train/val by a hash of the InChIKey, the quarantine table and `report.json` (an
`EmbeddedData`, counted by `acml_ray.pipelines.embed_report.summarise`).
`acml_ray.pipelines.prepare` runs the same blocks in the driver for small data (`acml demo`).
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from acml_ray.cache import EmbeddingCache
from acml_ray.chem import GraphFeaturizer
from acml_ray.config import ACMLConfig
from acml_ray.data.csv_source import csv_read_options, read_csv_dataset
from acml_ray.modalities import build_modality
from acml_ray.pipelines.embed_batches import (
    InchikeyDeduper,
    ModalityEmbedActor,
    featurise_table,
    modality_input_columns,
    stats_columns,
    training_rows,
)
from acml_ray.pipelines.embed_report import EmbeddedData, summarise
from acml_ray.storage import check_access, join, storage_lost


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


def _rows_written(fs: pafs.FileSystem, path: str) -> int:
    """Rows in the Parquet files under `path`, counted from their footers (no data is read);
    0 when nothing was written there (Ray Data writes no file for an empty split)."""
    import pyarrow.dataset as pads

    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return 0
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


def _say(message: str) -> None:
    print(f"[acml embed] {message}", flush=True)


def _remote_args_allowed(run: Callable[[ACMLConfig], EmbeddedData]) -> Callable[[ACMLConfig], EmbeddedData]:
    """Ray 2.60 deprecates remote args such as `max_retries` / `max_restarts` on reads, maps and
    writes, yet offers no other way to bound a task's retries or an actor's restarts (its
    default is forever): keep them, without the warning, until the pin passes Ray 2.63."""

    @functools.wraps(run)
    def wrapper(cfg: ACMLConfig) -> EmbeddedData:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            return run(cfg)

    return wrapper


def fit_actor_cpus(requested: float, n_actors: int, cluster_cpus: float, reserve: float = 1.0) -> float:
    """CPUs each encoder actor may reserve so that `reserve` CPUs stay free for the read and
    featurise tasks.

    Ray Data starts every actor pool before it runs a task: actors that reserve every CPU leave
    none for the tasks that feed them, and the pipeline waits forever (four modalities at 0.5 CPU
    on a 2-CPU node). Shrinking the reservation changes only scheduling; an actor's torch threads
    stay as configured (`embed.threads_per_actor`).
    """
    if requested <= 0 or n_actors * requested + reserve <= cluster_cpus:
        return requested
    return max(0.0, (cluster_cpus - reserve) / n_actors)


@_remote_args_allowed
def run_embed_pipeline(cfg: ACMLConfig) -> EmbeddedData:
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
        # SMILES are small: Ray Data reads files of molecules as blocks of up to 128 MiB (16
        # files of 113k molecules came as one block), so featurisation ran as one task however
        # many CPUs there were, and each encoder took the whole table in one call that reported
        # no progress for over 30 minutes (Ray Data's stall timeout stopped the job). Blocks of
        # featurize_batch_size rows are one featurise task each, and stream through the actors.
        ds = ds.repartition(target_num_rows_per_block=ec.featurize_batch_size)
    finally:
        context.execution_options.preserve_order = previous
    _say(f"reading {fmt} from {ec.input}; modalities {names}; cache {cfg.resolved_cache_dir()}")
    n_actors = len(modalities) * ec.concurrency
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0.0))
    actor_cpus = fit_actor_cpus(ec.num_cpus_per_actor, n_actors, cluster_cpus)
    if actor_cpus != ec.num_cpus_per_actor:
        _say(
            f"{n_actors} encoder actors at embed.num_cpus_per_actor={ec.num_cpus_per_actor} would hold "
            f"{n_actors * ec.num_cpus_per_actor:g} of the cluster's {cluster_cpus:g} CPUs and starve "
            f"featurisation: each reserves {actor_cpus:.3g} instead"
        )
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
            num_cpus=actor_cpus,
            num_gpus=ec.num_gpus_per_actor,
            **actors,
            fn_constructor_kwargs={
                "config": mcfg.model_dump(mode="json"),
                "cache_path": cache_path,
                "cache_fs": cache_fs,
                "encoder_batch_size": ec.encoder_batch_size,
                "num_threads": ec.threads_per_actor or max(1, int(ec.num_cpus_per_actor)),
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
        written_rows: dict[str, int] = {}
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
            written_rows[split] = _rows_written(out_fs, path)  # what a user's training will read
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

        result = EmbeddedData(
            train_path=uri(paths["train"]),
            val_path=uri(paths["val"]),
            quarantine_path=uri(quarantine_path),
            report_path=uri(f"{out_path}/report.json"),
            modality_dims={m.name: m.dim for m in modalities},
            fingerprints={m.name: m.fingerprint for m in modalities},
            counts=summary.counts | written_rows,
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
    c = result.counts
    _say(
        f"read {c['input']}, featurised {c['featurised']}, duplicates {c['duplicates']}, "
        f"usable {c['usable']} (train {c['train']}, val {c['val']}), quarantined {c['quarantined']}"
    )
    for name, r in summary.reports.items():
        _say(
            f"{name}: embedded {r['embedded']}, cache hits {r['cache_hits']}, encoded {r['encoded']}, "
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
