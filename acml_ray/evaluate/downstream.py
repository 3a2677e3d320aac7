"""Downstream property prediction on a deterministic scaffold split.

Methods, all on the same split and seeds:
- ``linear_probe``: logistic / ridge regression on the frozen pretrained graph embeddings;
- ``finetune``: the pretrained graph encoder plus a small MLP head, all weights trained;
- ``scratch``: the same architecture, randomly initialised (the "no pretraining" control);
- ``ecfp_rf`` / ``ecfp_linear``: Morgan fingerprints (radius 2) with a random forest or a
  logistic / ridge regression (the standard fingerprint baselines).

The split is DeepChem's scaffold split (Bemis-Murcko scaffolds, largest scaffold sets to train
first), so it is the same for every seed; seeds vary initialisation, batch order and forests.
The two linear methods have no random element left (lbfgs logistic regression and closed-form
ridge on a fixed split), so they are fitted once and reported as one run, never as copies that
would read as sd 0. Fine-tune and scratch trainings stop early on the validation loss.

Labels may be missing (NaN, as in Tox21): they are masked in losses and metrics. Every label has
a kind (classification: 0/1 values; regression: anything else); labels of both kinds in one file
become one task per kind. Censored regression labels (a relation column of ``<``, ``>``, ...)
are left out by default. Metrics: ROC-AUC and PR-AUC for classification; RMSE, MAE and R2
(original units) for regression; each averaged over the task's labels and shown beside the same
metric of a constant prediction of the training mean (the prevalence, for classification).

This module runs the section (`run_task`, `downstream_report`); the pieces live beside it, one
job each: `downstream_data` (loading tasks), `scaffold` (the split), `downstream_metrics`,
`baselines` (ECFP + scikit-learn), `finetune` (the GIN + head training loop) and `fits` (one
(method, seed) fit, and `FitRunner`, which spreads them over processes or Ray tasks).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from acml_ray.chem import GraphFeaturizer, MolGraph, Rejected, reason_counts
from acml_ray.config import ACMLConfig, DownstreamConfig
from acml_ray.evaluate.baselines import ecfp
from acml_ray.evaluate.downstream_data import BUILTIN_TASKS, Say, TaskData, check_tasks, load_tasks
from acml_ray.evaluate.downstream_metrics import (
    masked_classification,
    masked_errors,
    masked_roc_auc,
    reference_score,
    score,
)
from acml_ray.evaluate.embeddings import graph_embeddings
from acml_ray.evaluate.finetune import train_graph_model
from acml_ray.evaluate.fits import DETERMINISTIC, GRAPH_METHODS, FitInputs, FitRunner, fit_predict
from acml_ray.evaluate.scaffold import murcko_scaffold, scaffold_split
from acml_ray.model.acml import ACMLModel

log = logging.getLogger(__name__)


def _summary(values: list[dict[str, float]], seeds: list[int], seconds: list[float], deterministic: bool) -> dict:
    metrics = {
        metric: {
            "mean": float(np.mean([v[metric] for v in values])),
            "sd": float(np.std([v[metric] for v in values], ddof=1)) if len(values) > 1 else None,
            "values": [v[metric] for v in values],
        }
        for metric in values[0]
    }
    return {
        "runs": len(values),
        "seeds": None if deterministic else list(seeds),
        "deterministic": deterministic,
        "seconds": [round(s, 2) for s in seconds],
        **metrics,
    }


def _quarantine_rows(task: str, data: TaskData, index: Sequence[int], stage: str, reasons: Sequence[str]) -> list[dict]:
    return [
        {
            "mol_id": f"{task}:row {data.rows[i]}",
            "input": data.smiles[i][:300],
            "stage": stage,
            "reason": r,
            "section": f"downstream:{task}",
        }
        for i, r in zip(index, reasons)
    ]


def run_task(
    model: ACMLModel,
    run_cfg: ACMLConfig,
    data: TaskData,
    cfg: DownstreamConfig,
    split_dir: str | Path | None = None,
    runner: FitRunner | None = None,
    say: Say | None = None,
) -> tuple[dict, list[dict]]:
    """All configured methods on one task over `cfg.seeds` -> (report, quarantined rows).

    Rows the featuriser rejects, and rows left without any usable label, are quarantined with
    their reason. The split is written to ``split_dir/<task>.csv`` (smiles, scaffold, split) and
    its SHA-256 is reported.
    """
    say = say or log.info
    runner = runner or FitRunner(1)
    results = GraphFeaturizer(run_cfg.featurizer).featurize_batch(data.smiles)
    quarantine = _quarantine_rows(
        data.name,
        data,
        [i for i, r in enumerate(results) if isinstance(r, Rejected)],
        "featurise",
        [r.reason for r in results if isinstance(r, Rejected)],
    )
    molgraphs = {i: r for i, r in enumerate(results) if isinstance(r, MolGraph)}
    graphs_ok = list(molgraphs)
    no_label = [i for i in graphs_ok if not np.isfinite(data.labels[i]).any()]
    quarantine += _quarantine_rows(data.name, data, no_label, "label", [data.issues[i] or "no label" for i in no_label])
    kept = [i for i in graphs_ok if np.isfinite(data.labels[i]).any()]
    smiles = [data.smiles[i] for i in kept]
    labels = data.labels[kept]
    graphs = [molgraphs[i].to_pyg() for i in kept]
    train, valid, test, scaffolds = scaffold_split(smiles, cfg.fractions)
    part = np.empty(len(smiles), dtype=object)
    part[train], part[valid], part[test] = "train", "valid", "test"
    split_csv = pd.DataFrame({"smiles": smiles, "scaffold": scaffolds, "split": part}).to_csv(index=False)
    split_info = {
        "method": "scaffold (Bemis-Murcko, DeepChem order: largest sets to train)",
        "fractions": list(cfg.fractions),
        "sizes": {"train": len(train), "valid": len(valid), "test": len(test)},
        "sha256": hashlib.sha256(split_csv.encode()).hexdigest(),
    }
    if split_dir is not None:
        path = Path(split_dir) / f"{Path(data.name).stem}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(split_csv)
        split_info["file"] = str(path)

    by_reason = reason_counts(q["reason"] for q in quarantine)
    report = {
        "kind": data.kind,
        "tasks": data.task_names,
        **data.notes,
        "n_input": len(data.smiles),
        "n": len(smiles),
        "rejected": len(quarantine),
        "rejected_by_reason": by_reason,
        "split": split_info,
        "seeds": list(cfg.seeds),
        "labelled": {
            p: np.isfinite(labels[idx]).sum(axis=0).astype(int).tolist()
            for p, idx in (("train", train), ("valid", valid), ("test", test))
        },
        "methods": {},
    }
    say(
        f"task {data.name} ({data.kind}, labels {data.task_names}): {len(smiles)} of {len(data.smiles)} rows "
        f"usable ({len(quarantine)} quarantined), split train {len(train)} / valid {len(valid)} / test {len(test)}"
    )
    if len(train) < 2 or len(test) < 1:
        report["error"] = "too few molecules for a scaffold split"
        say(f"task {data.name}: {report['error']}")
        return report, quarantine
    y_test = labels[test]
    report["reference"] = {
        "description": "constant prediction of each label's training mean (classification: the prevalence)",
        **reference_score(data.kind, labels[train], y_test),
        "prevalence": (
            {"train": np.nanmean(labels[train], axis=0).tolist(), "test": np.nanmean(y_test, axis=0).tolist()}
            if data.kind == "classification"
            else None
        ),
    }
    base = FitInputs(
        kind=data.kind, labels=labels, train=train, valid=valid, test=test, cfg=cfg, encoder_cfg=run_cfg.graph_encoder
    )
    inputs: dict[str, FitInputs] = {}
    if GRAPH_METHODS & set(cfg.methods):
        graph_inputs = replace(base, graphs=graphs, pretrained=model.graph_encoder)
        inputs |= {m: graph_inputs for m in GRAPH_METHODS}
    if "linear_probe" in cfg.methods:
        inputs["linear_probe"] = replace(base, features=graph_embeddings(model, graphs))
    if {"ecfp_rf", "ecfp_linear"} & set(cfg.methods):
        fps = replace(base, features=ecfp(smiles, cfg.ecfp_bits))
        inputs |= {"ecfp_rf": fps, "ecfp_linear": fps}
    jobs = [(inputs[m], m, s) for m in cfg.methods for s in (cfg.seeds[:1] if m in DETERMINISTIC else cfg.seeds)]
    scores: dict[int, dict] = {}
    infos: dict[int, dict] = {}
    start = time.perf_counter()
    for k, pred, info in runner.run(jobs):
        _, method, seed = jobs[k]
        scores[k], infos[k] = score(data.kind, y_test, pred), info
        metric = "roc_auc" if data.kind == "classification" else "rmse"
        epochs = f", {info['epochs']} epochs (best {info['best_epoch']})" if "epochs" in info else ""
        seed_text = "seed-free, one fit" if method in DETERMINISTIC else f"seed {seed}"
        say(
            f"task {data.name}: {method} {seed_text}: {metric} {scores[k][metric]:.3f} in {info['seconds']:.1f} s"
            f"{epochs} [{len(scores)}/{len(jobs)}, {time.perf_counter() - start:.0f} s]"
        )
    for method in cfg.methods:
        ks = [k for k, job in enumerate(jobs) if job[1] == method]
        report["methods"][method] = _summary(
            [scores[k] for k in ks],
            [jobs[k][2] for k in ks],
            [infos[k]["seconds"] for k in ks],
            method in DETERMINISTIC,
        )
        if "epochs" in infos[ks[0]]:
            report["methods"][method]["epochs"] = [infos[k]["epochs"] for k in ks]
    return report, quarantine


def downstream_report(
    model: ACMLModel,
    run_cfg: ACMLConfig,
    cfg: DownstreamConfig,
    split_dir: str | Path | None = None,
    seed: int = 0,
    say: Say | None = None,
) -> tuple[dict[str, dict], list[dict]]:
    """``({task name: run_task report}, quarantined rows)`` for every configured task (a file
    with labels of two kinds gives two tasks)."""
    say = say or log.info
    runner = FitRunner(cfg.workers)
    say(f"downstream: fits run {runner.describe()}")
    reports: dict[str, dict] = {}
    quarantine: list[dict] = []
    try:
        for task in cfg.tasks:
            for data in load_tasks(task, seed, say):
                reports[data.name], rows = run_task(model, run_cfg, data, cfg, split_dir, runner, say)
                quarantine += rows
    finally:
        runner.close()
    return reports, quarantine


# The downstream section's public names, wherever they are defined: callers import them from here.
__all__ = [
    "BUILTIN_TASKS",
    "DETERMINISTIC",
    "FitInputs",
    "FitRunner",
    "TaskData",
    "check_tasks",
    "downstream_report",
    "ecfp",
    "fit_predict",
    "load_tasks",
    "masked_classification",
    "masked_errors",
    "masked_roc_auc",
    "murcko_scaffold",
    "reference_score",
    "run_task",
    "scaffold_split",
    "score",
    "train_graph_model",
]
