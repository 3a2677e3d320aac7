"""Downstream tasks: shipped benchmarks and users' MoleculeNet/TDC-format tables -> `TaskData`.

Labels may be missing (NaN, as in Tox21). Every label has a kind (classification: 0/1 values;
regression: anything else); labels of both kinds in one file become one task per kind. Censored
regression labels (a relation column of ``<``, ``>``, ...) are left out by default.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from acml_ray.config import TaskConfig
from acml_ray.data.sources import load_source, read_table

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
    smiles_column: str | None
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
