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
"""

from __future__ import annotations

import copy
import hashlib
import logging
import multiprocessing
import os
import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import torch
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator
from rdkit.Chem.Scaffolds import MurckoScaffold
from rdkit.rdBase import BlockLogs
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch_geometric.data import Batch, Data

from acml_ray.chem import GraphFeaturizer, Rejected
from acml_ray.config import ACMLConfig, DownstreamConfig, GraphEncoderConfig, TaskConfig
from acml_ray.data.sources import load_source, read_table
from acml_ray.evaluate.embeddings import graph_embeddings
from acml_ray.model.acml import ACMLModel
from acml_ray.model.gin import GraphEncoder

log = logging.getLogger(__name__)

Say = Callable[[str], None]

# Shipped benchmarks: (source name, label columns, kind, string-label mapping).
BUILTIN_TASKS: dict[str, tuple[str, list[str], str, dict[str, float]]] = {
    "b3db_classification": ("b3db_classification", ["BBB+/BBB-"], "classification", {"BBB+": 1.0, "BBB-": 0.0}),
    "b3db_regression": ("b3db_regression", ["logBB"], "regression", {}),
    "freesolv": ("freesolv", ["expt"], "regression", {}),
    "solubility": ("solubility", ["SOL"], "regression", {}),
}
_SMILES_COLUMNS = ("smiles", "SMILES", "Smiles", "Drug", "mol", "canonical_smiles")
_ID_NAMES = {"num", "index", "id", "mol_id", "drug_id", "cid", "no.", "unnamed: 0"}


@dataclass
class TaskData:
    """One property-prediction data set: SMILES and a label matrix (NaN = missing) of one kind.

    `rows` are the input file's row numbers (0-based, data rows), `issues[i]` says why row i has
    no usable label where it has none (unparsable, censored), and `notes` what was done to the
    file on the way (sampling, censoring, a split by kind) for the report.
    """

    name: str
    smiles: list[str]
    labels: np.ndarray  # float [n, n_tasks]
    task_names: list[str]
    kind: str  # "classification" | "regression"
    rows: list[int] = field(default_factory=list)
    issues: list[str | None] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


def _builtin(task: TaskConfig) -> tuple:
    """The shipped benchmark named by `task` (source, columns, kind, label mapping)."""
    if task.name not in BUILTIN_TASKS:
        raise ValueError(f"unknown task {task.name!r}: give a path, or one of {sorted(BUILTIN_TASKS)}")
    return BUILTIN_TASKS[task.name]


def check_tasks(tasks: Sequence[TaskConfig]) -> None:
    """Fail now, not after the other evaluation sections, on an unknown name or a missing file."""
    from acml_ray.storage import check_access

    for task in tasks:
        if task.path is None:
            _builtin(task)
            continue
        fs, path = check_access(task.path)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"task file not found: {task.path}")


def _is_binary(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return bool(len(finite)) and bool(np.isin(finite, (0.0, 1.0)).all())


def _label_kinds(
    task: TaskConfig, columns: list[str], labels: np.ndarray, fixed: str | None
) -> tuple[dict[str, str], list[str]]:
    """Kind of every label column -> ({column: kind}, columns whose kind was inferred)."""
    given = task.kind if isinstance(task.kind, dict) else {c: task.kind for c in columns} if task.kind else {}
    unknown = sorted(set(given) - set(columns))
    if unknown:
        raise ValueError(f"task {task.name!r}: kind given for {unknown}, which are not label columns {columns}")
    kinds, inferred = {}, []
    for j, column in enumerate(columns):
        kind = fixed or given.get(column)
        if kind is None:
            kind = "classification" if _is_binary(labels[:, j]) else "regression"
            inferred.append(column)
        elif kind == "classification" and not (_is_binary(labels[:, j]) or not np.isfinite(labels[:, j]).any()):
            values = sorted(set(np.unique(labels[np.isfinite(labels[:, j]), j]).tolist()))[:5]
            raise ValueError(
                f"task {task.name!r}: label {column!r} is classification but holds values "
                f"other than 0/1 (e.g. {values}); give kind regression or a 0/1 column"
            )
        kinds[column] = kind
    return kinds, inferred


def _relations(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The relation column as plain strings ('<', '>=', '=', '' ...), ChEMBL's quotes removed."""
    return frame[column].fillna("").astype(str).str.strip().str.strip("'\"").str.strip().to_numpy(dtype=object)


def load_tasks(task: TaskConfig, seed: int = 0, say: Say | None = None) -> list[TaskData]:
    """A shipped benchmark by name, or a MoleculeNet/TDC-format table by path or URI, as one
    task per label kind (one task unless the file mixes classification and regression labels).

    Censored regression labels (``task.relation_column`` holding ``<``, ``>``, ``<=``, ``>=``,
    ``<<`` or ``>>``) become missing under ``censored: exclude`` and are counted either way; ``=``,
    ``~`` (approximate) and empty relations are exact values.
    """
    say = say or log.info
    mapping: dict[str, float] = {}
    fixed_kind = None
    if task.path is None:
        source, columns, fixed_kind, mapping = _builtin(task)
        frame = load_source(source)
        smiles_column = "smiles"
    else:
        frame = read_table(task.path)
        smiles_column = task.smiles_column or next((c for c in _SMILES_COLUMNS if c in frame.columns), None)
        if smiles_column is None or smiles_column not in frame.columns:
            raise ValueError(
                f"{task.path}: no SMILES column {task.smiles_column or ''!r} (give it as "
                f"--task {task.path}:COLUMN or smiles_column); columns {list(frame.columns)}"
            )
        if task.label_columns:
            columns = list(task.label_columns)
        elif "Y" in frame.columns:  # TDC single-task format: Drug_ID, Drug, Y
            columns = ["Y"]
        else:  # MoleculeNet: every numeric column that is not an identifier is a task
            columns = [
                c
                for c in frame.columns
                if c not in (smiles_column, task.relation_column)
                and c.lower() not in _ID_NAMES
                and pd.api.types.is_numeric_dtype(frame[c])
            ]
    missing = [c for c in columns if c not in frame.columns]
    if missing or not columns:
        raise ValueError(
            f"task {task.name!r}: label columns {missing or columns} not found "
            f"(give them as --task PATH:SMILES_COLUMN:LABEL,...); columns {list(frame.columns)}"
        )
    notes: dict = {"source": task.path or f"shipped {task.name}", "rows_in_file": len(frame)}
    if task.limit is not None and task.limit < len(frame):
        frame = frame.sample(n=task.limit, random_state=seed)
        notes["limit"] = task.limit
        say(f"task {task.name}: random sample of {task.limit} of {notes['rows_in_file']} rows (limit {task.limit})")
    raw = [frame[c].replace(mapping) if mapping else frame[c] for c in columns]
    labels = np.stack([pd.to_numeric(r, errors="coerce").to_numpy(dtype=float) for r in raw], axis=1)
    issues: list[str | None] = [None] * len(frame)
    for j, r in enumerate(raw):
        bad = r.notna().to_numpy() & ~np.isfinite(labels[:, j])
        for i in np.flatnonzero(bad):
            issues[i] = f"unparsable label {str(r.iloc[i])[:40]!r} in {columns[j]}"
    kinds, inferred = _label_kinds(task, columns, labels, fixed_kind)

    regression = [j for j, c in enumerate(columns) if kinds[c] == "regression"]
    censoring: dict = {"column": task.relation_column, "present": task.relation_column in frame.columns}
    if censoring["present"] and regression:
        relation = _relations(frame, task.relation_column)
        censored = np.array(["<" in r or ">" in r for r in relation])
        labelled = np.isfinite(labels[:, regression]).any(axis=1)
        censoring.update(
            policy=task.censored,
            rows=int((censored & labelled).sum()),
            by_relation=dict(Counter(relation[censored & labelled].tolist())),
            approximate=int(((relation == "~") & labelled).sum()),
        )
        if task.censored == "exclude":
            for i in np.flatnonzero(censored & labelled):
                labels[i, regression] = np.nan
                issues[i] = f"censored label ({relation[i]}), excluded (censored: exclude)"
        if censoring["rows"]:
            say(
                f"task {task.name}: {censoring['rows']} censored regression labels {censoring['by_relation']} "
                + ("left out of training and metrics" if task.censored == "exclude" else "used as exact values")
            )
    notes["censoring"] = censoring

    groups: dict[str, list[int]] = defaultdict(list)
    for j, c in enumerate(columns):
        groups[kinds[c]].append(j)
    if len(groups) > 1:
        described = "; ".join(f"{k}: {[columns[j] for j in groups[k]]}" for k in sorted(groups))
        message = (
            f"task {task.name}: labels of two kinds ({described}) are evaluated as two tasks, "
            f"{task.name}-classification and {task.name}-regression"
        )
        if inferred:  # the user did not choose: say so loudly
            log.warning(
                "%s (kinds inferred from the values: 0/1 -> classification; set kind per label, "
                "e.g. --task PATH:SMILES:LABEL=regression, to choose)",
                message,
            )
        else:
            say(message)
    smiles = frame[smiles_column].astype(str).tolist()
    rows = frame.index.tolist()
    out = []
    for kind in sorted(groups):
        name = task.name if len(groups) == 1 else f"{task.name}-{kind}"
        js = groups[kind]
        out.append(
            TaskData(
                name,
                smiles,
                labels[:, js],
                [columns[j] for j in js],
                kind,
                rows,
                list(issues),
                {
                    **notes,
                    "kind_inferred": [columns[j] for j in js if columns[j] in inferred],
                    **({"split_from": task.name} if len(groups) > 1 else {}),
                },
            )
        )
    return out


def murcko_scaffold(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES (stereo ignored; "" for acyclic molecules)."""
    with BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
        return "" if mol is None else MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def scaffold_split(
    smiles: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """DeepChem's deterministic scaffold split -> (train, valid, test indices, scaffolds).

    Scaffold sets are ordered largest first (ties: larger first index first, as DeepChem's
    ``sorted(..., key=(len, first index), reverse=True)``); a set goes to train while train
    stays within its fraction, then to valid, else to test. No scaffold is in two parts.
    """
    frac_train, frac_valid, _ = fractions
    scaffolds = [murcko_scaffold(s) for s in smiles]
    sets: dict[str, list[int]] = defaultdict(list)
    for i, scaffold in enumerate(scaffolds):
        sets[scaffold].append(i)
    ordered = sorted(sets.values(), key=lambda x: (len(x), x[0]), reverse=True)
    n = len(smiles)
    train_cut, valid_cut = frac_train * n, (frac_train + frac_valid) * n
    train: list[int] = []
    valid: list[int] = []
    test: list[int] = []
    for group in ordered:
        if len(train) + len(group) > train_cut:
            if len(train) + len(valid) + len(group) > valid_cut:
                test += group
            else:
                valid += group
        else:
            train += group
    return np.array(sorted(train), int), np.array(sorted(valid), int), np.array(sorted(test), int), scaffolds


def _columns(y: np.ndarray, pred: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(labels, predictions) of each task column on its labelled rows."""
    y, pred = np.atleast_2d(y.T).T, np.atleast_2d(pred.T).T
    for t in range(y.shape[1]):
        ok = np.isfinite(y[:, t])
        yield y[ok, t], pred[ok, t]


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def masked_roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC-AUC over task columns, each on its labelled rows; columns whose labelled rows
    hold one class only are skipped (NaN if none is left)."""
    return _mean([roc_auc_score(t, s) for t, s in _columns(y, scores) if len(np.unique(t)) == 2])


def masked_classification(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``{"roc_auc", "pr_auc"}`` (PR-AUC = average precision, whose chance level is the
    prevalence), each over the columns holding both classes, averaged."""
    both = [(t, s) for t, s in _columns(y, scores) if len(np.unique(t)) == 2]
    return {
        "roc_auc": _mean([roc_auc_score(t, s) for t, s in both]),
        "pr_auc": _mean([average_precision_score(t, s) for t, s in both]),
    }


def masked_errors(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{"rmse", "mae", "r2"}`` per task column over labelled rows, averaged over columns
    (R2 only over columns with two or more distinct labelled values)."""
    rmse, mae, r2 = [], [], []
    for t, p in _columns(y, pred):
        if len(t):
            rmse.append(float(np.sqrt(np.mean((p - t) ** 2))))
            mae.append(float(np.mean(np.abs(p - t))))
        if len(np.unique(t)) > 1:
            r2.append(float(r2_score(t, p)))
    return {"rmse": _mean(rmse), "mae": _mean(mae), "r2": _mean(r2)}


def score(kind: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """ROC-AUC and PR-AUC (classification; `pred` = scores) or RMSE, MAE and R2 (regression)."""
    return masked_classification(y, pred) if kind == "classification" else masked_errors(y, pred)


def reference_score(kind: str, y_train: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """`score` of the constant prediction of each label's training mean: the mean predictor
    (regression) or the prevalence (classification: ROC-AUC 0.5, PR-AUC = test prevalence)."""
    mean = np.nan_to_num(
        np.nanmean(np.where(np.isfinite(y_train), y_train, np.nan), axis=0)
        if np.isfinite(y_train).any()
        else np.zeros(y_train.shape[1])
    )
    return score(kind, y_test, np.broadcast_to(mean, y_test.shape).copy())


def ecfp(smiles: Sequence[str], n_bits: int = 2048) -> np.ndarray:
    """Morgan radius-2 bit vectors ``uint8 [n, n_bits]``."""
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=n_bits)
    with BlockLogs():
        return np.stack([generator.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in smiles])


# Methods whose fit does not depend on the seed (lbfgs logistic regression, closed-form ridge
# on a fixed split): fitted once and reported as one run.
DETERMINISTIC = frozenset({"linear_probe", "ecfp_linear"})
_GRAPH_METHODS = frozenset({"finetune", "scratch"})


def _fit_sklearn(
    kind: str, estimator: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, seed: int, trees: int
) -> np.ndarray:
    """One model per task column on its labelled rows -> test scores/predictions [n_test, T]."""
    out = np.zeros((len(x_test), y.shape[1]))
    for t in range(y.shape[1]):
        ok = np.isfinite(y[:, t])
        target = y[ok, t]
        if kind == "classification" and len(np.unique(target)) < 2:
            out[:, t] = target.mean() if len(target) else 0.5  # one class seen: constant prior
            continue
        if estimator == "rf":
            model = (RandomForestClassifier if kind == "classification" else RandomForestRegressor)(
                n_estimators=trees, random_state=seed, n_jobs=1
            )
        elif kind == "classification":
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        else:
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x[ok], target)
        out[:, t] = model.predict_proba(x_test)[:, 1] if kind == "classification" else model.predict(x_test)
    return out


class PropertyModel(nn.Module):
    """Graph encoder + MLP head (out_dim -> hidden -> n_tasks) for fine-tuning."""

    def __init__(self, encoder: GraphEncoder, n_tasks: int, hidden: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(encoder.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_tasks))

    def forward(self, batch) -> torch.Tensor:
        return self.head(self.encoder(batch))


def _masked_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mask = torch.isfinite(y)
    target = torch.where(mask, y, torch.zeros_like(y))
    if kind == "classification":
        per = nn.functional.binary_cross_entropy_with_logits(out, target, reduction="none")
    else:
        per = (out - target) ** 2
    return (per * mask).sum() / mask.sum().clamp(min=1)


def _batches(graphs: Sequence[Data], size: int) -> list[Batch]:
    return [Batch.from_data_list(list(graphs[s : s + size])) for s in range(0, len(graphs), size)]


@torch.no_grad()
def _predict(model: PropertyModel, batches: Sequence[Batch]) -> torch.Tensor:
    model.eval()
    return torch.cat([model(b) for b in batches])


def train_graph_model(
    encoder: GraphEncoder,
    kind: str,
    graphs: Sequence[Data],
    labels: np.ndarray,
    train: np.ndarray,
    valid: np.ndarray,
    test: np.ndarray,
    cfg: DownstreamConfig,
    seed: int,
) -> tuple[np.ndarray, dict]:
    """Train encoder + head on `train` (masked loss) for at most ``cfg.epochs`` epochs, stopping
    after ``cfg.patience`` epochs without a lower validation loss; keep the best epoch and return
    its test scores (probabilities) or predictions (original units) with ``{"epochs", "best_epoch"}``."""
    torch.manual_seed(seed)
    model = PropertyModel(encoder, labels.shape[1], cfg.head_hidden)
    y = torch.tensor(labels, dtype=torch.float32)  # a copy: `labels` may be a read-only shared array
    # Regression targets are standardised per task on the training rows, for a well-scaled loss.
    mu = torch.nanmean(y[train], dim=0) if kind == "regression" else torch.zeros(y.shape[1])
    sd = torch.as_tensor(np.nan_to_num(np.nanstd(labels[train], axis=0), nan=1.0), dtype=torch.float32)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd)) if kind == "regression" else torch.ones(y.shape[1])
    mu = torch.nan_to_num(mu)
    y_scaled = (y - mu) / sd
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(seed)
    # Validation and test batches never change: collate them once, not every epoch.
    valid_batches = _batches([graphs[i] for i in valid], 256)
    best_loss, best_state, best_epoch, stale, epoch = float("inf"), copy.deepcopy(model.state_dict()), 0, 0, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(train)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two graphs
                continue
            loss = _masked_loss(kind, model(Batch.from_data_list([graphs[i] for i in idx])), y_scaled[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if len(valid):
            val_loss = float(_masked_loss(kind, _predict(model, valid_batches), y_scaled[valid]))
        else:
            val_loss = 0.0  # no validation molecules: keep the last epoch
        if val_loss <= best_loss:
            best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if cfg.patience is not None and stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    out = _predict(model, _batches([graphs[i] for i in test], 256))
    out = torch.sigmoid(out) if kind == "classification" else out * sd + mu
    return out.numpy(), {"epochs": epoch, "best_epoch": best_epoch}


@dataclass
class FitInputs:
    """What one (method, seed) fit needs, picklable so it can run in another process or a Ray
    task: labels, split, and the method's features (graphs, frozen embeddings or fingerprints)."""

    kind: str
    labels: np.ndarray
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    cfg: DownstreamConfig
    encoder_cfg: GraphEncoderConfig
    graphs: list[Data] | None = None
    features: np.ndarray | None = None
    pretrained: GraphEncoder | None = None


def fit_predict(inputs: FitInputs, method: str, seed: int) -> tuple[np.ndarray, dict]:
    """Fit `method` with `seed` on the training rows -> (test predictions, ``{"seconds", ...}``).

    Runs on one intra-op thread wherever it runs (this process, a worker process, a Ray task):
    the same seed then gives the same numbers whichever way the fits were spread, and for this
    small GIN a second thread buys little next to a second fit in parallel.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    info: dict = {}
    try:
        if method in _GRAPH_METHODS:
            torch.manual_seed(seed)
            encoder = (
                copy.deepcopy(inputs.pretrained)
                if method == "finetune"
                else GraphEncoder.from_config(inputs.encoder_cfg)
            )
            pred, info = train_graph_model(
                encoder,
                inputs.kind,
                inputs.graphs,
                inputs.labels,
                inputs.train,
                inputs.valid,
                inputs.test,
                inputs.cfg,
                seed,
            )
        else:
            x = inputs.features
            pred = _fit_sklearn(
                inputs.kind,
                "rf" if method == "ecfp_rf" else "linear",
                x[inputs.train],
                inputs.labels[inputs.train],
                x[inputs.test],
                seed,
                inputs.cfg.rf_trees,
            )
    finally:
        torch.set_num_threads(threads)
    return pred, {**info, "seconds": time.perf_counter() - start}


class FitRunner:
    """Runs (method, seed) fits: as Ray tasks when Ray is initialised (or this is a Ray job),
    else in local worker processes, else (one free CPU, or ``workers: 1``) in this process.

    Why processes and not threads: a GIN training holds the GIL for most of its Python-level
    work (collation, autograd bookkeeping). Why not always Ray: starting a local Ray for an
    evaluation costs seconds and a dashboard; the standard library's process pool does the job
    on one machine, and on a cluster Ray spreads the fits over its nodes.
    """

    def __init__(
        self, workers: int | None = None, backend: Literal["auto", "ray", "processes", "serial"] = "auto"
    ) -> None:
        self.mode: str | None = "serial" if backend == "serial" else None
        self.workers = 1
        ray_known = "ray" in sys.modules or os.environ.get("RAY_ADDRESS")  # never import Ray just to look
        if backend == "ray" or (backend == "auto" and ray_known):
            import ray

            if backend == "ray" or ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
                if not ray.is_initialized():
                    ray.init(address="auto")  # a `ray job submit` job: use its cluster
                self.workers = workers or max(1, int(ray.available_resources().get("CPU", 0)))
                self.mode = "ray" if self.workers > 1 else "serial"
        if self.mode is None:
            # The CPUs this process may run on (its affinity), not the machine's count.
            usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            self.workers = workers or usable
            self.mode = "processes" if self.workers > 1 else "serial"
        self._pool: ProcessPoolExecutor | None = None

    def describe(self) -> str:
        return {
            "serial": "in this process",
            "processes": f"in {self.workers} local processes",
            "ray": f"as Ray tasks on {self.workers} free CPUs",
        }[self.mode]

    def run(self, jobs: Sequence[tuple[FitInputs, str, int]]) -> Iterator[tuple[int, np.ndarray, dict]]:
        """Yield ``(job index, predictions, info)`` as each fit finishes (any order)."""
        if self.mode == "serial" or len(jobs) == 1:
            for k, (inputs, method, seed) in enumerate(jobs):
                yield (k, *fit_predict(inputs, method, seed))
        elif self.mode == "processes":
            if self._pool is None:
                # forkserver: a child forked from this process would inherit torch's thread pools
                # and locks mid-state; the fork server imports this module once (seconds of torch,
                # RDKit and PyG imports) and forks every worker from that clean state.
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload([__name__])
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
            futures = {self._pool.submit(fit_predict, *job): k for k, job in enumerate(jobs)}
            for future in as_completed(futures):
                yield (futures[future], *future.result())
        else:
            import ray

            remote = ray.remote(num_cpus=1)(fit_predict)
            refs: dict = {}
            shared: dict[int, object] = {}
            for k, (inputs, method, seed) in enumerate(jobs):
                ref = shared.setdefault(id(inputs), ray.put(inputs))  # each input set shipped once
                refs[remote.remote(ref, method, seed)] = k
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield (refs[done[0]], *ray.get(done[0]))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


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


def reason_kind(reason: str) -> str:
    """What a quarantine reason counts as: its text before any detail (``: ...``, `` (...)``, a
    quoted value, an InChIKey), e.g. ``duplicate InChIKey BSYNRYMUTXBXSQ-... (row 3)`` ->
    ``duplicate InChIKey``."""
    return re.split(r":| \(| '| [A-Z]{14}-[A-Z]{10}-[A-Z]", reason, maxsplit=1)[0]


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
    graphs_ok = [i for i, r in enumerate(results) if not isinstance(r, Rejected)]
    no_label = [i for i in graphs_ok if not np.isfinite(data.labels[i]).any()]
    quarantine += _quarantine_rows(data.name, data, no_label, "label", [data.issues[i] or "no label" for i in no_label])
    kept = [i for i in graphs_ok if np.isfinite(data.labels[i]).any()]
    smiles = [data.smiles[i] for i in kept]
    labels = data.labels[kept]
    graphs = [results[i].to_pyg() for i in kept]
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

    by_reason = Counter(reason_kind(q["reason"]) for q in quarantine)
    report = {
        "kind": data.kind,
        "tasks": data.task_names,
        **data.notes,
        "n_input": len(data.smiles),
        "n": len(smiles),
        "rejected": len(quarantine),
        "rejected_by_reason": dict(by_reason.most_common()),
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
    base = dict(
        kind=data.kind, labels=labels, train=train, valid=valid, test=test, cfg=cfg, encoder_cfg=run_cfg.graph_encoder
    )
    inputs: dict[str, FitInputs] = {}
    if _GRAPH_METHODS & set(cfg.methods):
        graph_inputs = FitInputs(**base, graphs=graphs, pretrained=model.graph_encoder)
        inputs |= {m: graph_inputs for m in _GRAPH_METHODS}
    if "linear_probe" in cfg.methods:
        inputs["linear_probe"] = FitInputs(**base, features=graph_embeddings(model, graphs))
    if {"ecfp_rf", "ecfp_linear"} & set(cfg.methods):
        fps = FitInputs(**base, features=ecfp(smiles, cfg.ecfp_bits))
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


__all__ = [
    "BUILTIN_TASKS",
    "DETERMINISTIC",
    "FitInputs",
    "FitRunner",
    "TaskData",
    "downstream_report",
    "ecfp",
    "fit_predict",
    "load_tasks",
    "masked_classification",
    "masked_errors",
    "masked_roc_auc",
    "murcko_scaffold",
    "reason_kind",
    "reference_score",
    "run_task",
    "scaffold_split",
    "score",
]
