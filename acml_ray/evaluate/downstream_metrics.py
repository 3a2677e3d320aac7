"""Downstream metrics over task columns with missing labels (NaN), and the constant reference.

ROC-AUC and PR-AUC for classification; RMSE, MAE and R2 (original units) for regression; each
averaged over the task's labelled columns.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score


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
