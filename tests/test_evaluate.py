"""Evaluation suite: hand-checked metrics, scaffold split, isomer sets, CLI end to end, MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator
from torch import nn

from acml_ray.cache import CachedEmbedder
from acml_ray.chem import GraphFeaturizer, InvalidInputError, MolGraph, reason_kind
from acml_ray.cli.main import main
from acml_ray.config import ACMLConfig, DataSourceConfig, EvalConfig, InterpretConfig, TaskConfig
from acml_ray.data.paired import PairedExamples, build_table
from acml_ray.evaluate.downstream import (
    load_tasks,
    masked_errors,
    masked_roc_auc,
    murcko_scaffold,
    scaffold_split,
)
from acml_ray.evaluate.finetune import _masked_loss
from acml_ray.evaluate.interpret import correlations, interpret_report
from acml_ray.evaluate.isomers import formula_groups, set_discrimination, stereo_sets
from acml_ray.evaluate.retrieval import (
    chunk_rows,
    random_topk,
    rank_metrics,
    retrieval_ranks,
    retrieval_report,
)
from acml_ray.evaluate.suite import log_to_mlflow, numeric_leaves, resolve_model
from acml_ray.modalities import Modality, register_modality
from acml_ray.model.acml import ACMLModel
from acml_ray.model.serialization import load_model, save_model


# --------------------------------------------------------------------------- retrieval
def test_permuted_identity_ranks_with_pessimistic_ties():
    # queries = I, candidates = rows of I permuted by (0)(1 2)(3): sims[i, j] = 1 iff perm[j] == i.
    # Fixed points score 1 and rank 0; swapped queries score 0 for their true candidate, tied with
    # the n - 2 other zeros, and ties count against them: rank n - 1 = 3.
    perm = [0, 2, 1, 3]
    q, c = np.eye(4), np.eye(4)[perm]
    ranks = retrieval_ranks(q, c)
    assert ranks.tolist() == [0, 3, 3, 0]
    m = rank_metrics(ranks, [1, 2, 3, 4])
    assert m["top1"] == 0.5 and m["top3"] == 0.5 and m["top4"] == 1.0
    assert m["mean_rank"] == pytest.approx((1 + 4 + 4 + 1) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 4 + 1) / 4)
    assert retrieval_ranks(np.eye(5), np.eye(5)).tolist() == [0] * 5


def test_rank_metrics_hand_values_and_chance():
    m = rank_metrics(np.array([0, 1, 4]), [1, 2, 5])
    assert (m["top1"], m["top2"], m["top5"]) == pytest.approx((1 / 3, 2 / 3, 1.0))
    assert m["mean_rank"] == pytest.approx(8 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 3)
    assert random_topk(4, [1, 2, 10]) == {"top1": 0.25, "top2": 0.5, "top10": 1.0}
    rep = retrieval_report("m", np.eye(4), np.eye(4), [1, 2], pool_size=128)
    assert rep["m->graph"]["pool_all"]["random"]["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert rep["m->graph"]["pool_all"]["random"]["mean_rank"] == 2.5


def test_chunked_ranks_equal_brute_force():
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    sims = qn @ cn.T
    brute = (sims > np.diag(sims)[:, None]).sum(1)  # no ties in random data
    assert retrieval_ranks(q, c, chunk_size=7).tolist() == brute.tolist()
    assert retrieval_ranks(q, c).tolist() == brute.tolist()
    assert chunk_rows(100_000, 256) == 671 and chunk_rows(10, 1) > 10


def test_retrieval_report_keys_kept():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    rep = retrieval_report(
        "image", x, x + 0.01 * rng.normal(size=x.shape), [1, 2, 3, 5, 10, 20], pool_size=128, repeats=2
    )
    assert set(rep) == {"image->graph", "graph->image"}
    block = rep["image->graph"]["pool_128"]
    assert {"top1", "top20", "random", "n_pool", "mean_rank", "mrr"} <= set(block)
    assert block["n_pool"] == 128 and rep["image->graph"]["pool_all"]["n_pool"] == 300
    assert block["top1"] == 1.0 and block["random"]["top1"] == pytest.approx(1 / 128)


# --------------------------------------------------------------------------- isomers
def test_three_isomer_set_by_hand():
    # Set 0 (three isomers): q = I; graphs g0 = e0, g1 = e2, g2 = e1. Query 0 finds its own graph
    # first; queries 1 and 2 score 0 on their own graph (tied with another 0): both wrong.
    # Set 1 (two isomers) is separable; set 2 has one member and is ignored.
    q = np.zeros((6, 5))
    g = np.zeros((6, 5))
    q[0, 0] = q[1, 1] = q[2, 2] = 1
    g[0, 0], g[1, 2], g[2, 1] = 1, 1, 1
    q[3, 3] = g[3, 3] = 1
    q[4, 4] = g[4, 4] = 1
    q[5], g[5] = [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]
    ids = np.array([0, 0, 0, 1, 1, 2])
    r = set_discrimination(q, g, ids)
    assert r["accuracy"] == pytest.approx((1 + 2) / 5)
    assert r["chance"] == pytest.approx((3 * (1 / 3) + 2 * (1 / 2)) / 5)
    assert (r["n_sets"], r["n_queries"], r["mean_set_size"]) == (2, 5, 2.5)
    # Ranks 0, 2, 2 (a tie with the other zero counts against the query) in set 0; 0, 0 in set 1.
    assert r["top1"] == r["accuracy"] and r["top5"] == 1.0
    assert r["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 3 + 1 + 1) / 5)
    assert r["random"]["top5"] == 1.0  # every set is smaller than 5
    assert r["random"]["mrr"] == pytest.approx((3 * (1 + 1 / 2 + 1 / 3) / 3 + 2 * (1 + 1 / 2) / 2) / 5)
    assert set_discrimination(q, g, ids, ks=(2,))["top2"] == pytest.approx(3 / 5)
    only = set_discrimination(q[:3], g[:3], ids[:3])
    assert only["accuracy"] == pytest.approx(1 / 3) and only["chance"] == pytest.approx(1 / 3)


def test_isomer_set_builders():
    groups, skipped = formula_groups(["CCO", "COC", "OCC", "CCC", "C[C@H](O)CC"], None, 10, 8, 0)
    assert [(s.key, s.smiles) for s in groups] == [("C2H6O", ["CCO", "COC"])] and skipped == []
    qm9_style, _ = formula_groups(["CCO", "COC", "CCC"], ["[6,2,0,1,0]", "[6,2,0,1,0]", "[8,3,0,0,0]"], 5, 8, 0)
    assert len(qm9_style) == 1 and qm9_style[0].key == "[6,2,0,1,0]"
    sets, skipped = stereo_sets(["CC(N)O", "CCO", "C[C@@H](N)[C@H](C)O"], 5, 3, 0)
    assert skipped == []
    by_parent = {s.key: s.smiles for s in sets}
    assert "CCO" not in by_parent  # no stereo element
    assert set(by_parent["CC(N)O"][1:]) == {"C[C@@H](N)O", "C[C@H](N)O"}
    parent = Chem.MolToSmiles(Chem.MolFromSmiles("C[C@@H](N)[C@H](C)O"))
    assert by_parent[parent][0] == parent and len(by_parent[parent]) == 3  # 4 isomers, capped at 3
    assert len(set(by_parent[parent])) == 3


# Inputs a held-out table or a user's file may hold: RDKit cannot parse the first two, reads the
# empty string as an empty molecule, fails on None and NaN with a TypeError, and spends its
# unbounded cost (or crashes) on a huge ring; the guard rejects each with a reason.
HOSTILE = {
    "C1CC": "unparsable SMILES",
    "not a smiles": "unparsable SMILES",
    "": "empty input",
    None: "not a string",
    "C1" + "C" * 998 + "1": "too many heavy atoms",
}


def test_isomer_sets_skip_and_count_hostile_smiles():
    hostile = list(HOSTILE)
    # Given formulas (QM9): the members of a sampled group are parsed, and a bad one is skipped.
    sets, skipped = formula_groups(["CCO", *hostile, "COC"], ["C2H6O"] * 7, 5, 8, 0)
    assert [(s.key, s.smiles) for s in sets] == [("C2H6O", ["CCO", "COC"])]
    assert sorted((r.index, reason_kind(r.reason)) for r in skipped) == [
        (i + 1, HOSTILE[s]) for i, s in enumerate(hostile)
    ]
    sets, skipped = formula_groups(["CCO", *hostile, "COC"], None, 5, 8, 0)
    assert [s.smiles for s in sets] == [["CCO", "COC"]] and len(skipped) == len(hostile)
    sets, skipped = stereo_sets([*hostile, "CC(N)O"], 10, 3, 0)
    assert [s.key for s in sets] == ["CC(N)O"]
    assert sorted(reason_kind(r.reason) for r in skipped) == sorted(HOSTILE.values())


def test_interpret_skips_and_counts_hostile_smiles(chembl_drugs):
    from rdkit.Chem import Descriptors

    smiles = chembl_drugs["smiles"].dropna().sample(60, random_state=0).tolist()
    mw = np.array([Descriptors.MolWt(Chem.MolFromSmiles(s)) for s in smiles])
    noise = np.random.default_rng(0).normal(size=(len(smiles) + len(HOSTILE), 6))
    # The hostile rows come with embeddings (a prepared table holds graphs beside any text).
    emb = np.column_stack([np.concatenate([mw, np.full(len(HOSTILE), 1e4)]), noise])
    rep = interpret_report(emb, [*smiles, *HOSTILE], n_components=3, cv_folds=5)
    assert rep["n"] == 60 and rep["rejected"] == len(HOSTILE)
    assert rep["rejected_by_reason"] == {
        "unparsable SMILES": 2,
        "empty input": 1,
        "not a string": 1,
        "too many heavy atoms": 1,
    }
    assert rep["readout"]["MW"]["pearson"] > 0.99  # the outliers' 1e4 never reached the fit


# --------------------------------------------------------------------------- downstream
def test_roc_auc_rmse_mae_by_hand_with_missing_labels():
    y = np.array([0, 0, 1, 1, np.nan])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.99])
    assert masked_roc_auc(y, s) == pytest.approx(0.75)  # 3 of 4 positive-negative pairs ordered
    two = np.stack([y, [1, 1, 1, np.nan, 1]], axis=1)  # second task has one class: skipped
    assert masked_roc_auc(two, np.stack([s, s], axis=1)) == pytest.approx(0.75)
    e = masked_errors(np.array([1.0, 2.0, 3.0, np.nan]), np.array([1.0, 2.0, 5.0, 100.0]))
    assert e["rmse"] == pytest.approx(math.sqrt(4 / 3)) and e["mae"] == pytest.approx(2 / 3)


def test_masked_loss_ignores_missing_labels():
    out = torch.tensor([[0.0, 5.0], [2.0, -3.0]])
    y = torch.tensor([[1.0, float("nan")], [0.0, float("nan")]])
    full = nn.functional.binary_cross_entropy_with_logits(out[:, 0], y[:, 0])
    assert _masked_loss("classification", out, y).item() == pytest.approx(full.item())
    assert _masked_loss("regression", out, torch.tensor([[1.0, float("nan")], [2.0, 0.0]])).item() == pytest.approx(
        (1 + 0 + 9) / 3
    )


def test_scaffold_split_deepchem_order_by_hand():
    smiles = [
        "c1ccccc1C",
        "c1ccccc1O",
        "c1ccccc1N",
        "c1ccccc1CC",  # 4 x benzene
        "C1CCCCC1C",
        "C1CCCCC1O",  # 2 x cyclohexane
        "c1ccncc1C",  # pyridine
        "CCCO",
    ]  # acyclic: scaffold ""
    train, valid, test, scaffolds = scaffold_split(smiles, (0.5, 0.25, 0.25))
    assert scaffolds[0] == "c1ccccc1" and scaffolds[7] == ""
    assert train.tolist() == [0, 1, 2, 3] and valid.tolist() == [4, 5] and test.tolist() == [6, 7]


def test_scaffold_split_deterministic_and_disjoint(chembl_drugs):
    smiles = chembl_drugs["smiles"].dropna().sample(300, random_state=0).tolist()
    first, second = scaffold_split(smiles), scaffold_split(smiles)
    assert all(np.array_equal(a, b) for a, b in zip(first[:3], second[:3]))
    train, valid, test, scaffolds = first
    assert len(train) + len(valid) + len(test) == len(smiles)
    parts = [{scaffolds[i] for i in part} for part in (train, valid, test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert murcko_scaffold("CCO") == ""


def test_load_task_moleculenet_and_tdc_files(tmp_path):
    mn = tmp_path / "tox.csv"
    pd.DataFrame(
        {"mol_id": [1, 2, 3], "smiles": ["CCO", "CCN", "c1ccccc1"], "NR-AR": [1, 0, None], "SR-MMP": [None, 1, 0]}
    ).to_csv(mn, index=False)
    [task] = load_tasks(TaskConfig(name="tox", path=str(mn)))
    assert task.task_names == ["NR-AR", "SR-MMP"] and task.kind == "classification"
    assert np.isnan(task.labels[2, 0]) and task.labels[1, 1] == 1
    tdc = tmp_path / "lipo.csv"
    pd.DataFrame({"Drug_ID": ["a", "b"], "Drug": ["CCO", "CCC"], "Y": [0.5, 1.7]}).to_csv(tdc, index=False)
    [task] = load_tasks(TaskConfig(name="lipo", path=str(tdc)))
    assert task.task_names == ["Y"] and task.kind == "regression" and task.smiles == ["CCO", "CCC"]
    [b3db] = load_tasks(TaskConfig(name="b3db_classification", limit=50))
    assert b3db.kind == "classification" and set(np.unique(b3db.labels)) <= {0.0, 1.0}


# --------------------------------------------------------------------------- interpretability
def test_pearson_spearman_on_constructed_data():
    x = np.arange(1.0, 6.0)
    assert correlations(x, 2 * x + 1) == pytest.approx({"pearson": 1.0, "spearman": 1.0})
    assert correlations(x, -x)["spearman"] == pytest.approx(-1.0)
    cubic = correlations(x, x**3)
    assert cubic["spearman"] == pytest.approx(1.0) and cubic["pearson"] < 0.99
    assert math.isnan(correlations(x, np.ones(5))["pearson"])
    assert correlations(np.array([1.0, 2.0, np.nan, 4.0]), np.array([2.0, 4.0, 5.0, 8.0]))["pearson"] == pytest.approx(
        1.0
    )


def test_interpret_readout_recovers_encoded_descriptor(chembl_drugs):
    from rdkit.Chem import Descriptors

    smiles = chembl_drugs["smiles"].dropna().sample(120, random_state=0).tolist()
    mw = np.array([Descriptors.MolWt(Chem.MolFromSmiles(s)) for s in smiles])
    noise = np.random.default_rng(0).normal(size=(len(smiles), 6))
    rep = interpret_report(np.column_stack([mw, noise]), smiles, n_components=3, cv_folds=5)
    assert rep["readout"]["MW"]["pearson"] > 0.99
    assert set(rep["readout"]) == {"MW", "LogP", "HBD", "HBA", "TPSA", "RotB", "QED", "ChiralCentres"}
    assert len(rep["pcs"]) == 3


# --------------------------------------------------------------------------- tiny run + CLI
class _FingerprintModality(Modality):
    """Cheap stand-in for a frozen modality: chiral Morgan counts through a fixed random linear map."""

    name = "test_fp"

    @property
    def dim(self) -> int:
        return 32

    def preprocess_config(self) -> dict:
        return {"radius": 2, "size": 128, "chiral": True}

    def preprocess_one(self, raw) -> torch.Tensor:
        mol = Chem.MolFromSmiles(raw) if isinstance(raw, str) else None
        if mol is None:
            raise InvalidInputError("unparsable SMILES")
        gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=128, includeChirality=True)
        return torch.tensor(gen.GetCountFingerprintAsNumPy(mol), dtype=torch.float32)

    def _build_encoder(self) -> nn.Module:
        linear = nn.Linear(128, 32)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(32, 128, generator=g) / 11)
            linear.bias.zero_()
        return linear


register_modality("test_fp", _FingerprintModality)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, chembl_drugs) -> Path:
    """A run folder like `acml demo` writes (model/model.pt, data/{train,val}.parquet, cache/),
    from 40 optimiser steps of a tiny GIN on 120 real molecules."""
    run = tmp_path_factory.mktemp("run")
    cfg = ACMLConfig.model_validate(
        {
            "graph_encoder": {"num_layers": 2, "hidden_dim": 16},
            "projection": {"dims": [32]},
            "loss": {"kind": "infonce", "temperature": 0.1},
            "modalities": [{"name": "test_fp"}],
            "output_dir": str(run),
        }
    )
    smiles = chembl_drugs["smiles"].dropna().sample(140, random_state=0).tolist()
    graphs = [g for g in GraphFeaturizer(cfg.featurizer).featurize_batch(smiles) if isinstance(g, MolGraph)][:120]
    result = CachedEmbedder(_FingerprintModality(), cfg.resolved_cache_dir()).embed([g.smiles for g in graphs])
    table = build_table(graphs, {"test_fp": (result.vectors, result.ok)})
    order = np.random.default_rng(4).permutation(len(graphs))
    train_idx, val_idx = np.sort(order[36:]), np.sort(order[:36])
    (run / "data").mkdir()
    pq.write_table(table.take(train_idx), run / "data" / "train.parquet")
    pq.write_table(table.take(val_idx), run / "data" / "val.parquet")
    torch.manual_seed(0)
    model = ACMLModel.from_config(cfg, {"test_fp": 32})
    examples = PairedExamples.from_table(table.take(train_idx), ["test_fp"])
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    model.train()
    for step in range(40):
        for idx in examples.epoch_batches(32, step, seed=0)[:1]:
            batch, inputs = examples.batch(idx)
            loss = model(batch, inputs)["loss"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    save_model(model, cfg, run / "model", extra={"epoch": 1})
    return run


def test_resolve_model_paths(tiny_run, tmp_path):
    assert resolve_model(str(tiny_run), tmp_path) == (tiny_run / "model", tiny_run)
    assert resolve_model(str(tiny_run / "model"), tmp_path) == (tiny_run / "model", tiny_run)
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path), tmp_path)


def test_resolve_model_from_a_train_runs_best_folder(tiny_run, tmp_path):
    from acml_ray.train.best import download_best, save_best

    model, cfg, _ = load_model(tiny_run / "model")
    best = tmp_path / "ray_results" / "train-x" / "best"
    save_best(model, cfg, str(best), {"epoch": 3, "step": 9, "metric": "val/score", "score": 0.5, "metrics": {}}, [])
    resolved, run = resolve_model(str(best), tmp_path / "work")
    assert run is None and load_model(resolved)[2]["epoch"] == 3
    copy = tmp_path / "copy"
    download_best(str(best), copy)  # a copied best model (OUTPUT/model) is a plain model folder
    assert resolve_model(str(copy), tmp_path / "work2") == (copy, None)


def test_cli_evaluate_end_to_end(tiny_run, tmp_path, chembl_drugs):
    task_csv = tmp_path / "toy_tox.csv"
    sample = chembl_drugs["smiles"].dropna().sample(80, random_state=1).tolist()
    logp = [Chem.Crippen.MolLogP(Chem.MolFromSmiles(s)) for s in sample]
    pd.DataFrame(
        {
            "smiles": sample,
            "lipophilic": [float(v > 2) for v in logp],
            "sparse": [float(v > 3) if i % 3 else None for i, v in enumerate(logp)],
        }
    ).to_csv(task_csv, index=False)
    out = tmp_path / "eval"
    sets = [
        "eval.pool_size=16",
        "eval.pool_repeats=2",
        "eval.isomers.constitutional_groups=3",
        "eval.isomers.stereo_molecules=3",
        "eval.isomers.max_set_size=3",
        "eval.interpret.cv_folds=3",
        "eval.downstream.epochs=2",
        "eval.downstream.rf_trees=10",
        "eval.downstream.batch_size=32",
        "eval.downstream.workers=1",
    ]  # parallel fits: test_parallel_fits_*
    argv = ["evaluate", "--model", str(tiny_run), "--out", str(out), "--task", str(task_csv), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    for name in (
        "report.md",
        "retrieval_curves.png",
        "correlation_heatmap.png",
        "embedding_projection.png",
        "splits/toy_tox.csv",
    ):
        assert (out / name).is_file(), name
    block = report["retrieval"]["test_fp->graph"]
    assert set(block) == {"pool_16", "pool_all"} and block["pool_all"]["n_pool"] == report["held_out_molecules"]
    assert {f"top{k}" for k in (1, 2, 3, 5, 10, 20)} | {"mrr", "mean_rank"} <= set(block["pool_all"])
    for kind in ("constitutional", "stereo"):
        iso = report["isomers"][kind]["test_fp->graph"]
        assert iso["n_sets"] >= 1 and 0 <= iso["accuracy"] <= 1 and 1 / 3 <= iso["chance"] <= 0.5
    assert set(report["interpret"]["readout"]) >= {"MW", "QED", "ChiralCentres"}
    toy = report["downstream"]["toy_tox"]
    assert toy["kind"] == "classification" and toy["tasks"] == ["lipophilic", "sparse"]
    assert set(toy["methods"]) == {"linear_probe", "finetune", "scratch", "ecfp_rf", "ecfp_linear"}
    # Seeds move what is random (forests, network init and order); linear fits are seed-free and
    # reported once, not as three copies with sd 0.
    for method in ("finetune", "scratch", "ecfp_rf"):
        m = toy["methods"][method]
        assert m["runs"] == 3 and m["seeds"] == [0, 1, 2] and len(m["roc_auc"]["values"]) == 3
    for method in ("linear_probe", "ecfp_linear"):
        m = toy["methods"][method]
        assert m["runs"] == 1 and m["deterministic"] and m["roc_auc"]["sd"] is None and m["seeds"] is None
    assert len(set(toy["methods"]["scratch"]["roc_auc"]["values"])) > 1
    split = pd.read_csv(out / "splits" / "toy_tox.csv", keep_default_na=False)
    by_part = split.groupby("split")["scaffold"].apply(set)
    assert not (by_part["train"] & by_part["test"])
    assert "## Property prediction" in (out / "report.md").read_text()

    # --data: a molecule CSV is featurised and embedded through the cache; retrieval only.
    mols = tmp_path / "mols.csv"
    pd.DataFrame({"smiles": sample[:40]}).to_csv(mols, index=False)
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_run / "model"),
                "--out",
                str(tmp_path / "e2"),
                "--data",
                str(mols),
                "--sections",
                "retrieval",
                "--set",
                "eval.pool_size=8",
                "--quiet",
            ]
        )
        == 0
    )
    second = json.loads((tmp_path / "e2" / "report.json").read_text())
    accepted = sum(isinstance(r, MolGraph) for r in GraphFeaturizer().featurize_batch(sample[:40]))
    overlap = second["training_overlap"]  # on by default: the run's training table is known
    assert overlap["checked"] and overlap["excluded"] and overlap["dropped"] == overlap["in_training"]
    assert second["held_out_molecules"] == accepted - overlap["dropped"] > 30 and "downstream" not in second


def test_mlflow_logging_to_sqlite(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # MLflow's default artifact root would be ./mlruns here
    out = tmp_path / "eval"
    out.mkdir()
    (out / "report.md").write_text("# r\n")
    report = {
        "retrieval": {"image->graph": {"pool_all": {"top1": 0.5, "random": {"top1": 0.1}}}},
        "downstream": {"t": {"methods": {"ecfp_rf": {"roc_auc": {"mean": float("nan"), "values": [1]}}}}},
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert log_to_mlflow(out, report, EvalConfig()) is None  # tracking off
    cfg = EvalConfig(tracking_uri=uri, mlflow_experiment="eval-test")
    run_id = log_to_mlflow(out, report, cfg)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.metrics == {
        "eval/retrieval/image_to_graph/pool_all/top1": 0.5,
        "eval/retrieval/image_to_graph/pool_all/random/top1": 0.1,
    }
    assert [a.path for a in client.list_artifacts(run_id, "evaluation")] == ["evaluation/report.md"]
    # The new experiment's artifacts live beside the database, not under the working folder.
    assert client.get_experiment_by_name("eval-test").artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert not any(workdir.iterdir())
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as active:  # an active run receives the artifacts
        assert log_to_mlflow(out, report, EvalConfig(tracking_uri=uri)) == active.info.run_id
    assert numeric_leaves({"a->b": {"x": 1, "y": [1], "z": True}}) == {"a_to_b/x": 1.0}


# --------------------------------------------------------------------------- users' own data
from acml_ray.cli.evaluate import parse_task  # noqa: E402
from acml_ray.config import DownstreamConfig  # noqa: E402
from acml_ray.evaluate.downstream import (  # noqa: E402
    FitInputs,
    FitRunner,
    reference_score,
    run_task,
    train_graph_model,
)
from acml_ray.evaluate.suite import default_out_dir, evaluate_run  # noqa: E402
from acml_ray.model.gin import GraphEncoder  # noqa: E402


def _b3db_file(tmp_path, n: int = 300, seed: int = 0) -> Path:
    """Real B3DB molecules with a binary label (BBB+ -> 1) and a continuous one (logBB, partly missing)."""
    from acml_ray.data.sources import load_source

    frame = load_source("b3db_classification").sample(n, random_state=seed)
    path = tmp_path / "bbb.csv"
    pd.DataFrame(
        {
            "SMILES": frame["smiles"],
            "bbb": (frame["BBB+/BBB-"] == "BBB+").astype(float),
            "logBB": pd.to_numeric(frame["logBB"], errors="coerce"),
        }
    ).to_csv(path, index=False)
    return path


def test_task_spec_names_columns_and_kinds(capsys):
    spec = parse_task("data/assay.csv:canonical_smiles:pIC50=regression,active=classification")
    assert (spec.name, spec.path, spec.smiles_column) == ("assay", "data/assay.csv", "canonical_smiles")
    assert spec.label_columns == ["pIC50", "active"] and spec.kind == {
        "pIC50": "regression",
        "active": "classification",
    }
    s3 = parse_task("s3://bucket/sets/chembl.tsv.gz::pIC50")
    assert (s3.path, s3.smiles_column, s3.label_columns, s3.kind) == (
        "s3://bucket/sets/chembl.tsv.gz",
        None,
        ["pIC50"],
        None,
    )
    assert parse_task("freesolv").path is None and parse_task("my.csv").label_columns is None
    with pytest.raises(ValueError, match="kind 'reg' of label 'y'"):
        parse_task("my.csv:smiles:y=reg")
    assert TaskConfig(name="x").limit is None  # no silent row limit
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "PATH[:SMILES_COLUMN[:LABEL[=KIND],...]]" in text and "docs/evaluation.md" in text
    assert "--task-limit N" in text and "--exclude-training" in text and "--keep-censored" in text
    for argv, message in (
        (["--task", "my.csv:smiles:y=reg"], "kind 'reg' of label 'y'"),
        (["--task", "freesolv", "--task-limit", "0"], "limit: Input should be greater than"),
    ):
        assert main(["evaluate", "--model", "no-model", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("acml: error: ") and message in err and "\n" not in err, err


def test_every_row_is_used_unless_a_limit_is_given_and_said():
    said: list[str] = []
    [full] = load_tasks(TaskConfig(name="b3db_classification"), say=said.append)
    assert len(full.smiles) == 7807 and "limit" not in full.notes and not said
    [sample] = load_tasks(TaskConfig(name="b3db_classification", limit=100), seed=3, say=said.append)
    assert len(sample.smiles) == 100 and sample.notes["limit"] == 100
    assert said == ["task b3db_classification: random sample of 100 of 7807 rows (limit 100)"]


def test_binary_and_continuous_labels_are_never_one_regression(tmp_path, caplog):
    path = _b3db_file(tmp_path)
    with caplog.at_level("WARNING"):
        tasks = load_tasks(TaskConfig(name="bbb", path=str(path)), say=lambda _: None)
    assert [(t.name, t.kind, t.task_names) for t in tasks] == [
        ("bbb-classification", "classification", ["bbb"]),
        ("bbb-regression", "regression", ["logBB"]),
    ]
    assert "labels of two kinds" in caplog.text and "inferred" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # kinds chosen by the user: split without a warning
        chosen = load_tasks(
            TaskConfig(name="bbb", path=str(path), kind={"bbb": "classification", "logBB": "regression"}),
            say=lambda _: None,
        )
    assert len(chosen) == 2 and "labels of two kinds" not in caplog.text
    assert np.isnan(chosen[1].labels).any() and set(np.unique(chosen[0].labels)) == {0.0, 1.0}
    [both_regression] = load_tasks(TaskConfig(name="bbb", path=str(path), kind="regression"))
    assert both_regression.task_names == ["bbb", "logBB"]
    with pytest.raises(ValueError, match="'logBB' is classification but holds values other than 0/1"):
        load_tasks(TaskConfig(name="bbb", path=str(path), kind={"logBB": "classification"}))
    with pytest.raises(ValueError, match=r"kind given for \['pIC50'\]"):
        load_tasks(TaskConfig(name="bbb", path=str(path), kind={"pIC50": "regression"}))


def _censored_file(tmp_path) -> tuple[Path, pd.DataFrame]:
    """Real B3DB logBB values with a ChEMBL-style relation column: 20 '>' and 10 quoted '<'
    (lower and upper bounds), 5 '~' (approximate: an exact value), the rest '='."""
    from acml_ray.data.sources import load_source

    frame = load_source("b3db_regression").sample(120, random_state=0)[["smiles", "logBB"]].reset_index(drop=True)
    frame["relation"] = [">"] * 20 + ["'<'"] * 10 + ["~"] * 5 + ["="] * (len(frame) - 35)
    path = tmp_path / "logbb.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_censored_labels_are_left_out_by_default_and_counted(tmp_path, tiny_run):
    path, frame = _censored_file(tmp_path)
    [excluded] = load_tasks(TaskConfig(name="logbb", path=str(path)), say=lambda _: None)
    c = excluded.notes["censoring"]
    assert (c["policy"], c["rows"], c["by_relation"], c["approximate"]) == ("exclude", 30, {">": 20, "<": 10}, 5)
    assert np.isnan(excluded.labels[:30, 0]).all() and np.isfinite(excluded.labels[30:, 0]).all()
    [kept] = load_tasks(TaskConfig(name="logbb", path=str(path), censored="keep"), say=lambda _: None)
    assert kept.notes["censoring"]["policy"] == "keep" and kept.notes["censoring"]["rows"] == 30
    np.testing.assert_allclose(kept.labels[:, 0], frame["logBB"].to_numpy())
    renamed = path.with_name("renamed.csv")
    frame.rename(columns={"relation": "Standard Relation"}).to_csv(renamed, index=False)
    [other] = load_tasks(TaskConfig(name="logbb", path=str(renamed), relation_column="Standard Relation"))
    assert other.notes["censoring"]["rows"] == 30

    model, run_cfg, _ = load_model(tiny_run / "model")
    cfg = DownstreamConfig(methods=["ecfp_linear"], seeds=[0])
    report, quarantine = run_task(model, run_cfg, excluded, cfg, say=lambda _: None)
    censored_rows = [q for q in quarantine if q["stage"] == "label"]
    assert len(censored_rows) == 30 and censored_rows[0]["reason"].startswith("censored label (>)")
    assert report["n"] == len(excluded.smiles) - len(quarantine) and report["censoring"]["rows"] == 30
    from acml_ray.evaluate.report import render_markdown

    text = render_markdown({"downstream": {"logbb": report}})
    assert "30 rows {'>': 20, '<': 10}, excluded from training and metrics" in text


def test_r2_and_reference_beside_every_metric_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    e = masked_errors(y, np.array([1.0, 2.0, 3.0, 5.0]))
    assert e == pytest.approx({"rmse": 0.5, "mae": 0.25, "r2": 1 - 1 / 5})
    ref = reference_score("regression", np.array([[2.0], [4.0], [np.nan]]), y[:, None])  # predicts 3
    assert ref == pytest.approx({"rmse": math.sqrt(6 / 4), "mae": 1.0, "r2": 1 - 6 / 5})
    prior = reference_score(
        "classification", np.array([[0.0], [1.0], [1.0], [1.0]]), np.array([[0.0], [0.0], [1.0], [1.0], [1.0]])
    )
    assert prior == pytest.approx({"roc_auc": 0.5, "pr_auc": 0.6})  # PR-AUC of a constant = prevalence


def _fit_inputs(tiny_run, epochs: int, patience: int | None, lr: float = 1e-3) -> tuple[FitInputs, object]:
    from acml_ray.data.sources import load_source

    model, run_cfg, _ = load_model(tiny_run / "model")
    frame = load_source("freesolv").sample(140, random_state=0)
    results = GraphFeaturizer().featurize_batch(frame["smiles"].tolist())
    ok = [isinstance(r, MolGraph) for r in results]
    frame, graphs = frame[ok].head(120), [r.to_pyg() for r in results if isinstance(r, MolGraph)][:120]
    train, valid, test, _ = scaffold_split(frame["smiles"].tolist())
    cfg = DownstreamConfig(epochs=epochs, patience=patience, lr=lr, batch_size=32, rf_trees=10)
    return FitInputs(
        "regression",
        frame[["expt"]].to_numpy(float),
        train,
        valid,
        test,
        cfg,
        run_cfg.graph_encoder,
        graphs=graphs,
        pretrained=model.graph_encoder,
    ), model


def test_graph_trainings_stop_early_on_the_validation_loss(tiny_run):
    inputs, _ = _fit_inputs(tiny_run, epochs=40, patience=2, lr=0.03)
    torch.manual_seed(0)
    pred, info = train_graph_model(
        GraphEncoder.from_config(inputs.encoder_cfg),
        "regression",
        inputs.graphs,
        inputs.labels,
        inputs.train,
        inputs.valid,
        inputs.test,
        inputs.cfg,
        seed=0,
    )
    assert info["epochs"] < 40 and info["epochs"] - info["best_epoch"] == 2 and pred.shape == (len(inputs.test), 1)
    full = inputs.cfg.model_copy(update={"patience": None, "epochs": 6})
    torch.manual_seed(0)
    _, info = train_graph_model(
        GraphEncoder.from_config(inputs.encoder_cfg),
        "regression",
        inputs.graphs,
        inputs.labels,
        inputs.train,
        inputs.valid,
        inputs.test,
        full,
        seed=0,
    )
    assert info["epochs"] == 6


def test_parallel_fits_in_processes_equal_the_serial_ones(tiny_run):
    inputs, _ = _fit_inputs(tiny_run, epochs=2, patience=None)
    jobs = [(inputs, "scratch", 0), (inputs, "finetune", 1), (inputs, "scratch", 1)]
    serial = {k: pred for k, pred, _ in FitRunner(1).run(jobs)}
    runner = FitRunner(2, backend="processes")
    try:
        assert runner.mode == "processes" and runner.describe() == "in 2 local processes"
        parallel = {k: (pred, info) for k, pred, info in runner.run(jobs)}
    finally:
        runner.close()
    assert sorted(parallel) == [0, 1, 2]
    for k in serial:  # every fit runs on one thread wherever it runs: the same numbers
        np.testing.assert_array_equal(parallel[k][0], serial[k])
        assert parallel[k][1]["epochs"] == 2 and parallel[k][1]["seconds"] > 0
    assert not np.allclose(serial[0], serial[2])  # seeds matter


def test_parallel_fits_as_ray_tasks(tiny_run, ray_local):
    inputs, _ = _fit_inputs(tiny_run, epochs=1, patience=None)
    jobs = [(inputs, "scratch", 0), (inputs, "scratch", 1)]
    serial = {k: pred for k, pred, _ in FitRunner(1).run(jobs)}
    runner = FitRunner()  # Ray is initialised: its free CPUs decide
    assert runner.mode == "ray" and runner.workers == 2
    for k, pred, _ in runner.run(jobs):
        np.testing.assert_array_equal(pred, serial[k])


def _gallery(tmp_path, tiny_run) -> tuple[Path, int]:
    """10 molecules the model trained on, the 36 held-out ones, a duplicate and an unparsable row."""
    train = pq.read_table(tiny_run / "data" / "train.parquet").column("smiles").to_pylist()[:10]
    val = pq.read_table(tiny_run / "data" / "val.parquet").column("smiles").to_pylist()
    path = tmp_path / "gallery.csv"
    pd.DataFrame({"smiles": [*train, *val, val[0], "C1CC(=O"]}).to_csv(path, index=False)
    return path, len(val)


def test_gallery_molecules_the_model_trained_on_are_dropped_and_counted(tiny_run, tmp_path):
    gallery, n_val = _gallery(tmp_path, tiny_run)
    cfg = EvalConfig(sections=["retrieval"], pool_size=8, pool_repeats=2)
    report = evaluate_run(str(tiny_run), cfg, tmp_path / "on", data=str(gallery), progress=False)
    assert report["training_overlap"] | {"training_table": None} == {
        "training_table": None,
        "checked": True,
        "gallery": 10 + n_val,
        "in_training": 10,
        "fraction": pytest.approx(10 / (10 + n_val)),
        "excluded": True,
        "dropped": 10,
    }
    assert report["held_out_molecules"] == n_val and report["held_out_rejected"] == 2
    text = (tmp_path / "on" / "report.md").read_text()
    assert "10 of 46 molecules (21.7 %), 10 dropped" in text
    assert "| retrieval | deduplicate | duplicate InChIKey | 1 |" in text  # counted by kind, not by key
    assert "| retrieval | exclude_training | in the model's training set | 10 |" in text
    off = evaluate_run(
        str(tiny_run),
        cfg.model_copy(update={"exclude_training": False}),
        tmp_path / "off",
        data=str(gallery),
        progress=False,
    )
    assert off["training_overlap"]["in_training"] == 10 and off["training_overlap"]["dropped"] == 0
    assert off["held_out_molecules"] == n_val + 10
    q = pq.read_table(tmp_path / "on" / "quarantine.parquet").to_pandas()
    assert list(q.columns) == ["mol_id", "input", "stage", "reason", "section"]
    assert q["stage"].value_counts().to_dict() == {"exclude_training": 10, "deduplicate": 1, "featurise": 1}
    assert q.loc[q["stage"] == "deduplicate", "reason"].item().startswith("duplicate InChIKey")
    bare = tmp_path / "bare_model"  # a model folder alone: the training table is unknown
    bare.mkdir()
    (bare / "model.pt").write_bytes((tiny_run / "model" / "model.pt").read_bytes())
    unknown = evaluate_run(str(bare), cfg, tmp_path / "unknown", data=str(gallery), progress=False)
    assert unknown["training_overlap"]["checked"] is False and unknown["held_out_molecules"] == n_val + 10
    with pytest.raises(ValueError, match="training table is not known"):
        evaluate_run(
            str(bare),
            cfg.model_copy(update={"exclude_training": True}),
            tmp_path / "x",
            data=str(gallery),
            progress=False,
        )


def test_hostile_smiles_in_a_held_out_table_or_user_file_are_skipped_and_counted(tiny_run, tmp_path):
    """A prepared held-out table whose SMILES column holds hostile text (its graphs and vectors are
    fine), and a user's interpret file with the same rows: evaluation finishes, and the isomers
    and interpret sections count every row they skipped, with its reason in quarantine.parquet."""
    table = pq.read_table(tiny_run / "data" / "val.parquet")
    smiles = table.column("smiles").to_pylist()
    bad_rows = [3, 9, 17, 25, 31]
    for i, text in zip(bad_rows, HOSTILE):
        smiles[i] = text
    held_out = tmp_path / "held_out.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("smiles"), "smiles", pa.array(smiles)), held_out)
    cfg = EvalConfig.model_validate(
        {
            "sections": ["isomers", "interpret"],
            "isomers": {
                "constitutional_source": "held_out",
                "stereo_source": "held_out",
                "stereo_molecules": 40,  # more than the 36 rows: every row is visited
                "max_set_size": 3,
            },
            "interpret": {"cv_folds": 3},
        }
    )
    report = evaluate_run(str(tiny_run), cfg, tmp_path / "eval", data=str(held_out), progress=False)
    expected = {"unparsable SMILES": 2, "empty input": 1, "not a string": 1, "too many heavy atoms": 1}
    assert report["interpret"]["n"] == len(smiles) - 5 and report["interpret"]["rejected"] == 5
    assert report["interpret"]["rejected_by_reason"] == expected
    for kind in ("constitutional", "stereo"):
        assert report["isomers"][kind]["rejected"] == 5 and report["isomers"][kind]["rejected_by_reason"] == expected
    assert report["isomers"]["stereo"]["test_fp->graph"]["n_sets"] >= 1
    q = pq.read_table(tmp_path / "eval" / "quarantine.parquet").to_pandas()
    assert q.groupby("section")["stage"].agg(lambda x: sorted(set(x))).to_dict() == {
        "interpret": ["descriptors"],
        "isomers": ["constitutional", "stereo"],
    }
    assert sorted(q.loc[q["section"] == "interpret", "mol_id"]) == sorted(f"molecule {i}" for i in bad_rows)
    text = (tmp_path / "eval" / "report.md").read_text()
    assert f"{len(smiles) - 5} molecules (5 rows skipped: unparsable SMILES 2," in text
    assert "- stereo: 5 rows skipped:" in text and "| isomers | stereo | too many heavy atoms | 1 |" in text

    # A user's file for interpret: rows the featuriser rejects have no graph; counted the same way.
    user = tmp_path / "user.csv"
    pd.DataFrame(
        {"smiles": [*pq.read_table(tiny_run / "data" / "val.parquet").column("smiles").to_pylist(), *HOSTILE]}
    ).to_csv(user, index=False)
    source = DataSourceConfig(name="user", path=str(user))
    only = cfg.model_copy(update={"sections": ["interpret"], "interpret": InterpretConfig(source=source, cv_folds=3)})
    report = evaluate_run(str(tiny_run), only, tmp_path / "eval2", progress=False)
    assert report["interpret"]["n"] == len(smiles) and report["interpret"]["rejected"] == 5
    q = pq.read_table(tmp_path / "eval2" / "quarantine.parquet").to_pandas()
    assert set(q["stage"]) == {"featurise"} and set(q["section"]) == {"interpret"} and len(q) == 5


def test_embedding_new_molecules_shows_a_progress_bar(tiny_run, tmp_path, capsys):
    from acml_ray.evaluate.embeddings import paired_from_smiles

    _, run_cfg, _ = load_model(tiny_run / "model")
    smiles = pq.read_table(tiny_run / "data" / "val.parquet").column("smiles").to_pylist()[:12]
    examples, kept = paired_from_smiles(smiles, run_cfg, str(tmp_path / "cache"), progress=True)
    assert len(kept) == 12 and bool(examples.masks["test_fp"].all())
    bar = capsys.readouterr().err
    assert "embed test_fp" in bar and "12/12" in bar


def test_new_data_never_writes_into_the_run_and_a_failure_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*"))
    gallery, _ = _gallery(tmp_path, tiny_run)
    cfg = EvalConfig(sections=["retrieval"], pool_size=8, pool_repeats=2)
    assert default_out_dir(str(tiny_run / "model")) == Path(f"evaluation-{tiny_run.name}")
    report = evaluate_run(str(tiny_run), cfg, data=str(gallery), progress=False)
    assert report["output"] == f"evaluation-{tiny_run.name}" and (tmp_path / report["output"] / "report.md").is_file()
    assert report["cache"] == "acml-cache" and any((tmp_path / "acml-cache").rglob("*.parquet"))
    assert sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*")) == before  # the run is untouched

    one = tmp_path / "one.csv"
    pd.DataFrame({"smiles": ["CCO", "not a molecule"]}).to_csv(one, index=False)
    with pytest.raises(ValueError, match="retrieval needs at least 2"):
        evaluate_run(str(tiny_run), cfg, tmp_path / "fresh" / "eval", data=str(one), progress=False)
    assert not (tmp_path / "fresh" / "eval").exists() and not (tmp_path / "fresh" / "acml-cache").exists()
    kept = tmp_path / "old_eval"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(ValueError):
        evaluate_run(str(tiny_run), cfg, kept, data=str(one), progress=False)
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
    assert sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*")) == before


def test_cli_progress_reports_and_quarantine_on_a_user_task(tiny_run, tmp_path, monkeypatch, capsys):
    from acml_ray.data.sources import load_source

    monkeypatch.chdir(tmp_path)
    frame = load_source("freesolv").sample(70, random_state=2)[["smiles", "expt"]]
    frame = pd.concat([frame, pd.DataFrame({"smiles": ["C1CC(=O", "CCO"], "expt": [1.0, None]})])
    frame.rename(columns={"smiles": "mol", "expt": "dG"}).to_csv(tmp_path / "solv.csv", index=False)
    argv = [
        "evaluate",
        "--model",
        str(tiny_run),
        "--sections",
        "downstream",
        "--task",
        "solv.csv:mol:dG",
        "--set",
        "eval.downstream.methods=[finetune, ecfp_linear]",
        "--set",
        "eval.downstream.seeds=[0, 1]",
        "--set",
        "eval.downstream.epochs=2",
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[evaluate ")]
    assert any("downstream done in" in line for line in lines)
    for needle in ("finetune seed 0: rmse", "finetune seed 1: rmse", "ecfp_linear seed-free, one fit: rmse"):
        assert any(needle in line and " s" in line for line in lines), needle
    out = tmp_path / f"evaluation-{tiny_run.name}"
    report = json.loads((out / "report.json").read_text())
    task = report["downstream"]["solv"]
    assert task["seeds"] == [0, 1] and task["n"] == 70 and task["rejected"] == 2
    assert set(task["reference"]) >= {"rmse", "mae", "r2"} and "r2" in task["methods"]["finetune"]
    assert task["methods"]["finetune"]["epochs"] == [2, 2]
    text = (out / "report.md").read_text()
    sizes = task["split"]["sizes"]
    assert f"n train {sizes['train']} / valid {sizes['valid']} / test {sizes['test']}; seeds [0, 1]" in text
    assert "| reference (training mean) | - |" in text and "| ecfp_linear | 1 (seed-free) |" in text
    assert "| downstream:solv | featurise |" in text and "| downstream:solv | label | no label | 1 |" in text
    q = pq.read_table(out / "quarantine.parquet").to_pandas()
    assert sorted(q["stage"]) == ["featurise", "label"] and set(q["input"]) == {"C1CC(=O", "CCO"}
