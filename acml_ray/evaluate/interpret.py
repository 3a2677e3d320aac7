"""Interpretability: how linearly graph embeddings encode basic chemistry.

Pearson and Spearman correlations between RDKit descriptors and (a) the top principal
components of the standardised embeddings, (b) a cross-validated linear read-out
(RidgeCV on KFold folds, so each prediction comes from a model that never saw that molecule).

SMILES are parsed through the project's guard (`acml_ray.chem.guard.parse_smiles`): a held-out
table or user file may hold text RDKit cannot parse, or a huge ring whose parse alone costs
minutes or crashes, so a row the guard rejects is left out and counted with its reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

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

from acml_ray.chem import DEFAULT_LIMITS, InvalidInputError, Rejected, SmilesLimits, parse_smiles, reason_counts

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


@dataclass
class DescriptorTable:
    """RDKit descriptors of a list of SMILES, and the rows the guard rejected.

    `values`: ``{descriptor: float [n]}`` for each name in `DESCRIPTORS`, NaN on rejected rows;
    `rejected`: one `Rejected` (row index, input, reason) per row left out.
    """

    values: dict[str, np.ndarray]
    rejected: list[Rejected]

    @property
    def ok(self) -> np.ndarray:
        """bool [n]: the rows whose descriptors were computed."""
        n = len(next(iter(self.values.values()))) if self.values else 0
        mask = np.ones(n, dtype=bool)
        mask[[r.index for r in self.rejected]] = False
        return mask


def descriptor_table(smiles: Sequence[object], limits: SmilesLimits = DEFAULT_LIMITS) -> DescriptorTable:
    """Descriptors of every SMILES the guard accepts within `limits` (pass the run's featuriser
    limits, as the graphs were made with them); the others are rejected with the guard's reason,
    never parsed further (an empty string would otherwise be an empty molecule with a QED)."""
    out = {name: np.full(len(smiles), np.nan) for name in DESCRIPTORS}
    rejected: list[Rejected] = []
    with BlockLogs():
        for i, s in enumerate(smiles):
            try:
                mol = parse_smiles(s, limits)[1]
            except InvalidInputError as err:
                rejected.append(Rejected.of(i, s, err.reason))
                continue
            for name, fn in DESCRIPTORS.items():
                out[name][i] = float(fn(mol))
    return DescriptorTable(out, rejected)


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
    smiles: Sequence[object],
    n_components: int = 5,
    cv_folds: int = 5,
    seed: int = 0,
    descriptors: DescriptorTable | None = None,
    skipped: Sequence[Rejected] = (),
) -> dict:
    """``{"pcs": {"PC1": {desc: {pearson, spearman}}}, "readout": {desc: {...}},
    "explained_variance": [...], "n": n, "rejected": r, "rejected_by_reason": {kind: r}}``.

    Pass `descriptors` (`descriptor_table(smiles)`) when the caller already has them. Rows whose
    SMILES the guard rejects are left out of everything (PCA included: they have no descriptors
    to compare with) and counted in ``rejected``, with `skipped`: rows the caller dropped before
    embedding (no graph), so the section reports every row it did not use. Fewer than two usable
    rows is an error: nothing can be correlated.
    """
    table = descriptor_table(smiles) if descriptors is None else descriptors
    ok = table.ok
    rejected = [*skipped, *table.rejected]
    by_reason = reason_counts(r.reason for r in rejected)
    if ok.sum() < 2:
        raise ValueError(
            f"interpret: {int(ok.sum())} usable molecule(s) of {len(ok)} "
            f"({len(rejected)} rejected: {by_reason}); needs at least 2"
        )
    emb = StandardScaler().fit_transform(np.asarray(embeddings, np.float64)[ok])
    desc = {name: values[ok] for name, values in table.values.items()}
    n_comp = min(n_components, emb.shape[0], emb.shape[1])
    pca = PCA(n_components=n_comp, random_state=seed).fit(emb)
    pcs = pca.transform(emb)
    report: dict = {
        "n": int(len(emb)),
        "rejected": len(rejected),
        "rejected_by_reason": by_reason,
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
