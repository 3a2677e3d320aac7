"""`acml study`: a paper-scale ACML study as one resumable command.

The stages are the library functions behind `acml embed`, `acml train` and `acml evaluate`,
run in order on one config (`acml_ray/configs/study.yaml`), each skipped when its result is on
disk from an earlier invocation with the same settings, so an interrupted study continues where
it stopped (the embedding cache makes even a half-finished embedding cheap to redo):

1. ``input``: the configured sources (`data.sources`) as shuffled Parquet shards, minus every
   molecule of the downstream tasks (`eval.downstream.tasks`), matched on the InChIKey's
   connectivity block so that their stereoisomers and charge states are left out too. The
   left-out rows are written to ``study/excluded.parquet`` with the task that claimed them.
2. ``embed``: `run_embed_pipeline` (Ray Data) -> ``embedded/{train,val}``, split by the InChIKey
   hash (`data.val_fraction`, `data.split_seed`).
3. ``train``: `fit` (Ray Train + DeepSpeed), resumed from its last checkpoint if interrupted.
4. ``evaluate``: `evaluate_run` with every section on the held-out table.
5. ``compare``: the same evaluation of other encoders (`study.compare_models`, e.g. the demo's).
6. ``ablations``: one training per `study.ablations` entry on the same tables (optionally a
   seeded sample of `study.ablation_train_rows` rows), scored by retrieval on the whole held-out
   set.

``study/results.json`` collects every stage's figures and wall time; ``study/results.md``
renders them as the tables of docs/results.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from acml_ray.chem import InvalidInputError
from acml_ray.chem.featurizer import canonical_identity
from acml_ray.config import ACMLConfig, StudyTarget, TaskConfig, apply_overrides
from acml_ray.data.sources import load_sources

log = logging.getLogger(__name__)

STAGES = ("input", "embed", "train", "evaluate", "compare", "ablations")
ENCODER_METHODS = ("linear_probe", "finetune")  # downstream methods that use the pretrained encoder
Say = Callable[[str], None]


def _say(message: str) -> None:
    print(f"[study] {message}", flush=True)


def connectivity_key(smiles: str) -> str | None:
    """The InChIKey's first block (the skeleton: no stereo, no protonation), or None if unparsable."""
    try:
        return canonical_identity(smiles)[1].split("-")[0]
    except InvalidInputError:
        return None


def task_keys(tasks: Sequence[TaskConfig]) -> dict[str, str]:
    """``{connectivity key: task name}`` over every molecule of `tasks` (the first task wins)."""
    from acml_ray.evaluate.downstream_data import load_tasks

    keys: dict[str, str] = {}
    for task in tasks:
        for data in load_tasks(task, say=lambda _: None):
            for smiles in data.smiles:
                key = connectivity_key(smiles)
                if key is not None:
                    keys.setdefault(key, task.name)
    return keys


@dataclass
class StudyInput:
    """The molecule table `acml embed` reads, and what was left out of it."""

    path: str
    rows: int
    by_source: dict[str, int]
    excluded: int
    excluded_by_task: dict[str, int]
    excluded_path: str
    fingerprint: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def input_columns(cfg: ACMLConfig) -> list[str]:
    """Raw input columns the study's modalities read besides SMILES (``nmr13c``, ``nmr1h``, ...):
    the input stage carries them from the sources into the molecule table."""
    from acml_ray.modalities import build_modality  # cheap: encoders load on first use
    from acml_ray.pipelines.embed_batches import modality_input_columns

    return list(dict.fromkeys(modality_input_columns([build_modality(m.name, m.options) for m in cfg.modalities])))


def _input_fingerprint(cfg: ACMLConfig, columns: Sequence[str]) -> str:
    spec = {
        "sources": [s.model_dump(mode="json") for s in cfg.data.sources],
        "tasks": [t.model_dump(mode="json") for t in cfg.eval.downstream.tasks] if cfg.study.exclude_downstream else [],
        "shards": cfg.study.input_shards,
        "seed": cfg.data.split_seed,
    }
    if columns:  # only then: studies of SMILES-read modalities keep the fingerprints they recorded
        spec["columns"] = list(columns)
    return _fingerprint(spec)


def write_study_input(cfg: ACMLConfig, out: Path, say: Say = _say) -> StudyInput:
    """Stage 1: ``out/input/part-*.parquet`` (smiles, source, the modalities' other input columns
    such as ``nmr13c``) and ``out/excluded.parquet``.

    Rows are shuffled (seeded by `data.split_seed`) so that every shard, and so every training
    block, mixes the sources. Unparsable rows are kept: `acml embed` quarantines them with their
    reason, and its report counts them.
    """
    manifest = out / "input.json"
    columns = input_columns(cfg)
    fingerprint = _input_fingerprint(cfg, columns)
    if manifest.is_file():
        done = StudyInput(**json.loads(manifest.read_text()))
        if done.fingerprint == fingerprint and Path(done.path).is_dir():
            say(f"input: {done.rows} molecules from an earlier run ({done.path})")
            return done
    started = time.perf_counter()
    frame = load_sources(cfg.data.sources)
    wanted = ["smiles", "source", *columns]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the study's modalities read column(s) {missing}, which none of its data sources has "
            f"(sources: {[s.name for s in cfg.data.sources]}; columns: {sorted(map(str, frame.columns))})"
        )
    frame = frame[wanted]
    frame["smiles"] = frame["smiles"].astype(str)
    excluded_by_task: dict[str, int] = {}
    claimed = pd.Series([None] * len(frame), dtype=object)
    if cfg.study.exclude_downstream and cfg.eval.downstream.tasks:
        keys = task_keys(cfg.eval.downstream.tasks)
        say(f"input: {len(keys)} downstream molecules (connectivity keys) kept out of training")
        claimed = pd.Series([keys.get(connectivity_key(s) or "") for s in frame["smiles"]], dtype=object)
        excluded_by_task = {str(k): int(v) for k, v in claimed.dropna().value_counts().items()}
    left_out = claimed.notna().to_numpy()
    kept = frame[~left_out].sample(frac=1.0, random_state=cfg.data.split_seed).reset_index(drop=True)
    folder = out / "input"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    for i, part in enumerate(np.array_split(np.arange(len(kept)), cfg.study.input_shards)):
        if len(part):
            pq.write_table(
                pa.Table.from_pandas(kept.iloc[part], preserve_index=False), folder / f"part-{i:05d}.parquet"
            )
    excluded = frame[left_out].assign(task=claimed[left_out].to_numpy())
    excluded_path = out / "excluded.parquet"
    pq.write_table(pa.Table.from_pandas(excluded.reset_index(drop=True), preserve_index=False), excluded_path)
    result = StudyInput(
        path=str(folder),
        rows=len(kept),
        by_source={str(k): int(v) for k, v in kept["source"].value_counts().items()},
        excluded=int(left_out.sum()),
        excluded_by_task=excluded_by_task,
        excluded_path=str(excluded_path),
        fingerprint=fingerprint,
        seconds=round(time.perf_counter() - started, 1),
    )
    manifest.write_text(json.dumps(result.__dict__, indent=2))
    say(f"input: {result.rows} molecules {result.by_source}; {result.excluded} left out {excluded_by_task}")
    return result


def _stage_file(out: Path, stage: str) -> Path:
    return out / "stages" / f"{stage}.json"


def _fingerprint(*parts: Any) -> str:
    """What a stage's result depends on, hashed: a change of any part reruns the stage."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(out: Path, stage: str, fingerprint: str | None = None) -> dict | None:
    """The stage's recorded result, if it ran with these inputs (any inputs: `fingerprint` None)."""
    path = _stage_file(out, stage)
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    return done if fingerprint is None or done.get("fingerprint") == fingerprint else None


def _record(out: Path, stage: str, fingerprint: str, result: dict) -> dict:
    path = _stage_file(out, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"fingerprint": fingerprint, **result}
    path.write_text(json.dumps(result, indent=2, default=str))
    return result


def _sample_rows(tables: str, rows: int, seed: int, dest: Path) -> str:
    """A seeded sample of `rows` rows of the training shards, written once to `dest`."""
    if dest.is_file() and pq.read_metadata(dest).num_rows == rows:
        return str(dest)
    table = pads.dataset(tables, format="parquet").to_table()
    if rows >= table.num_rows:
        return tables
    pick = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=rows, replace=False))
    dest.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.take(pa.array(pick)), dest)
    return str(dest)


def embedded_fingerprints(table: str) -> dict[str, str]:
    """The frozen-encoder fingerprints `acml embed` recorded for the tables beside `table`
    (its ``report.json``), or {} when there is none."""
    report = Path(table).parent / "report.json"
    return dict(json.loads(report.read_text()).get("fingerprints", {})) if report.is_file() else {}


def held_out_for(model_ref: str, val_table: str, out: Path, tracking_uri: str | None, say: Say = _say) -> str:
    """The held-out data on which to score another model: the study's embedded table when the
    model's frozen encoders are the ones that embedded it, else its molecules alone (``smiles``,
    ``inchikey``), which the evaluation embeds with the model's own encoders (e.g. the demo's fp32
    image encoder beside the study's bf16 one): vectors of another encoder would score a model
    on inputs it was never trained on."""
    from acml_ray.modalities import build_modality
    from acml_ray.model.serialization import load_model, resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        _, run_cfg, _ = load_model(resolve_model(model_ref, tmp, tracking_uri)[0])
    table_fps = embedded_fingerprints(val_table)
    differ = [
        m.name for m in run_cfg.modalities if table_fps.get(m.name) != build_modality(m.name, m.options).fingerprint
    ]
    if not differ:
        return val_table
    molecules = pads.dataset(val_table, format="parquet").to_table(columns=["smiles", "inchikey"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "held_out_molecules.parquet"
    pq.write_table(molecules, path)
    say(
        f"compare {model_ref}: its {', '.join(differ)} encoder differs from the one that embedded the "
        f"held-out table; its {molecules.num_rows} molecules are embedded with the model's own encoders"
    )
    return str(path)


def train_and_score(
    cfg: ACMLConfig, train_table: str, val_table: str, run_name: str, sections: Sequence[str] = ("retrieval",)
) -> dict[str, Any]:
    """`fit` then `evaluate_run` (the given sections) on `val_table`; resumes an interrupted run.

    Returns the report, the wall times and where the best model is. The model and the
    evaluation go under ``cfg.output_dir`` (``model/``, ``evaluation/``).
    """
    from acml_ray.evaluate.suite import evaluate_run
    from acml_ray.tracking import resolve_tracking_uri
    from acml_ray.train import fit

    out = Path(cfg.output_dir)
    started = time.perf_counter()
    trained = fit(cfg, train_table, val_table, run_name=run_name, resume=None)
    train_s = time.perf_counter() - started
    eval_cfg = cfg.eval.model_copy(
        update={
            "sections": list(sections),
            "tracking_uri": cfg.eval.tracking_uri or resolve_tracking_uri(cfg),
            "mlflow_run_id": trained.mlflow_run_id,
        }
    )
    started = time.perf_counter()
    report = evaluate_run(str(out), eval_cfg, out / "evaluation", data=val_table, progress=False)
    return {
        "report": str(out / "evaluation" / "report.json"),
        "model_dir": str(trained.best_model_dir),
        "best_epoch": trained.best_metrics.get("epoch"),
        "epochs_run": len(trained.history),
        "stopped_early": trained.stopped_early,
        "train_s": round(train_s, 1),
        "evaluate_s": round(time.perf_counter() - started, 1),
        "retrieval": report.get("retrieval", {}),
    }


def run_study(cfg: ACMLConfig, stages: Sequence[str] = STAGES, say: Say = _say) -> dict[str, Any]:
    """Run (or continue) the study in ``cfg.output_dir``; returns ``study/results.json``'s content.

    One study process at a time per output folder: a second one fails at once with a clear error
    (two of them would each start the stages the other has not recorded yet, and train one
    model under one Ray run name). The lock is an OS file lock, so a killed study leaves none.

    A stage whose result is recorded under ``study/stages/`` with the same fingerprint (the
    config it reads, and the fingerprint of the stage it reads from) is not run again: rerunning
    the command continues, and a changed setting reruns the stages it affects (a new training
    config is a new Ray run, ``study-<fingerprint>``, never a resume of another model). `stages`
    limits the run to some stages, in STAGES order; a stage needs the ones before it to have run
    with this config.
    """
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown study stages {unknown}; choose from {list(STAGES)}")
    out = Path(cfg.output_dir) / "study"
    out.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(out / ".lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise RuntimeError(
            f"another acml study is running in {cfg.output_dir} (it holds {lock.lock_file}); "
            "wait for it to finish or stop it, or give this one another --out"
        ) from None
    try:
        return _run_stages(cfg, stages, say)
    finally:
        lock.release()


def _run_stages(cfg: ACMLConfig, stages: Sequence[str], say: Say) -> dict[str, Any]:
    """`run_study`'s work, under its lock."""
    from acml_ray.evaluate.suite import evaluate_run
    from acml_ray.pipelines.embed import run_embed_pipeline
    from acml_ray.tracking import resolve_tracking_uri
    from acml_ray.train import init_ray

    root = Path(cfg.output_dir)
    out = root / "study"
    results: dict[str, Any] = {"config": cfg.model_dump(mode="json")}
    tracking_uri = cfg.eval.tracking_uri or resolve_tracking_uri(cfg)

    def need(stage: str, fingerprint: str) -> dict:
        done = _done(out, stage, fingerprint)
        if done is None:
            raise ValueError(
                f"study stage {stage!r} has not run in {root} with this config: run it first "
                f"(acml study --stages {stage})"
            )
        return done

    if "input" in stages:
        results["input"] = write_study_input(cfg, out, say).__dict__
    elif (out / "input.json").is_file():
        results["input"] = json.loads((out / "input.json").read_text())
    elif "embed" in stages:
        raise ValueError(f"study stage 'input' has not run in {root}: run it first (acml study --stages input)")
    else:
        results["input"] = None

    def ray_up() -> None:  # only stages that run need Ray (init_ray returns if it is up)
        init_ray(use_gpu=cfg.train.use_gpu or cfg.embed.num_gpus_per_actor > 0)

    # Each stage's fingerprint covers the config it reads and the fingerprint of the stage it reads
    # from: a changed modality re-embeds and retrains, a changed eval section only re-evaluates.
    dump = cfg.model_dump(mode="json")
    embed_fp = _fingerprint(
        (results["input"] or {}).get("fingerprint"),
        dump["modalities"],
        dump["featurizer"],
        dump["data"]["val_fraction"],
        dump["data"]["split_seed"],
    )
    model_keys = ("modalities", "graph_encoder", "projection", "loss", "optimizer", "train")
    train_fp = _fingerprint(embed_fp, {k: dump[k] for k in model_keys})
    if "embed" in stages and _done(out, "embed", embed_fp) is None:
        ray_up()
        started = time.perf_counter()
        embed_cfg = cfg.model_copy(
            update={
                "embed": cfg.embed.model_copy(
                    update={"input": results["input"]["path"], "output": cfg.embed.output or str(root / "embedded")}
                )
            }
        )
        embedded = run_embed_pipeline(embed_cfg)
        _record(
            out,
            "embed",
            embed_fp,
            {
                "train": embedded.train_path,
                "val": embedded.val_path,
                "counts": embedded.counts,
                "quarantined_by_reason": embedded.quarantined_by_reason,
                "timings": embedded.timings,
                "seconds": round(time.perf_counter() - started, 1),
            },
        )
        say(f"embed: {embedded.counts}")
    later = any(s in stages for s in STAGES[2:])
    tables: dict[str, Any] = need("embed", embed_fp) if later else (_done(out, "embed", embed_fp) or {})
    results["embed"] = tables or None

    if "train" in stages and _done(out, "train", train_fp) is None:
        ray_up()
        from acml_ray.train import fit

        started = time.perf_counter()
        # One Ray run per training config: a changed config starts afresh instead of resuming a
        # checkpoint of another model; the same config resumes its last checkpoint.
        trained = fit(cfg, tables["train"], tables["val"], run_name=f"study-{train_fp[:8]}", resume=None)
        _record(
            out,
            "train",
            train_fp,
            {
                "model_dir": str(trained.best_model_dir),
                "mlflow_run_id": trained.mlflow_run_id,
                "best_epoch": trained.best_metrics.get("epoch"),
                "best_metrics": trained.best_metrics,
                "epochs_run": len(trained.history),
                "stopped_early": trained.stopped_early,
                "seconds": round(time.perf_counter() - started, 1),
            },
        )
        say(f"train: best epoch {trained.best_metrics.get('epoch')} -> {trained.best_model_dir}")
    results["train"] = _done(out, "train", train_fp)

    evaluate_fp = _fingerprint(train_fp, dump["eval"])
    if "evaluate" in stages and _done(out, "evaluate", evaluate_fp) is None:
        trained_record = need("train", train_fp)
        ray_up()
        started = time.perf_counter()
        # Evaluation logs into the training run, so one MLflow run holds the encoder's whole story.
        eval_cfg = cfg.eval.model_copy(
            update={"tracking_uri": tracking_uri, "mlflow_run_id": trained_record["mlflow_run_id"]}
        )
        evaluate_run(str(root), eval_cfg, root / "evaluation", data=tables["val"], cache_dir=cfg.resolved_cache_dir())
        _record(
            out,
            "evaluate",
            evaluate_fp,
            {"report": str(root / "evaluation" / "report.json"), "seconds": round(time.perf_counter() - started, 1)},
        )
    results["evaluate"] = _done(out, "evaluate", evaluate_fp)

    compare_sections = cfg.study.compare_sections or cfg.eval.sections
    compare_fps = {
        label: _fingerprint(embed_fp, model, dump["eval"], *([compare_sections] if cfg.study.compare_sections else []))
        for label, model in cfg.study.compare_models.items()
    }
    if "compare" in stages:
        for label, model in cfg.study.compare_models.items():
            stage = f"compare-{label}"
            if _done(out, stage, compare_fps[label]) is not None:
                continue
            ray_up()
            started = time.perf_counter()
            target = root / "compare" / label
            # The scratch GIN and the ECFP baselines do not depend on the encoder: fitted once, in
            # the study's own evaluation.
            methods = [m for m in cfg.eval.downstream.methods if m in ENCODER_METHODS]
            compare_cfg = cfg.eval.model_copy(
                update={
                    "tracking_uri": tracking_uri,
                    "downstream": cfg.eval.downstream.model_copy(update={"methods": methods}),
                    "sections": [s for s in compare_sections if methods or s != "downstream"],
                }
            )
            # Only the sections that score frozen-encoder vectors need the held-out set embedded
            # by the model's own encoders; downstream reads graphs alone.
            held_out = tables["val"]
            if {"retrieval", "isomers", "interpret"} & set(compare_cfg.sections):
                held_out = held_out_for(model, tables["val"], target, tracking_uri, say)
            evaluate_run(model, compare_cfg, target, data=held_out, cache_dir=cfg.resolved_cache_dir())
            _record(
                out,
                stage,
                compare_fps[label],
                {
                    "model": model,
                    "report": str(target / "report.json"),
                    "seconds": round(time.perf_counter() - started, 1),
                },
            )
    results["compare"] = {label: _done(out, f"compare-{label}", fp) for label, fp in compare_fps.items()}

    ablation_cfgs: dict[str, tuple[ACMLConfig, dict, str]] = {}
    for ablation in cfg.study.ablations:
        overrides = dict(ablation.overrides)
        if cfg.study.ablation_epochs:
            overrides.setdefault("train.epochs", cfg.study.ablation_epochs)
        base = cfg.model_dump(mode="json", exclude={"study"})
        run_cfg = ACMLConfig.model_validate(
            apply_overrides(base, {**overrides, "output_dir": str(root / "ablations" / ablation.name)})
        )
        run_dump = run_cfg.model_dump(mode="json")
        fp = _fingerprint(embed_fp, {k: run_dump[k] for k in (*model_keys, "eval")}, cfg.study.ablation_train_rows)
        ablation_cfgs[ablation.name] = (run_cfg, overrides, fp)
    if "ablations" in stages and cfg.study.ablations:
        train_table = tables["train"]
        if cfg.study.ablation_train_rows:
            train_table = _sample_rows(
                tables["train"],
                cfg.study.ablation_train_rows,
                cfg.data.split_seed,
                out / f"ablation-train-{cfg.study.ablation_train_rows}-{embed_fp[:8]}.parquet",
            )
        for name, (run_cfg, overrides, fp) in ablation_cfgs.items():
            stage = f"ablation-{name}"
            if _done(out, stage, fp) is not None:
                continue
            ray_up()
            say(f"ablation {name}: {overrides}")
            result = train_and_score(run_cfg, train_table, tables["val"], f"ablation-{name}-{fp[:8]}")
            _record(out, stage, fp, {**result, "overrides": overrides, "train_rows": cfg.study.ablation_train_rows})
    results["ablations"] = {name: _done(out, f"ablation-{name}", fp) for name, (_, _, fp) in ablation_cfgs.items()}

    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def _get(report: dict, path: Sequence[str]) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _f(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and value != value) else f"{value:.3f}"


def target_rows(report: dict, ablations: dict[str, dict | None], targets: Sequence[StudyTarget]) -> list[str]:
    """Markdown rows ``| claim | study | target | paper | demo |``: each target's figure in the
    study model's evaluation ``report``, and whether it is met (a bar, or an ablation's figure
    less ``within``; an ablation that has not run leaves the target unjudged)."""
    rows = []
    for t in targets:
        value = _get(report, t.metric)
        bar: float | None = t.at_least
        shown = "-" if bar is None else f">= {bar:.2f}"
        if t.versus is not None:
            theirs = _get(ablations.get(t.versus) or {}, t.metric)
            bar = None if theirs is None else theirs - t.within
            shown = f">= {t.versus} ({_f(theirs)}) - {t.within:g}"
        # The tolerance keeps "0.984 - 0.02" from missing 0.964 by a float's last bit.
        met = "" if bar is None or value is None else (" (met)" if value >= bar - 1e-12 else " (missed)")
        rows.append(f"| {t.claim} | {_f(value)}{met} | {shown} | {t.paper} | {t.demo} |")
    return rows


def _primary(kind: str) -> tuple[str, bool]:
    """The headline metric of a downstream task kind and whether higher is better."""
    return ("roc_auc", True) if kind == "classification" else ("rmse", False)


def downstream_rows(reports: dict[str, dict]) -> list[str]:
    """Markdown rows: task x (encoder, method) -> mean +- sd of the task's headline metric.

    `reports` maps an encoder label to its evaluation report; seed-free baselines (ECFP) and the
    from-scratch GIN come from the first report (they do not depend on the encoder).
    """
    lines = ["| task | metric | method | mean +- sd | runs |", "|---|---|---|---|---|"]
    first = next(iter(reports.values()), {})
    for task, block in (first.get("downstream") or {}).items():
        if "methods" not in block:
            continue
        metric, higher = _primary(block["kind"])
        arrow = "higher is better" if higher else "lower is better"
        entries: list[tuple[str, dict]] = []
        for label, report in reports.items():
            methods = (report.get("downstream") or {}).get(task, {}).get("methods", {})
            for method, m in methods.items():
                encoder_free = method not in ENCODER_METHODS
                if encoder_free and report is not first:
                    continue
                entries.append((method if encoder_free else f"{label} {method}", m))
        for name, m in entries:
            stats = m.get(metric) or {}
            sd = "" if stats.get("sd") is None else f" +- {_f(stats['sd'])}"
            runs = "1" if m.get("deterministic") else str(m.get("runs", len(stats.get("values", []))))
            lines.append(f"| {task} | {metric} ({arrow}) | {name} | {_f(stats.get('mean'))}{sd} | {runs} |")
    return lines


def downstream_verdict(report: dict) -> list[str]:
    """Per task: does the fine-tuned study encoder beat the scratch GIN, and is it level with ECFP+RF
    (within one sd of the pair's larger sd)?"""
    lines = []
    for task, block in (report.get("downstream") or {}).items():
        methods = block.get("methods") or {}
        if not {"finetune", "scratch", "ecfp_rf"} <= set(methods):
            continue
        metric, higher = _primary(block["kind"])
        ft, sc, rf = (methods[m][metric] for m in ("finetune", "scratch", "ecfp_rf"))
        sign = 1 if higher else -1
        beats = sign * (ft["mean"] - sc["mean"]) > 0
        spread = max(ft.get("sd") or 0.0, rf.get("sd") or 0.0)
        level = sign * (ft["mean"] - rf["mean"]) >= -spread
        lines.append(
            f"| {task} | {metric} | {_f(ft['mean'])} | {_f(sc['mean'])} | {_f(rf['mean'])} | "
            f"{'yes' if beats else 'no'} | {'yes' if level else 'no'} |"
        )
    return lines


def write_results_markdown(results: dict[str, Any], cfg: ACMLConfig) -> Path:
    """Render ``study/results.md`` from what the stages recorded (missing stages are marked)."""
    from acml_ray.evaluate.report import render_markdown

    root = Path(cfg.output_dir)
    out = root / "study" / "results.md"
    lines = ["# ACML study results", "", f"Output folder `{root}`; config in `study/results.json`.", ""]
    inp, emb, tr = results.get("input"), results.get("embed"), results.get("train")
    lines += ["## Data", ""]
    if inp:
        lines += [
            f"- molecules written for embedding: {inp['rows']} {inp['by_source']} ({inp['seconds']} s)",
            f"- kept out as downstream-task molecules (InChIKey connectivity): {inp['excluded']} "
            f"{inp['excluded_by_task']} (`{inp['excluded_path']}`)",
        ]
    if emb:
        lines.append(f"- embedded: {emb['counts']}; quarantined by reason {emb['quarantined_by_reason']}")
    lines.append("")
    lines += ["## Wall time per stage (seconds)", "", "| stage | seconds |", "|---|---|"]
    for stage, block in (
        ("input", inp),
        ("embed", emb),
        ("train", tr),
        ("evaluate", results.get("evaluate")),
        *((f"compare {k}", v) for k, v in (results.get("compare") or {}).items()),
        *((f"ablation {k}", v) for k, v in (results.get("ablations") or {}).items()),
    ):
        seconds = None
        if block:
            seconds = block.get("seconds", (block.get("train_s") or 0) + (block.get("evaluate_s") or 0))
        lines.append(f"| {stage} | {'not run' if seconds is None else f'{seconds:.0f}'} |")
    lines.append("")
    report: dict = {}
    if results.get("evaluate"):
        report = json.loads(Path(results["evaluate"]["report"]).read_text())
        if cfg.study.targets:
            lines += [
                "## Targets",
                "",
                "| claim | study | target | paper | demo |",
                "|---|---|---|---|---|",
                *target_rows(report, results.get("ablations") or {}, cfg.study.targets),
            ]
        verdict = downstream_verdict(report)
        if verdict:
            lines += [
                "",
                "| task | metric | study fine-tune | scratch GIN | ECFP + RF | beats scratch | level with RF |",
                "|---|---|---|---|---|---|---|",
                *verdict,
            ]
        lines.append("")
    compare = {"study": report} if report else {}
    for label, block in (results.get("compare") or {}).items():
        if block:
            compare[label] = json.loads(Path(block["report"]).read_text())
    if len(compare) > 1 or report.get("downstream"):
        lines += ["## Downstream, every encoder", "", *downstream_rows(compare), ""]
    for label, other in compare.items():
        if label == "study" or not other.get("retrieval"):
            continue
        lines += [f"## Retrieval of `{label}` on the study's held-out set", ""]
        for direction, pools in other["retrieval"].items():
            for pool, b in pools.items():
                lines.append(
                    f"- {direction} {pool} (n={b['n_pool']}): top-1 {_f(b['top1'])}, top-10 {_f(b.get('top10'))}"
                )
        lines.append("")
    ablations = {k: v for k, v in (results.get("ablations") or {}).items() if v}
    if ablations:
        lines += [
            "## What matters (ablations)",
            "",
            f"Each row trains on {cfg.study.ablation_train_rows or 'all'} training rows, "
            f"{cfg.study.ablation_epochs or cfg.train.epochs} epochs at most, and is scored on the whole held-out set.",
            "",
            "| run | overrides | direction | top-1 pool 128 | top-10 pool 128 | top-1 all | top-10 all "
            "| best epoch | train s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, block in ablations.items():
            for direction, pools in block["retrieval"].items():
                if not direction.endswith("->graph"):
                    continue
                fixed = pools.get(f"pool_{cfg.eval.pool_size}", {})
                whole = pools.get("pool_all", {})
                lines.append(
                    f"| {name} | {block['overrides'] or '-'} | {direction} | {_f(fixed.get('top1'))} | "
                    f"{_f(fixed.get('top10'))} | {_f(whole.get('top1'))} | {_f(whole.get('top10'))} | "
                    f"{block['best_epoch']} | {block['train_s']:.0f} |"
                )
        lines.append("")
    if report:
        body = render_markdown(report).split("\n", 1)[1]  # the evaluation's own tables, one level down
        lines += ["## The study encoder's evaluation", "", body.replace("\n## ", "\n### ")]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out
