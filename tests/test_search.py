"""Structure search: `acml index` builds a FAISS index of a real molecule library with a model,
`acml search` / `search()` / the MLflow pyfunc rank it against queries, filters act inside the
index, builds resume and grow without re-embedding, and a foreign model is refused.

The model is small and untrained (plumbing, not quality): its modalities are ECFP counts and
13C NMR (seeded CNN), whose frozen encoders cost nothing to build. Correctness of ranking is
checked against brute force over the stored vectors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from acml_ray.config import IndexConfig, load_config
from acml_ray.model import ACMLModel
from acml_ray.model.serialization import save_model
from acml_ray.search import (
    CandidateFilter,
    ModelMismatchError,
    Query,
    StructureIndex,
    build_index,
    normalise_formula,
    search,
)
from acml_ray.search.build import emb_column, formula_and_mass, read_shard_metadata
from acml_ray.search.layout import IndexStore

DIMS = {"ecfp": 128, "nmr13c": 256, "ms": 256}
BAD_ROWS = ["not a smiles", "", "C" * 60]  # unparsable, empty, too many heavy atoms


def _model(directory: Path, seed: int) -> Path:
    import torch

    cfg = load_config(
        None,
        {
            "graph_encoder.hidden_dim": 16,
            "projection.dims": [32],
            "modalities": [{"name": "ecfp", "options": {"n_bits": 128}}, {"name": "nmr13c"}, {"name": "ms"}],
        },
    )
    torch.manual_seed(seed)
    save_model(ACMLModel.from_config(cfg, DIMS), cfg, directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"a": _model(root / "a", 0), "b": _model(root / "b", 1)}


@pytest.fixture(scope="module")
def libraries(tmp_path_factory, chembl_drugs) -> dict[str, Path]:
    """Library 1: 240 drugs + bad rows + a repeat; library 2: 60 of them again + 60 new (SMI file)."""
    from acml_ray.chem import GraphFeaturizer, MolGraph

    root = tmp_path_factory.mktemp("libraries")
    graphs = [
        g for g in GraphFeaturizer().featurize_batch(chembl_drugs["smiles"].tolist()[:400]) if isinstance(g, MolGraph)
    ]
    unique = {g.inchikey: g.smiles for g in graphs}  # molecules the featuriser keeps, once each
    smiles = list(unique.values())[:300]
    first = smiles[:240] + BAD_ROWS + [smiles[3]]
    ids = [f"drug{i}" for i in range(len(first))]
    pd.DataFrame({"id": ids, "SMILES": first}).to_csv(root / "lib1.csv", index=False)
    second = smiles[180:300]
    (root / "lib2.smi").write_text("".join(f"{s} new{i}\n" for i, s in enumerate(second)))
    return {"first": root / "lib1.csv", "second": root / "lib2.smi"}


@pytest.fixture(scope="module")
def flat_index(ray_local, models, libraries, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("flat") / "index"
    result = build_index(models["a"], str(out), str(libraries["first"]), IndexConfig(chunk_rows=100))
    return {"path": out, "result": result}


def _vectors(index_dir: Path, modality: str) -> np.ndarray:
    store = IndexStore(str(index_dir))
    manifest = store.read_manifest()
    parts = [
        pq.read_table(store.path(s.name), columns=[emb_column(modality)]).column(0).to_pylist() for s in manifest.shards
    ]
    return np.array([v for p in parts for v in p], dtype=np.float32)


def test_formula_and_mass_are_rdkits(chembl_drugs):
    from rdkit import Chem
    from rdkit.Chem import rdMolDescriptors

    from acml_ray.chem import GraphFeaturizer, MolGraph

    graphs = [
        g
        for g in GraphFeaturizer().featurize_batch(chembl_drugs["smiles"].tolist()[:300] + ["C[NH3+]"])
        if isinstance(g, MolGraph)
    ]
    for g in graphs:
        mol = Chem.MolFromSmiles(g.smiles)
        formula, mass = formula_and_mass(g.smiles)
        assert formula == rdMolDescriptors.CalcMolFormula(mol)
        assert mass == pytest.approx(rdMolDescriptors.CalcExactMolWt(mol), abs=1e-9)
    assert formula_and_mass("CC(=O)Oc1ccccc1C(=O)O") == ("C9H8O4", pytest.approx(180.0423, abs=1e-4))


def test_formula_normalisation():
    assert normalise_formula("H8C9O4") == "C9H8O4"
    assert normalise_formula(" C9 H8 O4 ") == "C9H8O4"
    assert normalise_formula("OH2") == "H2O"  # no carbon: alphabetical, as RDKit writes it
    assert normalise_formula("NC2H7+") == "C2H7N+"
    assert normalise_formula("ClCH3") == "CH3Cl"
    for bad in ("C9H8O4x", "c9h8", "", "9C"):
        with pytest.raises(ValueError, match="not a molecular formula"):
            normalise_formula(bad)
    with pytest.raises(ValueError):
        CandidateFilter(mass=-1.0)


def test_build_writes_shards_quarantine_and_exact_index(flat_index, chembl_drugs):
    result, path = flat_index["result"], flat_index["path"]
    assert result.rows == 240 and result.added == 240
    assert result.quarantined == 4 and result.duplicates == 1
    assert result.quarantined_by_reason == {
        "unparsable SMILES": 1,
        "empty input": 1,
        "too many heavy atoms": 1,
        "duplicate InChIKey": 1,
    }
    assert result.chunks_done == 3  # 244 rows in chunks of 100
    assert {a["kind"] for a in result.ann.values()} == {"flat"}  # below index.ann_threshold
    store = IndexStore(str(path))
    manifest = store.read_manifest()
    quarantine = pd.concat(
        [pq.read_table(store.path(s.quarantine)).to_pandas() for s in manifest.shards if s.quarantine]
    )
    assert sorted(quarantine["id"]) == ["drug240", "drug241", "drug242", "drug243"]
    meta = read_shard_metadata(store, manifest).to_pandas()
    assert meta["id"].tolist()[:3] == ["drug0", "drug1", "drug2"]
    assert meta["inchikey"].str.len().eq(27).all() and meta["inchikey"].is_unique
    aspirin_like = meta.iloc[7]
    assert (aspirin_like.formula, aspirin_like.mass) == (
        formula_and_mass(aspirin_like.smiles)[0],
        pytest.approx(formula_and_mass(aspirin_like.smiles)[1]),
    )
    vectors = _vectors(path, "ecfp")
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)  # cosine = inner product


def test_search_ranks_by_cosine_and_filters_inside_the_index(flat_index):
    index = StructureIndex(str(flat_index["path"]))
    meta = index.metadata()
    library = _vectors(flat_index["path"], "nmr13c")
    peaks = [[[170.1, 1.0], [128.3, 2.0], [21.0, 1.0]], [[77.0, 1.0], [30.2, 3.0]]]
    queries = [json.dumps(p) for p in peaks]
    result = index.search("nmr13c", queries, top_k=5)
    assert result.errors == []
    vectors, _, _ = index.encode("nmr13c", [Query("q", q) for q in queries])
    for n, qid in enumerate(result.candidates["query_id"].unique()):
        got = result.candidates[result.candidates["query_id"] == qid]
        expected = np.argsort(-(library @ vectors[n]), kind="stable")[:5]
        assert got["id"].tolist() == meta["id"].iloc[expected].tolist()
        np.testing.assert_allclose(got["score"], (library @ vectors[n])[expected], rtol=1e-4, atol=1e-5)
        assert got["rank"].tolist() == [1, 2, 3, 4, 5]
    # A formula shared by a few library rows: the top-K are exactly those rows, best first,
    # although an unfiltered top-K would hold none of them.
    formula = meta["formula"].value_counts().index[0]
    members = np.flatnonzero(meta["formula"].to_numpy() == formula)
    filtered = index.search("nmr13c", queries[:1], top_k=50, formula=formula).candidates
    assert set(filtered["formula"]) == {formula} and len(filtered) == len(members)
    assert (
        filtered["id"].tolist()
        == meta["id"].iloc[members[np.argsort(-(library[members] @ vectors[0]), kind="stable")]].tolist()
    )
    target = meta.iloc[11]
    by_mass = index.search("nmr13c", queries[:1], top_k=10, mass=float(target.mass), tol=0.001).candidates
    assert target.id in by_mass["id"].tolist()
    assert (np.abs(by_mass["mass"] - target.mass) <= 0.001).all()
    nothing = index.search("nmr13c", queries[:1], top_k=10, formula="C99H2").candidates
    assert nothing.empty


def test_bad_queries_get_one_error_each_and_the_rest_run(flat_index, tmp_path):
    from acml_ray.cli.main import main

    queries = tmp_path / "spectra"
    queries.mkdir()
    (queries / "good.json").write_text(json.dumps({"shifts": [170.1, 128.3, 21.0]}))
    (queries / "empty.json").write_text("[]")
    (queries / "broken.jdx").write_bytes(b"\x89PNG not a spectrum")
    (queries / "outside.json").write_text(json.dumps([[500.0, 1.0]]))  # no peak in -50..350 ppm
    (queries / "figure.png").write_bytes(b"\x89PNG\r\n")  # a picture given to an NMR modality
    out = tmp_path / "hits.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "acml_ray.cli.main",
            "search",
            "--index",
            str(flat_index["path"]),
            "--modality",
            "nmr13c",
            "--query",
            str(queries),
            "--query",
            "[[128.0, 1.0]]",
            "--top",
            "3",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr  # some queries failed, the others answered
    errors = [line for line in proc.stderr.splitlines() if line.startswith("acml search: query")]
    assert len(errors) == 4
    assert any("figure.png: a picture is not a nmr13c input (wrong modality?" in e for e in errors)
    assert any("empty.json: empty spectrum" in e for e in errors)
    assert any("broken.jdx" in e and "JCAMP" in e for e in errors)
    assert any("outside.json: no peaks within -50..350 ppm" in e for e in errors)
    records = json.loads(out.read_text())
    answered = [r for r in records if "candidates" in r]
    assert {r["query_id"] for r in answered} == {str(queries / "good.json"), "[[128.0, 1.0]]"}
    assert all(len(r["candidates"]) == 3 for r in answered)
    assert "inchikey" in proc.stdout and "score" in proc.stdout  # the table
    # Mass spectra: every spectrum of an MGF file is a query; one without peaks fails alone.
    (tmp_path / "unknowns.mgf").write_text(
        "BEGIN IONS\nTITLE=unknown 1\nPEPMASS=181.05\n77.04 30\n105.03 100\n163.04 20\nEND IONS\n"
        "BEGIN IONS\nTITLE=no peaks\nPEPMASS=200.0\nEND IONS\n"
    )
    ms = search(str(flat_index["path"]), "ms", [str(tmp_path / "unknowns.mgf")], top_k=2)
    assert ms.candidates["query_id"].unique().tolist() == ["unknowns.mgf:0 unknown 1"]
    assert len(ms.errors) == 1 and "no peaks" in ms.errors[0].query_id and "empty spectrum" in ms.errors[0].error
    # The wrong modality for this model is one clear error, before anything runs.
    assert main(["search", "--index", str(flat_index["path"]), "--modality", "image", "--query", "x.png"]) == 2


def test_search_with_another_model_is_refused(flat_index, models, libraries):
    with pytest.raises(ModelMismatchError, match="built with model"):
        StructureIndex(str(flat_index["path"]), model=str(models["b"]))
    with pytest.raises(ModelMismatchError):
        build_index(models["b"], str(flat_index["path"]), str(libraries["second"]), IndexConfig(chunk_rows=100))
    assert StructureIndex(str(flat_index["path"]), model=str(models["a"])).rows == 240


def test_interrupted_build_resumes_and_growth_embeds_only_new_molecules(
    ray_local, models, libraries, tmp_path, monkeypatch
):
    import acml_ray.search.build as build

    out = str(tmp_path / "index")
    cfg = IndexConfig(chunk_rows=100, ann_threshold=200, nlist=8, nprobe=8)
    real_commit, commits = build._commit_chunk, []

    def dying_commit(*args, **kwargs):
        if len(commits) == 2:
            raise KeyboardInterrupt("killed after two chunks")
        commits.append(args[4])
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(build, "_commit_chunk", dying_commit)
    with pytest.raises(KeyboardInterrupt):
        build_index(models["a"], out, str(libraries["first"]), cfg)
    monkeypatch.setattr(build, "_commit_chunk", real_commit)
    resumed = build_index(models["a"], out, str(libraries["first"]), cfg)
    assert (resumed.chunks_skipped, resumed.chunks_done, resumed.rows) == (2, 1, 240)
    assert {a["kind"] for a in resumed.ann.values()} == {"ivf"}  # 240 rows >= ann_threshold
    before = _vectors(Path(out), "ecfp")

    grown = build_index(models["a"], out, str(libraries["second"]), cfg)
    assert grown.already_indexed == 60 and grown.added == 60 and grown.rows == 300
    after = _vectors(Path(out), "ecfp")
    np.testing.assert_array_equal(after[:240], before)  # old rows untouched, in place
    meta = StructureIndex(out).metadata()
    assert meta["inchikey"].is_unique and meta["id"].iloc[240] == "new60"
    # IVF at nprobe = nlist is exhaustive: the same as brute force over the stored vectors.
    index = StructureIndex(out)
    vectors = after[[5, 250]]
    scores, ids = index.search_vectors("ecfp", vectors, k=10, exact=True)
    for q, row in zip(vectors, ids):
        assert row.tolist() == np.argsort(-(after @ q), kind="stable")[:10].tolist()
    assert (ids[:, 0] == [5, 250]).all()  # a library vector's nearest structure is itself
    again = build_index(models["a"], out, str(libraries["second"]), cfg)
    assert (again.chunks_skipped, again.added) == (2, 0)  # a finished library is not read twice


def test_cached_copy_of_an_object_follows_a_rewrite(s3_env, tmp_path):
    """An index rebuilt at the same s3:// location must not be searched with the old model's cached
    copy: the cache key includes the object's size and modification time, not only its URI."""
    store = IndexStore(f"s3://{s3_env['bucket']}/indexes/rewritten")
    store.write_bytes("model/model.pt", b"first model")
    assert store.local_copy("model/model.pt", tmp_path).read_bytes() == b"first model"
    time.sleep(1.1)  # S3 modification times have one-second resolution
    store.write_bytes("model/model.pt", b"the second, rebuilt model")
    assert store.local_copy("model/model.pt", tmp_path).read_bytes() == b"the second, rebuilt model"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.local_copy("model/missing.pt", tmp_path)


def test_index_and_search_on_object_storage(ray_local, s3_env, models, libraries, tmp_path):
    from acml_ray.cli.main import main

    uri = f"s3://{s3_env['bucket']}/indexes/drugs"
    assert (
        main(
            [
                "index",
                "--model",
                str(models["a"]),
                "--library",
                str(libraries["first"]),
                "--out",
                uri,
                "--set",
                "index.chunk_rows=200",
            ]
        )
        == 0
    )
    keys = [
        o["Key"] for o in s3_env["client"].list_objects_v2(Bucket=s3_env["bucket"], Prefix="indexes/drugs/")["Contents"]
    ]
    assert "indexes/drugs/manifest.json" in keys and any(k.endswith(".faiss") for k in keys)
    result = search(uri, "ecfp", ["CC(=O)Oc1ccccc1C(=O)O", "C1CC"], top_k=4)
    assert [e.error for e in result.errors] == ["unparsable SMILES"]
    assert len(result.candidates) == 4 and result.candidates["smiles"].notna().all()


def test_pyfunc_answers_a_query_table(flat_index):
    from acml_ray.search.pyfunc import OUTPUT_COLUMNS, search_table

    index = StructureIndex(str(flat_index["path"]))
    table = pd.DataFrame(
        {
            "query_id": ["a", "b", "c", "d"],
            "modality": ["ecfp", "nmr13c", "image", "ecfp"],
            "query": ["c1ccccc1O", "[[128.0, 1.0], [30.0, 1.0]]", "x", "not a smiles"],
            "formula": [None, None, None, "C6H6O"],
        }
    )
    out = search_table(index, table, top_k=2)
    assert list(out.columns) == OUTPUT_COLUMNS
    assert out["query_id"].tolist() == ["a", "a", "b", "b", "c", "d"]  # input order, ranks within
    assert out.loc[out.query_id == "c", "error"].item().startswith("the index's model has no modality 'image'")
    assert out.loc[out.query_id == "d", "error"].item() == "unparsable SMILES"
    assert out.loc[out.query_id == "a", "rank"].tolist() == [1, 2]


@pytest.mark.slow
def test_registered_search_model_serves_http(flat_index, tmp_path, stop_process_group, free_ports):
    from acml_ray.search.pyfunc import register_search_model

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registered = register_search_model(str(flat_index["path"]), "drug-search", tracking_uri=tracking)
    assert registered.tags["acml.index_rows"] == "240"
    (port,) = free_ports(1)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [
            str(Path(bin_dir) / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/drug-search@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        meta = StructureIndex(str(flat_index["path"])).metadata()
        body = json.dumps(
            {
                "dataframe_split": {
                    "columns": ["query_id", "modality", "query", "formula"],
                    "data": [["q1", "ecfp", meta.smiles[0], meta.formula[0]], ["q2", "nmr13c", "[]", None]],
                },
                "params": {"top_k": 3},
            }
        ).encode()
        request = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            rows = json.loads(response.read())["predictions"]
        hits = [r for r in rows if r["query_id"] == "q1"]
        assert 1 <= len(hits) <= 3 and all(r["formula"] == meta.formula[0] for r in hits)
        assert hits[0]["rank"] == 1 and hits[0]["error"] is None
        assert [r["error"] for r in rows if r["query_id"] == "q2"] == ["empty spectrum"]
    finally:
        stop_process_group(server, grace=20)
        log.close()


def test_picture_queries_are_prepared_like_depictions(tmp_path, depiction_modality):
    from PIL import Image
    from rdkit import Chem
    from rdkit.Chem import Draw

    from acml_ray.chem import InvalidInputError
    from acml_ray.search.inputs import picture_tensor

    smiles = "CC(=O)Oc1ccccc1C(=O)O"
    Draw.MolToImage(Chem.MolFromSmiles(smiles), size=(224, 224)).save(tmp_path / "aspirin.png")
    np.testing.assert_array_equal(
        picture_tensor(depiction_modality, tmp_path / "aspirin.png").numpy(),
        depiction_modality.preprocess_one(smiles).numpy(),
    )
    wide = Image.new("RGBA", (400, 200), (0, 0, 0, 0))  # transparent, not square
    wide.save(tmp_path / "wide.png")
    assert picture_tensor(depiction_modality, tmp_path / "wide.png").shape == (3, 224, 224)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match="unreadable image"):
        picture_tensor(depiction_modality, tmp_path / "broken.png")


def test_search_benchmark_smoke(ray_local, models, tmp_path):
    """benchmarks/search.py end to end at toy size: build rate, latency, recall, size, RSS and the
    identification of held-out molecules (5 nmr13c spectra inserted into a 200-row MOSES library)."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from acml_ray.data.sources import load_source
    from benchmarks import search as bench

    run = tmp_path / "run"
    shutil.copytree(models["a"], run / "model")
    (run / "data").mkdir()
    from acml_ray.chem import GraphFeaturizer, MolGraph

    nmr = load_source("chembl_nmr")
    kept = [isinstance(g, MolGraph) for g in GraphFeaturizer().featurize_batch(nmr["smiles"].tolist())]
    held = nmr[kept].head(8)[["smiles", "inchikey"]]  # molecules the model's featuriser keeps
    held.to_parquet(run / "data" / "val.parquet")
    report = bench.main(
        [
            "--model",
            str(run),
            "--index",
            str(tmp_path / "index"),
            "--size",
            "200",
            "--queries",
            "5",
            "--identify",
            "--set",
            "index.ann_threshold=100",
            "--set",
            "index.nlist=4",
        ]
    )
    build, speed, found = report["build"], report["search"], report["identification"]
    assert build["rows"] == 200 and build["molecules_per_s"] > 0
    # 200 MOSES rows plus the held-out drugs not already among them (a drug may be a MOSES molecule)
    assert found["added_to_library"] + found["already_in_library"] == 8
    assert speed["rows"] == 200 + found["added_to_library"] and speed["kind"] == "ivf"
    assert 0 < speed["ann"]["recall@10"] <= 1 and speed["exact"]["p50_ms"] > 0
    assert speed["index_size_mib"] > 0 and speed["peak_rss_searching_mib"] > 0
    assert found["nmr13c"]["queries"] == 5
    for variant in ("all", "formula"):
        assert 0 <= found["nmr13c"][variant]["top1"] <= found["nmr13c"][variant]["top10"] <= 1
    assert found["nmr13c"]["formula"]["top10"] >= found["nmr13c"]["all"]["top10"]  # fewer candidates


def test_default_nprobe_is_calibrated_per_modality_on_cross_modal_queries(ray_local, models, libraries, tmp_path):
    """Each IVF index's default nprobe is the smallest power of two whose recall@10 against exact
    search reaches index.target_recall on that modality's own queries: ECFP vectors of library
    rows, 13C spectra of the run's held-out table; mass spectra have none and take the largest
    calibrated nprobe. A new target recalibrates the same FAISS files without re-embedding."""
    from acml_ray.data.sources import load_source
    from acml_ray.search.calibrate import recall_at_k

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    model_dir = run / "model"
    model_dir.mkdir()
    for f in models["a"].iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    spectra = load_source("nmr_spectra").head(120)
    # As `acml embed` leaves it: the frozen encoder's 13C vectors cached per row, 10 rows without.
    from acml_ray.modalities import build_modality

    frozen = build_modality("nmr13c").encode(spectra["nmr13c"].tolist())
    has = np.arange(120) >= 10
    held = pd.DataFrame({"smiles": spectra["smiles"], "has__nmr13c": has})
    held["emb__nmr13c"] = [v.tolist() if h else [0.0] * len(v) for v, h in zip(frozen, has)]
    held.to_parquet(run / "data" / "val.parquet")
    out = str(tmp_path / "index")
    cfg = IndexConfig(chunk_rows=100, ann_threshold=200, nlist=16, calibration_queries=120)
    result = build_index(model_dir, out, str(libraries["first"]), cfg)
    manifest = IndexStore(out).read_manifest()
    ecfp, nmr, ms = (manifest.ann[m] for m in ("ecfp", "nmr13c", "ms"))
    sources = [s["source"] for s in ecfp.calibration["sources"]]  # library SMILES and held-out SMILES
    assert sources[0] == "library rows" and sources[1].startswith("held-out table") and len(sources) == 2
    assert ecfp.calibration["queries"] == 240
    curves = [dict(s["recall"]) for s in ecfp.calibration["sources"]]
    worst = [[p, min(c[p] for c in curves)] for p in sorted(curves[0])]
    assert ecfp.calibration["recall"] == worst  # the default must serve every source
    assert [s["source"] for s in nmr.calibration["sources"]] == [nmr.calibration["source"]]
    assert nmr.calibration["source"].endswith("(cached embeddings)") and nmr.calibration["queries"] == 110
    assert "no 'ms' inputs" in ms.calibration["uncalibrated"]
    assert ms.nprobe == max(ecfp.nprobe, nmr.nprobe, 16) == 16  # the fallback (64) capped at nlist
    assert result.ann["ecfp"]["nprobe"] == ecfp.nprobe

    # The recorded curve is what searching the index gives: recall at the chosen nprobe reaches
    # the target, at half of it (when there is a half) it does not.
    index = StructureIndex(out)
    modality = index.encoder("ecfp")
    smiles = index.metadata()["smiles"].sample(120, random_state=1).tolist()
    from acml_ray.search.inputs import embed_queries

    vectors = embed_queries(index.model, modality, "ecfp", [modality.preprocess_one(s) for s in smiles])
    exact, _ = index.search_vectors("ecfp", vectors, 10, exact=True)
    for entry in (ecfp, nmr):
        curve = dict(entry.calibration["recall"])
        assert curve[entry.nprobe] == entry.calibration["recall_at_nprobe"] >= 0.99 and entry.calibration["reached"]
        below = [p for p in curve if p < entry.nprobe]  # every nprobe measured below the choice missed
        assert all(curve[p] < 0.99 for p in below) and (entry.nprobe == 1 or below)
    default, _ = index.search_vectors("ecfp", vectors, 10)  # no nprobe: the calibrated one
    assert recall_at_k(default, exact, 10) >= 0.95  # other queries than calibration's, same spread
    half, _ = index.search_vectors("ecfp", vectors, 10, nprobe=1)
    assert recall_at_k(half, exact, 10) < recall_at_k(default, exact, 10)

    strict = IndexConfig(chunk_rows=100, ann_threshold=200, nlist=16, calibration_queries=120, target_recall=1.0)
    again = build_index(model_dir, out, None, strict)
    after = IndexStore(out).read_manifest()
    assert after.ann["ecfp"].file == ecfp.file and again.added == 0  # same FAISS file, nothing embedded
    assert after.ann["ecfp"].calibration["settings"]["target_recall"] == 1.0
    assert after.ann["nmr13c"].nprobe > nmr.nprobe  # 0.99 was reached at fewer lists than 1.0
    assert after.ann["nmr13c"].calibration["recall_at_nprobe"] == 1.0
    # A held-out table with raw spectra (no cached vectors) is encoded; a new seed recalibrates.
    spectra[["smiles", "nmr13c"]].to_parquet(run / "data" / "val.parquet")
    build_index(model_dir, out, None, strict.model_copy(update={"calibration_seed": 1}))
    record = IndexStore(out).read_manifest().ann["nmr13c"].calibration
    assert record["source"] == f"held-out table {run / 'data' / 'val.parquet'}" and record["queries"] == 120
    # A user's own spectra join the sources; a row without a spectrum is counted, not lost.
    table = tmp_path / "my_spectra.csv"
    mine = [json.dumps(np.asarray(p, dtype=float).tolist()) for p in load_source("nmr_spectra")["nmr13c"].iloc[200:260]]
    pd.DataFrame({"nmr13c": mine + [""]}).to_csv(table, index=False)
    build_index(model_dir, out, None, strict.model_copy(update={"calibration_table": str(table)}))
    record = IndexStore(out).read_manifest().ann["nmr13c"].calibration
    assert [s["source"] for s in record["sources"]][0] == f"calibration table {table}"
    assert (record["sources"][0]["queries"], record["sources"][0]["skipped_inputs"]) == (60, 1)
    fixed = build_index(model_dir, out, None, strict.model_copy(update={"nprobe": 4}))
    record = IndexStore(out).read_manifest().ann["ecfp"].calibration
    assert fixed.ann["ecfp"]["nprobe"] == 4 and [p for p, _ in record["recall"]] == [1, 2, 4] and record["fixed"]


def test_recall_counts_tied_neighbours_as_found():
    from acml_ray.search.calibrate import recall_at_k

    exact = np.array([[0.9, 0.8, 0.8, 0.5]])  # rows 2 and 3 tie at 0.8
    assert recall_at_k(np.array([[0.9, 0.8, 0.8, 0.5]]), exact, 3) == 1.0  # either tied row
    assert recall_at_k(np.array([[0.9, 0.8, 0.5, 0.4]]), exact, 3) == pytest.approx(2 / 3)
    assert recall_at_k(np.array([[0.9, 0.8, -np.inf, -np.inf]]), exact, 3) == pytest.approx(2 / 3)


def test_sweep_bisects_to_the_smallest_nprobe_that_reaches_the_target():
    """On an IVF index whose queries sit between lists (as cross-modal ones do), the chosen nprobe
    reaches the target and the nprobe just under it (within the resolution) does not."""
    import faiss

    from acml_ray.search.calibrate import sweep_nprobe

    rng = np.random.default_rng(0)
    base = rng.normal(size=(4000, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 64, faiss.METRIC_INNER_PRODUCT)
    index.train(base)
    index.add(base)
    queries = (base[:200] + rng.normal(scale=0.6, size=(200, 16))).astype(np.float32)
    chosen, (curve,) = sweep_nprobe(index, [queries], 64, 10, 0.99, resolution=64)
    assert curve[chosen] >= 0.99 and curve[chosen - 1] < 0.99  # resolution 64 of 64: down to one list
