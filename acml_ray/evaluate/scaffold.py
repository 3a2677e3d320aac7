"""DeepChem's deterministic scaffold split (Bemis-Murcko scaffolds, largest sets to train first)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold
from rdkit.rdBase import BlockLogs


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
