"""Driver side of training: build the Ray `TorchTrainer` from config, run (or resume) it, and
record the run in MLflow."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray
from ray.train import DataConfig

# Ray Train v2 (Ray's default; LoggingConfig exists only there), imported from where it is
# defined: `ray.train` rebinds these names to v2 at runtime, but type checkers read its v1 ones.
from ray.train.v2.api.callback import UserCallback
from ray.train.v2.api.config import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.v2.torch.torch_trainer import TorchTrainer

from acml_ray.config import ACMLConfig, TrainConfig
from acml_ray.data.columnar import input_columns
from acml_ray.data.paired import emb_column
from acml_ray.model.acml import ModelFactory
from acml_ray.storage.filesystem import join, resolve_filesystem
from acml_ray.tracking import TrackingRun, start_run
from acml_ray.train.best import download_best
from acml_ray.train.loop import SORT_KEYS, STATE_FILE, BatchCallback, train_loop_per_worker


@dataclass
class TrainResult:
    """Where the trained model is and how it scored."""

    best_model_dir: Path  # local copy of the run's best model (acml_ray.train.best): model.pt, history.json, BEST.json
    history: list[dict]  # per-epoch metrics (rank 0's validation included)
    best_metrics: dict
    final_metrics: dict  # the last epoch's metrics
    run_uri: str  # the Ray run folder (local path or s3://): checkpoints and best/
    mlflow_run_id: str | None = None
    stopped_early: bool = False


def table_locations(cfg: ACMLConfig, train_data: str | None, val_data: str | None) -> tuple[str, str]:
    """Training/validation table locations: arguments > ``train.*_table`` > OUTPUT/data/*.parquet.

    Local paths come back absolute, so that a config recording them stays valid from any folder.
    """
    default = Path(cfg.output_dir) / "data"
    train = train_data or cfg.train.train_table or str(default / "train.parquet")
    val = val_data or cfg.train.val_table or str(default / "val.parquet")
    return _absolute(train), _absolute(val)


def _absolute(location: str) -> str:
    return location if "://" in location else os.path.abspath(location)


def _dataset(location: str) -> pads.Dataset:
    """A training table (file or folder of Parquet shards); missing or unreadable is a clear error."""
    fs, path = resolve_filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"table not found: {location} (see --train/--val or train.train_table/train.val_table)")
    try:
        return pads.dataset(path, filesystem=fs, format="parquet")
    except pa.ArrowInvalid as exc:
        raise ValueError(f"cannot read {location} as Parquet: {exc}") from None


def modality_dims_from_table(
    location: str, modalities: list[str], dataset: pads.Dataset | None = None
) -> dict[str, int]:
    """Cached vector width per configured modality, read from the table's schema (pass the
    already opened `dataset` of `location` to skip opening it again)."""
    schema = (dataset or _dataset(location)).schema
    dims: dict[str, int] = {}
    for name in modalities:
        column = emb_column(name)
        if column not in schema.names:
            raise ValueError(
                f"{location}: no column {column!r} for modality {name!r} "
                f"(has {[n for n in schema.names if n.startswith('emb__')]})"
            )
        dims[name] = schema.field(column).type.list_size
    return dims


def run_location(cfg: ACMLConfig, run_name: str) -> str:
    """The run folder: ``train.storage_path`` (or OUTPUT/ray_results) / run name."""
    storage = cfg.train.storage_path or str(Path(cfg.output_dir).resolve() / "ray_results")
    return join(storage, run_name)


def _read_parquet(
    location: str, dataset: pads.Dataset, columns: list[str], t: TrainConfig, seed: int | None = None
) -> ray.data.Dataset:
    """A Ray Data read of `columns`; with `seed`, the files come in a seeded order that is the
    same in every epoch and after every restart (see acml_ray.train.loop, "Data order").

    Blocks are cut to ``t.block_mib``. A table of at most ``t.object_store_table_mib`` on disk is
    read once into Ray's object store (shared memory, not the workers' heaps): short epochs then
    skip Ray Data's per-epoch file listing and read tasks. Larger tables stream from the files
    every epoch."""
    from ray.data import FileShuffleConfig

    fs, path = resolve_filesystem(location)
    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=False) if seed is not None else None
    ds = ray.data.read_parquet(path, filesystem=fs, columns=columns, shuffle=shuffle)
    ds.context.target_max_block_size = int(t.block_mib * 2**20)  # read outputs are sliced to this
    size = sum(info.size or 0 for info in dataset.filesystem.get_file_info(dataset.files))
    if size <= t.object_store_table_mib * 2**20:
        ds.context.execution_options.preserve_order = True  # the file order above, kept
        ds = ds.materialize()
    return ds


def _data_config() -> DataConfig:
    """Split "train" across the workers (each streams only its share); "val" stays whole (rank 0
    streams it). Order is preserved, which makes Ray Data's split deterministic: a worker gets the
    same rows in the same order in every epoch and after a restart."""
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(datasets_to_split=["train"], execution_options=options)


def _log_split(tracking: TrackingRun, tables: dict[str, pads.Dataset]) -> None:
    """The molecules of each split (keys + SMILES) as MLflow artifacts ``split/*.csv``."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, dataset in tables.items():
            columns = [c for c in SORT_KEYS if c in dataset.schema.names]
            writer = None
            for batch in dataset.to_batches(columns=columns):  # streamed: tables may be large
                writer = writer or pacsv.CSVWriter(Path(tmp, f"{name}_ids.csv"), batch.schema)
                writer.write_batch(batch)
            if writer is None:
                pacsv.write_csv(pa.table({c: pa.array([], pa.string()) for c in columns}), Path(tmp, f"{name}_ids.csv"))
            else:
                writer.close()
        tracking.log_artifacts(tmp, "split")


def fit(
    cfg: ACMLConfig,
    train_data: str | None = None,
    val_data: str | None = None,
    modality_dims: dict[str, int] | None = None,
    run_name: str | None = None,
    resume: bool | None = False,
    batch_callbacks: list[BatchCallback] | None = None,
    callbacks: list[UserCallback] | None = None,
    mark_failed: bool = True,
    model_factory: ModelFactory | None = None,
) -> TrainResult:
    """Train with Ray Train + DeepSpeed on Parquet training tables (paths, dirs or s3:// URIs).

    Args:
        train_data, val_data: table locations (default: see `table_locations`).
        modality_dims: cached vector width per modality (default: read from the table schema).
        run_name: the run's folder under the storage path (default: ``train-<timestamp>``).
        resume: continue the run `run_name` from its latest checkpoint; without it an existing
            run folder is an error (Ray would silently resume it). None: resume if the run
            exists, else start it (a Tune trial restarted by `Tuner.restore`).
        batch_callbacks: `BatchCallback`s run on every rank after every step (e.g. a log of the
            rows each step trained on); pickled into the workers.
        callbacks: Ray Train controller callbacks, e.g. Tune's `TuneReportCallback`, which
            forwards every report (rank 0's epoch metrics) to the enclosing Tune trial.
        mark_failed: close the MLflow run as FAILED when training raises. A Tune trial passes
            False: its study closes the run with Tune's verdict instead (a trial stopped by ASHA
            fails here when Tune frees it, possibly after the study closed the run).
        model_factory: ``factory(cfg, modality_dims) -> ACMLModel``, run in every worker to build
            the model (default `ACMLModel.from_config`); pickled into the workers. The best model
            is saved as weights + config: read it back with ``load_model(dir, model_factory=...)``.
    """
    train, val = table_locations(cfg, train_data, val_data)
    # The run's config (MLflow, model.pt) names the tables it used: `acml evaluate` falls back to
    # train.val_table, and retraining from the config finds the same data.
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"train_table": train, "val_table": val})})
    names = [m.name for m in cfg.modalities]
    # Opened once, before any run is: both tables must exist and be Parquet.
    tables = {"train": _dataset(train), "val": _dataset(val)}
    modality_dims = modality_dims or modality_dims_from_table(train, names, tables["train"])
    columns = input_columns(names, tables["train"].schema.names)
    for name, dataset in tables.items():
        missing = [c for c in columns if c not in dataset.schema.names]
        if missing:
            raise ValueError(f"{train if name == 'train' else val}: the {name} table lacks columns {missing}")
    global_batch = cfg.train.batch_size * cfg.train.num_workers
    rows = tables["train"].count_rows()
    if cfg.train.drop_last and rows < global_batch:  # fail here, not inside every worker
        raise ValueError(
            f"{rows} training rows in {train} give no full global batch of "
            f"{cfg.train.batch_size} x {cfg.train.num_workers} workers: lower "
            "train.batch_size or add data"
        )
    run_name = run_name or time.strftime("train-%Y%m%d-%H%M%S")
    run_uri = run_location(cfg, run_name)
    fs, run_path = resolve_filesystem(run_uri)
    exists = fs.get_file_info(run_path).type != pafs.FileType.NotFound
    # resume=None (a Tune trial): reopen the trial's MLflow run even when its Train folder is
    # missing (the study stopped between opening the run and Ray creating the folder).
    reopen = resume is None or resume
    if resume is None:
        resume = exists
    if resume and not exists:
        raise FileNotFoundError(f"no run to resume at {run_uri}")
    if exists and not resume:
        raise FileExistsError(f"run {run_name!r} already exists at {run_uri}; resume it or pick another name")
    tracking = start_run(cfg, run_name, resume=reopen) if cfg.tracking.enabled else None

    # Everything after the MLflow run starts is inside this block, so a failure anywhere
    # (bad table, lost cluster, missing best model) marks the run FAILED instead of RUNNING
    # (unless `mark_failed` is False: a Tune study then sets the status).
    try:
        if tracking is not None and not resume:
            _log_split(tracking, tables)
        storage_fs, storage_path = resolve_filesystem(run_uri.rsplit("/", 1)[0])
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "acml": cfg.model_dump(mode="json"),
                "modality_dims": modality_dims,
                "train_rows": rows,
                "best_uri": join(run_uri, "best"),
                "tracking": tracking,
                "batch_callbacks": list(batch_callbacks or []),
                "model_factory": model_factory,
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.train.num_workers,
                use_gpu=cfg.train.use_gpu,
                resources_per_worker={"CPU": cfg.train.cpus_per_worker, **cfg.train.resources_per_worker},
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                # The latest checkpoint is always kept for resume; the best model lives in <run>/best.
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep),
                failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                callbacks=callbacks or [],
                # Ray Train logs every report and checkpoint at INFO; our epoch line is enough.
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
            datasets={
                "train": _read_parquet(train, tables["train"], columns, cfg.train, seed=cfg.train.seed),
                "val": _read_parquet(val, tables["val"], columns, cfg.train),
            },
            dataset_config=_data_config(),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error

        target = Path(cfg.output_dir) / "model"
        marker = download_best(join(run_uri, "best"), target)
        if result.checkpoint is None:  # every epoch reports one; a run that never reported has none
            raise RuntimeError(f"training run {run_uri} finished without reporting a checkpoint")
        with result.checkpoint.as_directory() as directory:
            state = json.loads(Path(directory, STATE_FILE).read_text())
        history = state["history"]
        if marker is None:
            raise RuntimeError(
                f"no epoch produced a finite {cfg.train.early_stopping_metric!r}: check "
                "train.early_stopping_metric against the metrics the run reports"
            )
        if tracking is not None:
            tracking.log_artifacts(target, "model")
            tracking.set_tags(
                {
                    "best_epoch": marker["epoch"],
                    "best_score": marker["score"],
                    "best_metric": marker["metric"],
                    "stopped_early": state["stopped_early"],
                    "run_uri": run_uri,
                }
            )
            tracking.finish()
    except BaseException:
        if tracking is not None and mark_failed:
            tracking.finish("FAILED")
        raise
    return TrainResult(
        best_model_dir=target,
        history=history,
        best_metrics=marker["metrics"],
        final_metrics=history[-1] if history else {},
        run_uri=run_uri,
        mlflow_run_id=tracking.run_id if tracking else None,
        stopped_early=state["stopped_early"],
    )
