"""Evaluate a trained model: retrieval, isomer discrimination, interpretability and downstream
property prediction, written to ``report.json``, ``report.md`` and PNG plots, and logged to
MLflow when tracking is on."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from acml_ray.chem import GraphFeaturizer, Rejected
from acml_ray.config import ACMLConfig, DataSourceConfig, EvalConfig
from acml_ray.data.paired import PairedExamples, emb_column
from acml_ray.data.sources import SHIPPED_SOURCES, load_source
from acml_ray.evaluate.downstream import check_tasks, downstream_report
from acml_ray.evaluate.embeddings import graph_embeddings, paired_from_smiles, project_examples
from acml_ray.evaluate.interpret import descriptor_table, interpret_report
from acml_ray.evaluate.isomers import build_isomer_sets, isomer_report
from acml_ray.evaluate.report import (
    plot_correlation_heatmap, plot_projection, plot_retrieval_curves, render_markdown,
)
from acml_ray.evaluate.retrieval import retrieval_report
from acml_ray.model.acml import ACMLModel
from acml_ray.model.serialization import MODEL_FILE, load_model
from acml_ray.modalities import build_modality

log = logging.getLogger(__name__)

_MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:")


def retrieval_summary(model: ACMLModel, examples: PairedExamples, cfg: EvalConfig) -> dict:
    """``{direction: {"pool_<P>": {...}, "pool_all": {...}}}`` for every modality of `model`."""
    summary: dict = {}
    for modality in model.modalities:
        if modality not in examples.masks:
            continue
        mod, graph = project_examples(model, examples, modality)
        if len(mod) < 2:
            continue
        summary.update(retrieval_report(modality, mod, graph, cfg.top_k, cfg.pool_size,
                                        cfg.pool_repeats, cfg.seed, cfg.chunk_mib))
    return summary


def _is_best_folder(ref: str) -> bool:
    """True for ``<run>/best`` of a Train run: a BEST.json pointer naming the current best
    folder, and no model file of its own (a copied best model has both)."""
    import pyarrow.fs as pafs

    from acml_ray.storage import join, resolve_filesystem

    fs, path = resolve_filesystem(ref.removeprefix("file://"))
    marker, model = fs.get_file_info([join(path, "BEST.json"), join(path, MODEL_FILE)])
    return marker.type == pafs.FileType.File and model.type == pafs.FileType.NotFound


def resolve_model(ref: str, workdir: str | Path, tracking_uri: str | None = None
                  ) -> tuple[Path, Path | None]:
    """A run folder, a model folder, a Train run's ``best`` folder, an ``s3://`` location or an
    MLflow artifact URI (``runs:/ID/model``, ``models:/NAME@alias``) -> (local model dir, local
    run dir or None).

    Remote models are copied into `workdir` (only ``model.pt`` and the held-out table)."""
    if ref.startswith(_MLFLOW_SCHEMES):
        import mlflow

        ref = mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(workdir),
                                                  tracking_uri=tracking_uri)
    elif _is_best_folder(ref):
        from acml_ray.train.best import download_best  # imports Ray: only for this kind of reference

        local = Path(workdir) / "best"
        download_best(ref, local)
        return local, None
    elif ref.startswith("s3://"):
        import pyarrow.fs as pafs

        from acml_ray.storage import join, resolve_filesystem

        local = Path(workdir) / "remote_run"
        for rel in (MODEL_FILE, f"model/{MODEL_FILE}", "data/val.parquet"):
            fs, path = resolve_filesystem(join(ref, rel))
            if fs.get_file_info(path).type == pafs.FileType.File:
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(path, str(local / rel), source_filesystem=fs)
        ref = str(local)
    path = Path(ref.removeprefix("file://"))
    if (path / MODEL_FILE).is_file():
        return path, (path.parent if path.name == "model" else None)
    if (path / "model" / MODEL_FILE).is_file():
        return path / "model", path
    raise FileNotFoundError(f"no {MODEL_FILE} in {ref} or {ref}/model")


def _prepared_table(location: str) -> pa.Table | None:
    """A Parquet file or folder of shards (path or s3://), or None if `location` is not one."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    from acml_ray.storage import resolve_filesystem

    fs, path = resolve_filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory or (info.type == pafs.FileType.File and path.endswith(".parquet")):
        try:
            return pads.dataset(path, filesystem=fs, format="parquet").to_table()
        except (pa.ArrowInvalid, OSError):  # a folder of CSV molecules, not a prepared table
            return None
    return None


def held_out_examples(data: str | None, run_dir: Path | None, run_cfg: ACMLConfig,
                      cache_dir: str | None) -> tuple[PairedExamples, list[str], str, int]:
    """Held-out molecules for retrieval and interpretability -> (examples, smiles, description,
    number of input rows rejected by the featuriser or every modality).

    `data` may be a prepared table (``emb__<modality>`` columns), a molecule table by path or
    URI with a `smiles` column, or a shipped source name; default: the run's ``data/val.parquet``.
    Fewer than two usable molecules is an error: no ranking means anything then.
    """
    if data is None:
        if run_dir is not None and (run_dir / "data" / "val.parquet").is_file():
            data = str(run_dir / "data" / "val.parquet")
        elif run_cfg.train.val_table:
            data = run_cfg.train.val_table  # the table the run validated on (path or s3://)
        else:
            raise FileNotFoundError("no held-out data: pass --data (the run has no data/val.parquet "
                                    "and no train.val_table)")
    table = _prepared_table(data) if data not in SHIPPED_SOURCES else None
    names = [m.name for m in run_cfg.modalities if table is not None and emb_column(m.name) in table.column_names]
    if names:  # a prepared table: its cached vectors are the held-out examples
        examples, smiles, rejected = PairedExamples.from_table(table, names), table.column("smiles").to_pylist(), 0
    else:  # molecules: featurise and embed them like the run did
        source = (DataSourceConfig(name=data) if data in SHIPPED_SOURCES
                  else DataSourceConfig(name=Path(data).stem, path=data))
        given = load_source(source)["smiles"].tolist()
        examples, kept = paired_from_smiles(given, run_cfg, cache_dir)
        smiles, rejected = [given[i] for i in kept], len(given) - len(kept)
    if len(examples) < 2:
        raise ValueError(f"{data}: {len(examples)} usable held-out molecule(s) "
                         f"({rejected} rejected); retrieval needs at least 2")
    if rejected:
        log.warning("%s: %d of %d held-out rows rejected (unparsable, filtered or without any "
                    "modality input)", data, rejected, rejected + len(examples))
    return examples, smiles, data, rejected


def _fingerprint_check(run_dir: Path | None, run_cfg: ACMLConfig) -> dict:
    """Current frozen-encoder fingerprints beside the ones the run was trained with; a
    mismatch means new embeddings come from a different encoder than the projection heads saw."""
    trained: dict = {}
    if run_dir is not None and (run_dir / "data" / "prepare.json").is_file():
        trained = json.loads((run_dir / "data" / "prepare.json").read_text()).get("fingerprints", {})
    current = {m.name: build_modality(m.name, m.options).fingerprint for m in run_cfg.modalities}
    mismatched = [m for m in current if m in trained and trained[m] != current[m]]
    for m in mismatched:
        log.warning("modality %s: encoder fingerprint differs from the one the run trained with", m)
    return {"current": current, "trained": trained, "mismatched": mismatched}


def evaluate_run(model_ref: str, cfg: EvalConfig, out_dir: str | Path, data: str | None = None,
                 cache_dir: str | None = None) -> dict:
    """Run the configured sections and write ``report.json``, ``report.md``, PNGs and
    ``splits/`` under `out_dir`; returns the report (with ``mlflow_run_id`` when logged)."""
    out = Path(out_dir)
    timings: dict[str, float] = {}
    if "downstream" in cfg.sections:
        check_tasks(cfg.downstream.tasks)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, run_dir = resolve_model(model_ref, tmp, cfg.tracking_uri)
        model, run_cfg, extra = load_model(model_dir)
    out.mkdir(parents=True, exist_ok=True)  # only once the model is known to load
    report: dict = {"model": model_ref, "model_epoch": extra.get("epoch"), "modalities": model.modalities,
                    "top_k": cfg.top_k, "pool_size": cfg.pool_size, "eval_config": cfg.model_dump(mode="json"),
                    "encoder_fingerprints": _fingerprint_check(run_dir, run_cfg), "plots": []}
    cache = cache_dir or (str(run_dir / "cache") if run_dir is not None and (run_dir / "cache").is_dir()
                          else None)
    needs_held_out = {"retrieval", "interpret"} & set(cfg.sections)
    examples = smiles = None
    if needs_held_out:
        examples, smiles, described, rejected = held_out_examples(data, run_dir, run_cfg, cache)
        report["held_out"], report["held_out_molecules"] = described, len(examples)
        report["held_out_rejected"] = rejected

    if "retrieval" in cfg.sections:
        t = time.perf_counter()
        report["retrieval"] = retrieval_summary(model, examples, cfg)
        if report["retrieval"]:
            plot_retrieval_curves(report["retrieval"], cfg.top_k, out / "retrieval_curves.png")
            report["plots"].append("retrieval_curves.png")
        timings["retrieval_s"] = time.perf_counter() - t
    if "isomers" in cfg.sections:
        t = time.perf_counter()
        sets = build_isomer_sets(cfg.isomers, cfg.seed)
        report["isomers"] = isomer_report(model, run_cfg, sets, cache)
        timings["isomers_s"] = time.perf_counter() - t
    if "interpret" in cfg.sections:
        t = time.perf_counter()
        icfg = cfg.interpret
        if icfg.source is not None:
            # Only graphs are needed here: featurise, no modality embedding.
            mol_smiles = load_source(icfg.source)["smiles"].tolist()
            results = GraphFeaturizer(run_cfg.featurizer).featurize_batch(mol_smiles)
            kept = [(s, r) for s, r in zip(mol_smiles, results) if not isinstance(r, Rejected)]
            graphs, ismiles = [r.to_pyg() for _, r in kept], [s for s, _ in kept]
        else:
            graphs, ismiles = examples.graphs, smiles
        emb = graph_embeddings(model, graphs)
        descriptors = descriptor_table(ismiles)
        report["interpret"] = interpret_report(emb, ismiles, icfg.n_components, icfg.cv_folds, cfg.seed,
                                               descriptors=descriptors)
        plot_correlation_heatmap(report["interpret"], out / "correlation_heatmap.png")
        colour = descriptors.get(icfg.colour_by)
        if colour is None:
            raise ValueError(f"interpret.colour_by {icfg.colour_by!r} is not a descriptor")
        plot_projection(emb, colour, icfg.colour_by, out / "embedding_projection.png")
        report["plots"] += ["correlation_heatmap.png", "embedding_projection.png"]
        timings["interpret_s"] = time.perf_counter() - t
    if "downstream" in cfg.sections:
        t = time.perf_counter()
        report["downstream"] = downstream_report(model, run_cfg, cfg.downstream, out / "splits", cfg.seed)
        timings["downstream_s"] = time.perf_counter() - t
    report["timings"] = timings

    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "report.md").write_text(render_markdown(report))
    run_id = log_to_mlflow(out, report, cfg)
    if run_id is not None:
        report["mlflow_run_id"] = run_id
    return report


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def numeric_leaves(tree: dict, prefix: str = "") -> dict[str, float]:
    """Flatten nested dicts to ``{"a/b/c": float}`` (lists and NaN skipped), with names
    MLflow accepts (``->`` becomes ``_to_``; other odd characters ``_``)."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(numeric_leaves(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            flat[re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name.replace("->", "_to_"))] = float(value)
    return flat


def log_to_mlflow(out_dir: str | Path, report: dict, cfg: EvalConfig) -> str | None:
    """Log the report's numbers as metrics and `out_dir` as artifacts (under ``evaluation/``).

    Tracking is on when `cfg.tracking_uri`, ``$MLFLOW_TRACKING_URI`` or `cfg.mlflow_run_id` is
    set, or an MLflow run is active. Target run: `cfg.mlflow_run_id`, else the active run, else
    a new run in `cfg.mlflow_experiment`. Returns the run id, or None when tracking is off.
    """
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    active = None
    if "mlflow" in sys.modules:  # an active run can only exist if mlflow is already imported
        active = sys.modules["mlflow"].active_run()
    if not uri and cfg.mlflow_run_id is None and active is None:
        return None
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id, created = cfg.mlflow_run_id or (active.info.run_id if active else None), False
    if run_id is None:
        experiment = client.get_experiment_by_name(cfg.mlflow_experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(cfg.mlflow_experiment))
        run_id, created = client.create_run(experiment_id, run_name="evaluate").info.run_id, True
    sections = {k: report[k] for k in ("retrieval", "isomers", "interpret", "downstream") if k in report}
    now = int(time.time() * 1000)
    metrics = [Metric(f"eval/{k}", v, now, 0) for k, v in numeric_leaves(sections).items()]
    for start in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    client.log_artifacts(run_id, str(out_dir), artifact_path="evaluation")
    if created:
        client.set_terminated(run_id)
    log.info("logged evaluation to MLflow run %s (%s)", run_id, mlflow.get_tracking_uri() if not uri else uri)
    return run_id


__all__ = ["evaluate_run", "held_out_examples", "log_to_mlflow", "numeric_leaves", "resolve_model",
           "retrieval_summary"]
