"""Isomer discrimination: given a molecule's frozen-modality embedding, is its own graph ranked
first among the graphs of its isomers?

Two kinds of isomer sets:
- constitutional: molecules sharing a molecular formula (QM9 or MOSES formula groups); the
  graph encoder must use connectivity, not composition;
- stereo: the stereoisomers RDKit enumerates for a chiral molecule; only chirality and bond-stereo
  features can separate them, so a graph encoder without them scores at chance.

Every member of a set is a query once (its modality embedding against the set's graphs, and the
reverse direction). Ties count against the query, as in `retrieval_ranks`. Chance level is the
mean of 1/|set| over the same queries.

SMILES (shipped sources, or held-out molecules from a user's table) are parsed through the
project's guard (`acml_ray.chem.guard.parse_smiles`); a row it rejects is skipped and
quarantined with its reason (stage: the isomer kind), and each kind counts its skipped rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rdkit import Chem
from rdkit.Chem.EnumerateStereoisomers import EnumerateStereoisomers, StereoEnumerationOptions
from rdkit.Chem.rdMolDescriptors import CalcMolFormula
from rdkit.rdBase import BlockLogs

from acml_ray.chem import (
    DEFAULT_LIMITS,
    GraphFeaturizer,
    InvalidInputError,
    Rejected,
    SmilesLimits,
    parse_smiles,
    reason_counts,
)
from acml_ray.config import ACMLConfig, IsomerEvalConfig
from acml_ray.data.sources import load_source
from acml_ray.evaluate.embeddings import graph_embeddings, paired_from_smiles, project_vectors
from acml_ray.evaluate.retrieval import retrieval_ranks
from acml_ray.model.acml import ACMLModel


@dataclass
class IsomerSet:
    """Molecules that are isomers of each other (`key`: the formula or the parent SMILES)."""

    kind: str
    key: str
    smiles: list[str]


def set_discrimination(
    queries: np.ndarray, candidates: np.ndarray, set_ids: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict:
    """How well each query ranks its own candidate within its isomer set.

    Row i of `queries` and `candidates` is the same molecule; `set_ids[i]` names its isomer set.
    Sets with fewer than two members are ignored. ``accuracy`` is top-1; ``top<k>`` and ``mrr``
    come with their chance level in ``random`` (a set of n: min(k, n) / n and mean(1/r)).
    """
    set_ids = np.asarray(set_ids)
    all_ranks, sizes, per_query_size = [], [], []
    for sid in np.unique(set_ids):
        idx = np.flatnonzero(set_ids == sid)
        if len(idx) < 2:
            continue
        all_ranks.append(retrieval_ranks(queries[idx], candidates[idx]))
        per_query_size += [len(idx)] * len(idx)
        sizes.append(len(idx))
    if not sizes:
        return {
            "accuracy": float("nan"),
            "chance": float("nan"),
            "n_sets": 0,
            "n_queries": 0,
            "mean_set_size": float("nan"),
        }
    ranks, n = np.concatenate(all_ranks), np.asarray(per_query_size)
    random = {f"top{k}": float(np.mean(np.minimum(k, n) / n)) for k in ks}
    random["mrr"] = float(np.mean([np.mean(1.0 / np.arange(1, m + 1)) for m in n]))
    return {
        "accuracy": float(np.mean(ranks == 0)),
        "chance": float(np.mean(1.0 / n)),
        **{f"top{k}": float(np.mean(ranks < k)) for k in ks},
        "mrr": float(np.mean(1.0 / (ranks + 1))),
        "random": random,
        "n_sets": len(sizes),
        "n_queries": len(ranks),
        "mean_set_size": float(np.mean(sizes)),
    }


def _flat_smiles(smiles: object, limits: SmilesLimits) -> str:
    """Canonical SMILES without stereo; InvalidInputError if the guard rejects the input."""
    return Chem.MolToSmiles(parse_smiles(smiles, limits)[1], isomericSmiles=False)


def formula_groups(
    smiles: Sequence[object],
    formulas: Sequence[object] | None,
    n_groups: int,
    max_set_size: int,
    seed: int,
    limits: SmilesLimits = DEFAULT_LIMITS,
) -> tuple[list[IsomerSet], list[Rejected]]:
    """Seeded sample of up to `n_groups` formulas with >= 2 distinct (stereo-free) structures,
    each cut to at most `max_set_size` members, and the rows skipped on the way. Formulas are
    computed by RDKit when not given.

    Only the sampled groups' members are canonicalised, so a 130k-molecule pool stays cheap; with
    given formulas, a member the guard rejects is therefore found (and counted) only when its
    group is sampled. A row without a formula string is skipped as ``no formula``.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    rejected: list[Rejected] = []
    with BlockLogs():
        for i, s in enumerate(smiles):
            if formulas is not None:
                formula = formulas[i]
                if isinstance(formula, str) and formula:
                    groups[formula].append(i)
                else:
                    rejected.append(Rejected.of(i, s, f"no formula: {formula!r}"))
                continue
            try:
                groups[CalcMolFormula(parse_smiles(s, limits)[1])].append(i)
            except InvalidInputError as err:
                rejected.append(Rejected.of(i, s, err.reason))
        eligible = sorted(k for k, members in groups.items() if len(members) >= 2)
        rng = np.random.default_rng(seed)
        sets: list[IsomerSet] = []
        for j in rng.permutation(len(eligible)):
            if len(sets) >= n_groups:
                break
            members: set[str] = set()
            for k in rng.permutation(len(groups[eligible[j]])):
                i = groups[eligible[j]][k]
                try:
                    members.add(_flat_smiles(smiles[i], limits))
                except InvalidInputError as err:
                    rejected.append(Rejected.of(i, smiles[i], err.reason))
                if len(members) >= max_set_size:
                    break
            if len(members) >= 2:
                sets.append(IsomerSet("constitutional", eligible[j], sorted(members)))
    return sets, rejected


def stereo_sets(
    smiles: Sequence[object], n_molecules: int, max_set_size: int, seed: int, limits: SmilesLimits = DEFAULT_LIMITS
) -> tuple[list[IsomerSet], list[Rejected]]:
    """Stereoisomer sets of a seeded sample of molecules with at least one stereo element, and
    the rows the guard rejected among those visited (the sample stops at `n_molecules` sets).

    The original molecule is always a member; the others are RDKit's enumeration (all stereo
    elements, assigned or not), sampled when there are more than `max_set_size`.
    """
    rng = np.random.default_rng(seed)
    sets: list[IsomerSet] = []
    rejected: list[Rejected] = []
    with BlockLogs():
        for i in rng.permutation(len(smiles)):
            if len(sets) >= n_molecules:
                break
            try:
                mol = parse_smiles(smiles[i], limits)[1]
            except InvalidInputError as err:
                rejected.append(Rejected.of(int(i), smiles[i], err.reason))
                continue
            options = StereoEnumerationOptions(
                onlyUnassigned=False, unique=True, maxIsomers=4 * max_set_size, rand=int(seed) + 1
            )
            original = Chem.MolToSmiles(mol)
            isomers = sorted({Chem.MolToSmiles(m) for m in EnumerateStereoisomers(mol, options=options)} - {original})
            if not isomers:
                continue
            if len(isomers) > max_set_size - 1:
                isomers = [isomers[k] for k in sorted(rng.choice(len(isomers), max_set_size - 1, replace=False))]
            sets.append(IsomerSet("stereo", original, [original, *isomers]))
    return sets, rejected


def _quarantine_rows(kind: str, source: str, rejected: Sequence[Rejected]) -> list[dict]:
    """Rows for the evaluation's quarantine table (`acml_ray.evaluate.suite.QUARANTINE_SCHEMA`)."""
    return [
        {"mol_id": f"{source}:row {r.index}", "input": r.input, "stage": kind, "reason": r.reason, "section": "isomers"}
        for r in rejected
    ]


def build_isomer_sets(
    cfg: IsomerEvalConfig, seed: int, held_out: list[str] | None = None, limits: SmilesLimits = DEFAULT_LIMITS
) -> tuple[list[IsomerSet], list[dict]]:
    """Constitutional and stereo sets from the configured shipped sources, or (source
    ``held_out``) from `held_out`, the SMILES of the molecules being evaluated, so that no member
    of a formula group, and no parent of a stereo set, is a molecule the model trained on.

    Returns the sets and the quarantine rows of the inputs skipped (``mol_id``
    ``<source>:row <i>``, stage ``constitutional`` or ``stereo``); pass the run's featuriser
    `limits`, so that a molecule the featuriser would reject is skipped here, before it fills a set.
    """
    if held_out is None and "held_out" in (cfg.constitutional_source, cfg.stereo_source):
        raise ValueError("isomer sets from held_out need the held-out molecules")
    sets: list[IsomerSet] = []
    rows: list[dict] = []
    if cfg.constitutional_source != "none" and cfg.constitutional_groups:
        if cfg.constitutional_source == "qm9":
            qm9 = load_source("qm9")
            pool, formulas = qm9["smiles"].tolist(), qm9["Stoichiometry"].tolist()
        elif cfg.constitutional_source == "moses":
            pool, formulas = load_source("moses", limit=cfg.pool_limit, seed=seed)["smiles"].tolist(), None
        else:
            assert held_out is not None
            pool, formulas = held_out, None
        found, rejected = formula_groups(pool, formulas, cfg.constitutional_groups, cfg.max_set_size, seed, limits)
        sets += found
        rows += _quarantine_rows("constitutional", cfg.constitutional_source, rejected)
    if cfg.stereo_source != "none" and cfg.stereo_molecules:
        # Molecules without any stereo element enumerate to themselves and are skipped.
        parents = held_out if cfg.stereo_source == "held_out" else load_source(cfg.stereo_source)["smiles"].tolist()
        assert parents is not None
        found, rejected = stereo_sets(parents, cfg.stereo_molecules, cfg.max_set_size, seed, limits)
        sets += found
        rows += _quarantine_rows("stereo", cfg.stereo_source, rejected)
    return sets, rows


def isomer_report(
    model: ACMLModel,
    run_cfg: ACMLConfig,
    sets: list[IsomerSet],
    cache_dir: str | None = None,
    progress: bool = False,
    ks: Sequence[int] = (1, 5, 10),
    rejected: Sequence[dict] = (),
) -> tuple[dict[str, dict], list[dict]]:
    """``{kind: {"<m>->graph": {...}, "graph-><m>": {...}, "n_sets_built": n, "rejected": r,
    "rejected_by_reason": {reason kind: r}}}`` per modality, and the quarantine rows.

    `rejected`: the rows `build_isomer_sets` skipped; set members the featuriser rejects are
    added to them (``mol_id`` ``<kind> set <key>``) and dropped (a set left with one member no
    longer counts); each kind counts its rows. Members a modality rejects are dropped too.
    """
    smiles = [s for iset in sets for s in iset.smiles]
    set_of = np.array([j for j, iset in enumerate(sets) for _ in iset.smiles])
    kind_of = np.array([sets[j].kind for j in set_of]) if len(set_of) else np.array([], dtype=str)
    examples, kept = paired_from_smiles(smiles, run_cfg, cache_dir, progress=progress)
    rows = list(rejected)
    dropped = np.setdiff1d(np.arange(len(smiles)), kept)
    if len(dropped):  # featurised again for their reasons: a few members at most
        results = GraphFeaturizer(run_cfg.featurizer).featurize_batch([smiles[i] for i in dropped])
        rows += [
            {
                "mol_id": f"{sets[set_of[i]].kind} set {sets[set_of[i]].key}",
                "input": smiles[i][:300],
                "stage": sets[set_of[i]].kind,
                "reason": r.reason if isinstance(r, Rejected) else "rejected by the featuriser",
                "section": "isomers",
            }
            for i, r in zip(dropped, results)
        ]
    report: dict[str, dict] = {}
    for kind in sorted({s.kind for s in sets} | {r["stage"] for r in rows}):
        mine = reason_counts(r["reason"] for r in rows if r["stage"] == kind)
        report[kind] = {
            "n_sets_built": sum(s.kind == kind for s in sets),
            "rejected": sum(mine.values()),
            "rejected_by_reason": mine,
        }
    for modality in model.modalities:
        if modality not in examples.vectors:
            continue
        ok = examples.masks[modality].numpy()
        mod = project_vectors(model, examples.vectors[modality].numpy()[ok], modality)
        graphs = graph_embeddings(model, [g for g, o in zip(examples.graphs, ok) if o], modality)
        ids, kinds = set_of[kept][ok], kind_of[kept][ok]
        for kind in sorted(set(kinds.tolist())):
            sel = kinds == kind
            entry = report[kind]
            entry[f"{modality}->graph"] = set_discrimination(mod[sel], graphs[sel], ids[sel], ks)
            entry[f"graph->{modality}"] = set_discrimination(graphs[sel], mod[sel], ids[sel], ks)
    return report, rows
