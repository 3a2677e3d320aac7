"""Evaluate a trained model: retrieval, isomer discrimination, interpretability and downstream
property prediction, written to ``report.json``, ``report.md`` and PNG plots, and logged to
MLflow when tracking is on."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from acml_ray.chem import GraphFeaturizer, Rejected, reason_kind
from acml_ray.config import ACMLConfig, DataSourceConfig, EvalConfig
from acml_ray.data.paired import PairedExamples, emb_column
from acml_ray.data.sources import SHIPPED_SOURCES, load_source
from acml_ray.evaluate.downstream import check_tasks, downstream_report
from acml_ray.evaluate.embeddings import graph_embeddings, paired_from_smiles, project_examples
from acml_ray.evaluate.interpret import descriptor_table, interpret_report
from acml_ray.evaluate.isomers import build_isomer_sets, isomer_report
from acml_ray.evaluate.progress import Progress
from acml_ray.evaluate.report import (
    plot_correlation_heatmap,
    plot_projection,
    plot_retrieval_curves,
    render_markdown,
)
from acml_ray.evaluate.retrieval import retrieval_report
from acml_ray.modalities import build_modality
from acml_ray.model.acml import ACMLModel
from acml_ray.model.serialization import load_model, resolve_model

log = logging.getLogger(__name__)

# `acml embed`'s quarantine columns (mol_id, input, stage, reason) plus the section that
# rejected the row (retrieval, downstream:<task>).
QUARANTINE_SCHEMA = pa.schema(
    [
        ("mol_id", pa.string()),
        ("input", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("section", pa.string()),
    ]
)


def retrieval_summary(model: ACMLModel, examples: PairedExamples, cfg: EvalConfig) -> dict:
    """``{direction: {"pool_<P>": {...}, "pool_all": {...}}}`` for every modality of `model`."""
    summary: dict = {}
    for modality in model.modalities:
        if modality not in examples.masks:
            continue
        mod, graph = project_examples(model, examples, modality)
        if len(mod) < 2:
            continue
        summary.update(
            retrieval_report(modality, mod, graph, cfg.top_k, cfg.pool_size, cfg.pool_repeats, cfg.seed, cfg.chunk_mib)
        )
    return summary


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


@dataclass
class HeldOut:
    """Held-out molecules for retrieval and interpretability, and what happened to the input:
    rows quarantined with their reason, and the overlap with the model's training set."""

    examples: PairedExamples
    smiles: list[str]
    description: str
    rejected: int
    quarantine: list[dict] = field(default_factory=list)
    overlap: dict = field(default_factory=dict)


def training_inchikeys(run_dir: Path | None, run_cfg: ACMLConfig) -> tuple[set[str] | None, str | None]:
    """InChIKeys of the molecules the model trained on -> (keys, table location), or (None,
    None) when the run's training table is not known or not reachable from here."""
    import pyarrow.dataset as pads

    from acml_ray.storage import resolve_filesystem

    own = run_dir / "data" / "train.parquet" if run_dir is not None else None
    location = str(own) if own is not None and own.is_file() else run_cfg.train.train_table
    if location is None:
        return None, None
    try:
        fs, path = resolve_filesystem(location)
        keys = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=["inchikey"])
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        log.warning("training table %s not readable here (%s): overlap with it not checked", location, exc)
        return None, None
    return set(keys.column("inchikey").drop_null().to_pylist()), location


def _row(mol_id: str, given: str, stage: str, reason: str, section: str) -> dict:
    return {"mol_id": mol_id, "input": str(given)[:300], "stage": stage, "reason": reason, "section": section}


def held_out_examples(
    data: str | None,
    run_dir: Path | None,
    run_cfg: ACMLConfig,
    cache_dir: str | None,
    exclude_training: bool | None = None,
    progress: bool = False,
) -> HeldOut:
    """Held-out molecules for retrieval and interpretability.

    `data` may be a prepared table (``emb__<modality>`` columns), a molecule table by path or
    URI with a `smiles` column, or a shipped source name; default: the run's ``data/val.parquet``.
    Molecules are featurised and embedded like the run did (new vectors go to `cache_dir`);
    unparsable, filtered and duplicate (same InChIKey) rows are quarantined with their reason.
    The overlap with the model's training set (by InChIKey) is always counted; with
    `exclude_training` (default: whenever the training table is known) those molecules are
    dropped, so a user's gallery is not scored on molecules the model has seen.
    Fewer than two usable molecules is an error: no ranking means anything then.
    """
    if data is None:
        if run_dir is not None and (run_dir / "data" / "val.parquet").is_file():
            data = str(run_dir / "data" / "val.parquet")
        elif run_cfg.train.val_table:
            data = run_cfg.train.val_table  # the table the run validated on (path or s3://)
        else:
            raise FileNotFoundError(
                "no held-out data: pass --data (the run has no data/val.parquet and no train.val_table)"
            )
    train_keys, train_location = training_inchikeys(run_dir, run_cfg)
    if exclude_training and train_keys is None:
        raise ValueError(
            "exclude_training: the model's training table is not known (no data/train.parquet "
            "in the run folder, no train.train_table in its config); pass --no-exclude-training"
        )
    exclude = train_keys is not None if exclude_training is None else exclude_training
    section = "retrieval"
    quarantine: list[dict] = []
    table = _prepared_table(data) if data not in SHIPPED_SOURCES else None
    names = [m.name for m in run_cfg.modalities if table is not None and emb_column(m.name) in table.column_names]
    if table is not None and names:  # a prepared table: its cached vectors are the held-out examples
        keys = table.column("inchikey").to_pylist() if "inchikey" in table.column_names else [None] * table.num_rows
        seen = [k in train_keys for k in keys] if train_keys is not None else [False] * len(keys)
        if exclude and any(seen):
            quarantine += [
                _row(
                    keys[i] or f"row {i}",  # always a key: only rows whose key is in the training set are here
                    table.column("smiles")[i].as_py(),
                    "exclude_training",
                    "in the model's training set (InChIKey)",
                    section,
                )
                for i in np.flatnonzero(seen)
            ]
            table = table.filter(pa.array([not x for x in seen]))
        examples, smiles = PairedExamples.from_table(table, names), table.column("smiles").to_pylist()
        n_gallery, n_seen = len(keys), int(sum(seen))
    else:  # molecules: featurise and embed them like the run did
        source = (
            DataSourceConfig(name=data)
            if data in SHIPPED_SOURCES
            else DataSourceConfig(name=Path(data).stem, path=data)
        )
        given = load_source(source)["smiles"].tolist()
        # Featurised here for the reasons and InChIKeys (paired_from_smiles featurises the kept
        # rows again: well under a millisecond per molecule, against an encoder pass).
        results = GraphFeaturizer(run_cfg.featurizer).featurize_batch(given)
        first: dict[str, int] = {}
        keep: list[int] = []
        n_seen = 0
        for i, r in enumerate(results):
            if isinstance(r, Rejected):
                quarantine.append(_row(f"row {i}", given[i], "featurise", r.reason, section))
            elif r.inchikey in first:
                quarantine.append(
                    _row(
                        f"row {i}",
                        given[i],
                        "deduplicate",
                        f"duplicate InChIKey {r.inchikey} (row {first[r.inchikey]})",
                        section,
                    )
                )
            else:
                first[r.inchikey] = i
                in_training = train_keys is not None and r.inchikey in train_keys
                n_seen += in_training
                if in_training and exclude:
                    quarantine.append(
                        _row(
                            f"row {i}", given[i], "exclude_training", "in the model's training set (InChIKey)", section
                        )
                    )
                else:
                    keep.append(i)
        n_gallery = len(first)
        examples, _ = paired_from_smiles([given[i] for i in keep], run_cfg, cache_dir, progress=progress)
        smiles = [given[i] for i in keep]
        if examples.masks:
            usable = np.any(np.stack([m.numpy() for m in examples.masks.values()]), axis=0)
            quarantine += [
                _row(f"row {keep[j]}", smiles[j], "embed", "no modality could embed it", section)
                for j in np.flatnonzero(~usable)
            ]
    rejected = sum(q["stage"] != "exclude_training" for q in quarantine)
    n_input = len(keys) if names else len(given)
    fraction = n_seen / n_gallery if n_gallery else 0.0
    overlap = {
        "training_table": train_location,
        "checked": train_keys is not None,
        "gallery": n_gallery,
        "in_training": n_seen,
        "fraction": fraction,
        "excluded": bool(exclude),
        "dropped": n_seen if exclude else 0,
    }
    if train_keys is not None and n_seen:
        log.warning(
            "%s: %d of %d molecules (%.0f %%) are in the model's training set: %s",
            data,
            n_seen,
            n_gallery,
            100 * fraction,
            "dropped (exclude_training)" if exclude else "kept (--no-exclude-training): retrieval scores are inflated",
        )
    if len(examples) < 2:
        raise ValueError(
            f"{data}: {len(examples)} usable held-out molecule(s) "
            f"({rejected} rejected, {overlap['dropped']} in the training set); retrieval needs at least 2"
        )
    if rejected:
        log.warning(
            "%s: %d of %d held-out rows rejected (unparsable, filtered, duplicate or without any "
            "modality input): see quarantine.parquet",
            data,
            rejected,
            n_input,
        )
    return HeldOut(examples, smiles, data, rejected, quarantine, overlap)


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


def default_out_dir(model_ref: str) -> Path:
    """``./evaluation-<run>`` for a model reference: the run folder's name (``runs/demo`` and
    ``runs/demo/model`` -> ``evaluation-demo``), ``NAME-alias`` for ``models:/NAME@alias``, the
    run id for ``runs:/ID/...``. Never inside the run folder, so new data never writes there."""
    ref = model_ref.rstrip("/")
    if ref.startswith("models:/"):
        name = ref.removeprefix("models:/")
    elif ref.startswith("runs:/"):
        name = ref.removeprefix("runs:/").split("/")[0]
    else:
        for prefix in ("s3://", "file://", "mlflow-artifacts:"):
            ref = ref.removeprefix(prefix)
        parts = [p for p in ref.split("/") if p and p != "."]
        while len(parts) > 1 and parts[-1] in ("model", "best"):
            parts.pop()
        name = parts[-1] if parts else "model"
    return Path("evaluation-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "model"))


class _Created:
    """What an evaluation creates under its output folder and cache, removed if it fails:
    a folder that did not exist goes entirely; in one that did, only the new files go."""

    def __init__(self, *folders: Path | None) -> None:
        self.before = {f: (set(f.rglob("*")) if f.exists() else None) for f in folders if f is not None}

    def remove(self) -> None:
        for folder, before in self.before.items():
            if before is None:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            for path in sorted(set(folder.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def evaluate_run(
    model_ref: str,
    cfg: EvalConfig,
    out_dir: str | Path | None = None,
    data: str | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict:
    """Run the configured sections and write ``report.json``, ``report.md``, PNGs, ``splits/``
    and ``quarantine.parquet`` under `out_dir` (default `default_out_dir`); returns the report
    (with ``mlflow_run_id`` when logged).

    New embeddings (a user's gallery, isomer sets) go to `cache_dir`, default ``acml-cache``
    beside `out_dir`, never into the run folder unless asked. `progress` prints a line per
    section and per fit with the elapsed time (stderr) and embedding progress bars. A failed
    evaluation removes what it created.
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir(model_ref)
    cache = cache_dir or str(out.parent / "acml-cache")
    say = Progress(progress)
    if "downstream" in cfg.sections:
        check_tasks(cfg.downstream.tasks)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, run_dir = resolve_model(model_ref, tmp, cfg.tracking_uri)
        model, run_cfg, extra = load_model(model_dir)
    created = _Created(out, None if "://" in cache else Path(cache))
    try:
        out.mkdir(parents=True, exist_ok=True)  # only once the model is known to load
        report = _evaluate(model, run_cfg, extra, run_dir, model_ref, cfg, out, data, cache, say)
    except BaseException:
        created.remove()
        raise
    run_id = log_to_mlflow(out, report, cfg)
    if run_id is not None:
        report["mlflow_run_id"] = run_id
    return report


def _evaluate(
    model: ACMLModel,
    run_cfg: ACMLConfig,
    extra: dict,
    run_dir: Path | None,
    model_ref: str,
    cfg: EvalConfig,
    out: Path,
    data: str | None,
    cache: str,
    say: Progress,
) -> dict:
    timings: dict[str, float] = {}
    report: dict = {
        "model": model_ref,
        "model_epoch": extra.get("epoch"),
        "modalities": model.modalities,
        "top_k": cfg.top_k,
        "pool_size": cfg.pool_size,
        "eval_config": cfg.model_dump(mode="json"),
        "output": str(out),
        "cache": cache,
        "encoder_fingerprints": _fingerprint_check(run_dir, run_cfg),
        "plots": [],
    }
    say(f"model {model_ref} (epoch {extra.get('epoch')}); sections {', '.join(cfg.sections)}; output {out}")
    quarantine: list[dict] = []
    featurizer = GraphFeaturizer(run_cfg.featurizer)  # its limits bound every SMILES parse below
    held = None
    from_held_out = "held_out" in (cfg.isomers.constitutional_source, cfg.isomers.stereo_source)
    if {"retrieval", "interpret"} & set(cfg.sections) or ("isomers" in cfg.sections and from_held_out):
        with say.section("held-out data", timings):
            held = held_out_examples(data, run_dir, run_cfg, cache, cfg.exclude_training, say.enabled)
        report["held_out"], report["held_out_molecules"] = held.description, len(held.examples)
        report["held_out_rejected"], report["training_overlap"] = held.rejected, held.overlap
        quarantine += held.quarantine
        ov = held.overlap
        say(
            f"held-out {held.description}: {len(held.examples)} molecules, {held.rejected} rejected; "
            + (
                f"{ov['in_training']} of {ov['gallery']} in the training set, {ov['dropped']} dropped"
                if ov["checked"]
                else "training table unknown: overlap not checked"
            )
        )

    if "retrieval" in cfg.sections:
        with say.section("retrieval", timings):
            assert held is not None  # read above whenever retrieval or interpret is asked for
            report["retrieval"] = retrieval_summary(model, held.examples, cfg)
            if report["retrieval"]:
                plot_retrieval_curves(report["retrieval"], cfg.top_k, out / "retrieval_curves.png")
                report["plots"].append("retrieval_curves.png")
    if "isomers" in cfg.sections:
        with say.section("isomers", timings):
            sets, skipped = build_isomer_sets(
                cfg.isomers, cfg.seed, held.smiles if held is not None else None, featurizer.limits
            )
            say(f"isomers: {len(sets)} sets built, {len(skipped)} input rows skipped")
            report["isomers"], rows = isomer_report(
                model, run_cfg, sets, cache, progress=say.enabled, ks=cfg.top_k, rejected=skipped
            )
            quarantine += rows
    if "interpret" in cfg.sections:
        with say.section("interpret", timings):
            icfg = cfg.interpret
            no_graph: list[Rejected] = []
            if icfg.source is not None:
                # Only graphs are needed here: featurise, no modality embedding.
                mol_smiles = load_source(icfg.source)["smiles"].tolist()
                results = featurizer.featurize_batch(mol_smiles)
                no_graph = [r for r in results if isinstance(r, Rejected)]
                kept = [(s, r) for s, r in zip(mol_smiles, results) if not isinstance(r, Rejected)]
                graphs, ismiles = [r.to_pyg() for _, r in kept], [s for s, _ in kept]
                quarantine += [
                    _row(f"{icfg.source.name}:row {r.index}", r.input, "featurise", r.reason, "interpret")
                    for r in no_graph
                ]
            else:
                assert held is not None  # read above whenever retrieval or interpret is asked for
                graphs, ismiles = held.examples.graphs, held.smiles
            emb = graph_embeddings(model, graphs)
            # A prepared held-out table's SMILES were never featurised here: guard them too.
            descriptors = descriptor_table(ismiles, featurizer.limits)
            quarantine += [
                _row(f"molecule {r.index}", r.input, "descriptors", r.reason, "interpret") for r in descriptors.rejected
            ]
            report["interpret"] = interpret_report(
                emb, ismiles, icfg.n_components, icfg.cv_folds, cfg.seed, descriptors=descriptors, skipped=no_graph
            )
            plot_correlation_heatmap(report["interpret"], out / "correlation_heatmap.png")
            colour = descriptors.values.get(icfg.colour_by)
            if colour is None:
                raise ValueError(f"interpret.colour_by {icfg.colour_by!r} is not a descriptor")
            ok = descriptors.ok
            plot_projection(emb[ok], colour[ok], icfg.colour_by, out / "embedding_projection.png")
            report["plots"] += ["correlation_heatmap.png", "embedding_projection.png"]
    if "downstream" in cfg.sections:
        with say.section("downstream", timings):
            report["downstream"], rows = downstream_report(
                model, run_cfg, cfg.downstream, out / "splits", cfg.seed, say
            )
            quarantine += rows
    report["timings"] = timings

    table = pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA)
    pq.write_table(table, out / "quarantine.parquet")
    by = Counter((q["section"], q["stage"], reason_kind(q["reason"])) for q in quarantine)
    report["quarantine"] = {
        "file": "quarantine.parquet",
        "rows": len(quarantine),
        "by_reason": [{"section": k[0], "stage": k[1], "reason": k[2], "rows": n} for k, n in by.most_common()],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "report.md").write_text(render_markdown(report))
    say(f"wrote {out / 'report.md'} ({len(quarantine)} rows quarantined)")
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
        # A new experiment in a sqlite store keeps its artifacts beside the database, not in
        # ./mlruns under whatever folder the command ran from (MLflow's default).
        from acml_ray.tracking.mlflow_run import experiment_id

        experiment = experiment_id(client, cfg.mlflow_experiment, uri or mlflow.get_tracking_uri())
        run_id, created = client.create_run(experiment, run_name="evaluate").info.run_id, True
    sections = {k: report[k] for k in ("retrieval", "isomers", "interpret", "downstream") if k in report}
    now = int(time.time() * 1000)
    metrics = [Metric(f"eval/{k}", v, now, 0) for k, v in numeric_leaves(sections).items()]
    for start in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.log_artifacts(run_id, str(out_dir), artifact_path="evaluation")
    if created:
        client.set_terminated(run_id)
    log.info("logged evaluation to MLflow run %s (%s)", run_id, mlflow.get_tracking_uri() if not uri else uri)
    return run_id


__all__ = ["evaluate_run", "held_out_examples", "log_to_mlflow", "numeric_leaves", "resolve_model", "retrieval_summary"]
