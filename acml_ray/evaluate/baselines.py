"""The fingerprint baselines: ECFP4 bit vectors with a random forest or a logistic / ridge
regression, one model per task column on its labelled rows (also the linear probe's fit)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from rdkit import Chem
from rdkit.rdBase import BlockLogs
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from acml_ray.modalities.ecfp import morgan_counts


def ecfp(smiles: Sequence[str], n_bits: int = 2048) -> np.ndarray:
    """ECFP4 bit vectors ``uint8 [n, n_bits]``: the bits set in the Morgan radius-2 counts of
    `acml_ray.modalities.ecfp.morgan_counts` (RDKit's bit vector, the same bits).

    `smiles` are inputs the featuriser accepted, so RDKit's own parser is bounded here.
    """
    with BlockLogs():
        return np.stack([(morgan_counts(Chem.MolFromSmiles(s), 2, n_bits) > 0).astype(np.uint8) for s in smiles])


def fit_sklearn(
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
