"""Interpretability: how linearly graph embeddings encode basic chemistry.

Pearson and Spearman correlations between RDKit descriptors and (a) the top principal
components of the standardised embeddings, (b) a cross-validated linear read-out
(RidgeCV on KFold folds, so each prediction comes from a model that never saw that molecule).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import QED, Crippen, Descriptors, Lipinski, rdMolDescriptors
from rdkit.rdBase import BlockLogs
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

# The rdkit-stubs shipped with the rdkit wheel (2026.9.1) omit descriptors that RDKit defines as
# module-level lambdas (MolWt, MolLogP, NumHDonors, NumHAcceptors): the stubs are wrong there.
DESCRIPTORS = {
    "MW": Descriptors.MolWt,  # type: ignore[attr-defined]  # rdkit-stubs omit it (see above)
    "LogP": Crippen.MolLogP,  # type: ignore[attr-defined]  # rdkit-stubs omit it
    "HBD": Lipinski.NumHDonors,  # type: ignore[attr-defined]  # rdkit-stubs omit it
    "HBA": Lipinski.NumHAcceptors,  # type: ignore[attr-defined]  # rdkit-stubs omit it
    "TPSA": rdMolDescriptors.CalcTPSA,
    "RotB": rdMolDescriptors.CalcNumRotatableBonds,
    "QED": QED.qed,
    "ChiralCentres": lambda m: len(Chem.FindMolChiralCenters(m, includeUnassigned=True, useLegacyImplementation=False)),
}


def descriptor_table(smiles: Sequence[str]) -> dict[str, np.ndarray]:
    """``{descriptor: float [n]}`` for each name in `DESCRIPTORS` (NaN where unparsable)."""
    out = {name: np.full(len(smiles), np.nan) for name in DESCRIPTORS}
    with BlockLogs():
        for i, s in enumerate(smiles):
            mol = Chem.MolFromSmiles(s)
            if mol is None:
                continue
            for name, fn in DESCRIPTORS.items():
                out[name][i] = float(fn(mol))
    return out


def correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman of two vectors over rows where both are finite (NaN if either
    is constant or fewer than 3 rows remain)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(stats.pearsonr(x, y)[0]), "spearman": float(stats.spearmanr(x, y)[0])}


def interpret_report(
    embeddings: np.ndarray,
    smiles: Sequence[str],
    n_components: int = 5,
    cv_folds: int = 5,
    seed: int = 0,
    descriptors: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """``{"pcs": {"PC1": {desc: {pearson, spearman}}}, "readout": {desc: {...}},
    "explained_variance": [...], "n": n}``. Pass `descriptors` (`descriptor_table(smiles)`)
    when the caller already has them."""
    emb = StandardScaler().fit_transform(np.asarray(embeddings, np.float64))
    desc = descriptor_table(smiles) if descriptors is None else descriptors
    n_comp = min(n_components, emb.shape[0], emb.shape[1])
    pca = PCA(n_components=n_comp, random_state=seed).fit(emb)
    pcs = pca.transform(emb)
    report: dict = {
        "n": int(len(emb)),
        "explained_variance": pca.explained_variance_ratio_.tolist(),
        "pcs": {
            f"PC{j + 1}": {name: correlations(pcs[:, j], values) for name, values in desc.items()}
            for j in range(n_comp)
        },
        "readout": {},
    }
    folds = KFold(n_splits=min(cv_folds, len(emb)), shuffle=True, random_state=seed)
    for name, values in desc.items():
        ok = np.isfinite(values)
        if ok.sum() < folds.n_splits or np.ptp(values[ok]) == 0:
            report["readout"][name] = {"pearson": float("nan"), "spearman": float("nan")}
            continue
        ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        with warnings.catch_warnings():  # ill-conditioned folds on tiny sets are expected
            warnings.simplefilter("ignore")
            pred = cross_val_predict(ridge, emb[ok], values[ok], cv=folds)
        report["readout"][name] = correlations(pred, values[ok])
    return report
