"""Downstream property prediction on a deterministic scaffold split.

Methods, all on the same split and seeds:
- ``linear_probe``: logistic / ridge regression on the frozen pretrained graph embeddings;
- ``finetune``: the pretrained graph encoder plus a small MLP head, all weights trained;
- ``scratch``: the same architecture, randomly initialised (the "no pretraining" control);
- ``ecfp_rf`` / ``ecfp_linear``: Morgan fingerprints (radius 2) with a random forest or a
  logistic / ridge regression (the standard fingerprint baselines).

The split is DeepChem's scaffold split (Bemis-Murcko scaffolds, largest scaffold sets to train
first), so it is the same for every seed; seeds vary initialisation, batch order and forests.
Labels may be missing (NaN, as in Tox21): they are masked in losses and metrics. Metrics:
ROC-AUC for classification; RMSE and MAE (original units) for regression; each averaged over
the task columns, then reported as mean +- sd over seeds.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch_geometric.data import Batch, Data

from acml_ray.chem import GraphFeaturizer, Rejected
from acml_ray.config import ACMLConfig, DownstreamConfig, TaskConfig
from acml_ray.data.sources import load_source, read_table
from acml_ray.evaluate.embeddings import graph_embeddings
from acml_ray.model.acml import ACMLModel
from acml_ray.model.gin import GraphEncoder

log = logging.getLogger(__name__)

# Shipped benchmarks: (source name, label columns, kind, string-label mapping).
BUILTIN_TASKS: dict[str, tuple[str, list[str], str, dict[str, float]]] = {
    "b3db_classification": ("b3db_classification", ["BBB+/BBB-"], "classification",
                            {"BBB+": 1.0, "BBB-": 0.0}),
    "b3db_regression": ("b3db_regression", ["logBB"], "regression", {}),
    "freesolv": ("freesolv", ["expt"], "regression", {}),
    "solubility": ("solubility", ["SOL"], "regression", {}),
}
_SMILES_COLUMNS = ("smiles", "SMILES", "Smiles", "Drug", "mol", "canonical_smiles")
_ID_NAMES = {"num", "index", "id", "mol_id", "drug_id", "cid", "no.", "unnamed: 0"}


@dataclass
class TaskData:
    """One property-prediction data set: SMILES and a label matrix (NaN = missing)."""

    name: str
    smiles: list[str]
    labels: np.ndarray  # float [n, n_tasks]
    task_names: list[str]
    kind: str  # "classification" | "regression"


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


def load_task(task: TaskConfig, seed: int = 0) -> TaskData:
    """A shipped benchmark by name, or a MoleculeNet/TDC-format table by path or URI."""
    mapping: dict[str, float] = {}
    if task.path is None:
        source, columns, kind, mapping = _builtin(task)
        frame = load_source(source)
        smiles_column = "smiles"
    else:
        frame = read_table(task.path)
        smiles_column = task.smiles_column or next((c for c in _SMILES_COLUMNS if c in frame.columns), None)
        if smiles_column is None or smiles_column not in frame.columns:
            raise ValueError(f"{task.path}: no SMILES column (set smiles_column); columns {list(frame.columns)}")
        if task.label_columns:
            columns = task.label_columns
        elif "Y" in frame.columns:  # TDC single-task format: Drug_ID, Drug, Y
            columns = ["Y"]
        else:  # MoleculeNet: every numeric column that is not an identifier is a task
            columns = [c for c in frame.columns if c != smiles_column and c.lower() not in _ID_NAMES
                       and pd.api.types.is_numeric_dtype(frame[c])]
        kind = None
    missing = [c for c in columns if c not in frame.columns]
    if missing or not columns:
        raise ValueError(f"task {task.name!r}: label columns {missing or columns} not found")
    if task.limit is not None and task.limit < len(frame):
        frame = frame.sample(n=task.limit, random_state=seed)
    labels = np.stack([pd.to_numeric(frame[c].replace(mapping) if mapping else frame[c], errors="coerce")
                       .to_numpy(dtype=float) for c in columns], axis=1)
    if task.kind is not None:
        kind = task.kind
    elif kind is None:
        finite = labels[np.isfinite(labels)]
        kind = "classification" if len(finite) and np.isin(finite, (0.0, 1.0)).all() else "regression"
    return TaskData(task.name, frame[smiles_column].astype(str).tolist(), labels, list(columns), kind)


def murcko_scaffold(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES (stereo ignored; "" for acyclic molecules)."""
    with BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
        return "" if mol is None else MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def scaffold_split(smiles: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1)
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


def masked_roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC-AUC over task columns, each on its labelled rows; columns whose labelled rows
    hold one class only are skipped (NaN if none is left)."""
    y, scores = np.atleast_2d(y.T).T, np.atleast_2d(scores.T).T
    aucs = []
    for t in range(y.shape[1]):
        ok = np.isfinite(y[:, t])
        if len(np.unique(y[ok, t])) == 2:
            aucs.append(roc_auc_score(y[ok, t], scores[ok, t]))
    return float(np.mean(aucs)) if aucs else float("nan")


def masked_errors(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{"rmse", "mae"}`` per task column over labelled rows, averaged over columns."""
    y, pred = np.atleast_2d(y.T).T, np.atleast_2d(pred.T).T
    rmse, mae = [], []
    for t in range(y.shape[1]):
        ok = np.isfinite(y[:, t])
        if ok.any():
            err = pred[ok, t] - y[ok, t]
            rmse.append(float(np.sqrt(np.mean(err ** 2))))
            mae.append(float(np.mean(np.abs(err))))
    return {"rmse": float(np.mean(rmse)) if rmse else float("nan"),
            "mae": float(np.mean(mae)) if mae else float("nan")}


def score(kind: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """ROC-AUC (classification; `pred` = scores) or RMSE and MAE (regression)."""
    return {"roc_auc": masked_roc_auc(y, pred)} if kind == "classification" else masked_errors(y, pred)


def ecfp(smiles: Sequence[str], n_bits: int = 2048) -> np.ndarray:
    """Morgan radius-2 bit vectors ``uint8 [n, n_bits]``."""
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=n_bits)
    with BlockLogs():
        return np.stack([generator.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in smiles])


# Methods whose fit does not depend on the seed (lbfgs logistic regression, closed-form ridge
# on a fixed split): fitted once, their score stands for every seed.
_DETERMINISTIC = frozenset({"linear_probe", "ecfp_linear"})


def _fit_sklearn(kind: str, estimator: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
                 seed: int, trees: int) -> np.ndarray:
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
                n_estimators=trees, random_state=seed, n_jobs=1)
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


@torch.no_grad()
def _predict(model: PropertyModel, graphs: Sequence[Data], batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model(Batch.from_data_list(list(graphs[s:s + batch_size])))
                      for s in range(0, len(graphs), batch_size)])


def train_graph_model(encoder: GraphEncoder, kind: str, graphs: Sequence[Data], labels: np.ndarray,
                      train: np.ndarray, valid: np.ndarray, test: np.ndarray, cfg: DownstreamConfig,
                      seed: int) -> np.ndarray:
    """Train encoder + head on `train` (masked loss), keep the epoch with the lowest validation
    loss, return its test scores (probabilities) or predictions (original units)."""
    torch.manual_seed(seed)
    model = PropertyModel(encoder, labels.shape[1], cfg.head_hidden)
    y = torch.as_tensor(labels, dtype=torch.float32)
    # Regression targets are standardised per task on the training rows, for a well-scaled loss.
    mu = torch.nanmean(y[train], dim=0) if kind == "regression" else torch.zeros(y.shape[1])
    sd = torch.as_tensor(np.nan_to_num(np.nanstd(labels[train], axis=0), nan=1.0), dtype=torch.float32)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd)) if kind == "regression" else torch.ones(y.shape[1])
    mu = torch.nan_to_num(mu)
    y_scaled = (y - mu) / sd
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(seed)
    valid_graphs = [graphs[i] for i in valid]
    best_loss, best_state = float("inf"), copy.deepcopy(model.state_dict())
    for _ in range(cfg.epochs):
        model.train()
        order = rng.permutation(train)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two graphs
                continue
            loss = _masked_loss(kind, model(Batch.from_data_list([graphs[i] for i in idx])), y_scaled[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if len(valid):
            val_loss = float(_masked_loss(kind, _predict(model, valid_graphs, 256), y_scaled[valid]))
        else:
            val_loss = 0.0  # no validation molecules: keep the last epoch
        if val_loss <= best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    out = _predict(model, [graphs[i] for i in test], 256)
    out = torch.sigmoid(out) if kind == "classification" else out * sd + mu
    return out.numpy()


def _summary(values: list[dict[str, float]]) -> dict[str, dict]:
    return {metric: {"mean": float(np.mean([v[metric] for v in values])),
                     "sd": float(np.std([v[metric] for v in values], ddof=1)) if len(values) > 1 else 0.0,
                     "values": [v[metric] for v in values]} for metric in values[0]}


def run_task(model: ACMLModel, run_cfg: ACMLConfig, task: TaskConfig, cfg: DownstreamConfig,
             split_dir: str | Path | None = None, seed: int = 0) -> dict:
    """All configured methods on one task over `cfg.seeds`; the split is written to
    ``split_dir/<task>.csv`` (smiles, scaffold, split) and its SHA-256 is reported."""
    data = load_task(task, seed)
    results = GraphFeaturizer(run_cfg.featurizer).featurize_batch(data.smiles)
    kept = [i for i, r in enumerate(results) if not isinstance(r, Rejected)]
    smiles = [data.smiles[i] for i in kept]
    labels = data.labels[kept]
    graphs = [results[i].to_pyg() for i in kept]
    train, valid, test, scaffolds = scaffold_split(smiles, cfg.fractions)
    part = np.empty(len(smiles), dtype=object)
    part[train], part[valid], part[test] = "train", "valid", "test"
    split_csv = pd.DataFrame({"smiles": smiles, "scaffold": scaffolds, "split": part}).to_csv(index=False)
    split_info = {"method": "scaffold (Bemis-Murcko, DeepChem order: largest sets to train)",
                  "fractions": list(cfg.fractions),
                  "sizes": {"train": len(train), "valid": len(valid), "test": len(test)},
                  "sha256": hashlib.sha256(split_csv.encode()).hexdigest()}
    if split_dir is not None:
        path = Path(split_dir) / f"{Path(data.name).stem}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(split_csv)
        split_info["file"] = str(path)

    report = {"kind": data.kind, "tasks": data.task_names, "n_input": len(data.smiles),
              "n": len(smiles), "rejected": len(data.smiles) - len(smiles), "split": split_info,
              "methods": {}}
    if len(train) < 2 or len(test) < 1:
        report["error"] = "too few molecules for a scaffold split"
        return report
    y_test = labels[test]
    frozen = graph_embeddings(model, graphs) if "linear_probe" in cfg.methods else None
    fps = ecfp(smiles, cfg.ecfp_bits) if {"ecfp_rf", "ecfp_linear"} & set(cfg.methods) else None
    for method in cfg.methods:
        per_seed = []
        for s in cfg.seeds:
            if per_seed and method in _DETERMINISTIC:  # same fit for every seed: reuse it
                per_seed.append(per_seed[0])
                continue
            if method == "linear_probe":
                pred = _fit_sklearn(data.kind, "linear", frozen[train], labels[train], frozen[test], s, cfg.rf_trees)
            elif method in ("ecfp_rf", "ecfp_linear"):
                pred = _fit_sklearn(data.kind, "rf" if method == "ecfp_rf" else "linear", fps[train],
                                    labels[train], fps[test], s, cfg.rf_trees)
            else:
                torch.manual_seed(s)
                encoder = (copy.deepcopy(model.graph_encoder) if method == "finetune"
                           else GraphEncoder(run_cfg.graph_encoder))
                pred = train_graph_model(encoder, data.kind, graphs, labels, train, valid, test, cfg, s)
            per_seed.append(score(data.kind, y_test, pred))
        report["methods"][method] = _summary(per_seed)
        log.info("%s %s: %s", data.name, method, {k: round(v["mean"], 3) for k, v in report["methods"][method].items()})
    return report


def downstream_report(model: ACMLModel, run_cfg: ACMLConfig, cfg: DownstreamConfig,
                      split_dir: str | Path | None = None, seed: int = 0) -> dict[str, dict]:
    """``{task name: run_task(...)}`` for every configured task."""
    return {task.name: run_task(model, run_cfg, task, cfg, split_dir, seed) for task in cfg.tasks}


__all__ = ["BUILTIN_TASKS", "TaskData", "downstream_report", "ecfp", "load_task",
           "masked_errors", "masked_roc_auc", "murcko_scaffold", "run_task", "scaffold_split", "score"]
