"""`acml demo` end to end on a small real set: summary keys, learning signal, cache reuse."""

from __future__ import annotations

import json

import pytest

from acml_ray.cli.main import main

SMALL = [
    "--set",
    "train.epochs=4",
    "--set",
    "data.sources=[{name: chembl_approved_drugs, limit: 400, seed: 1}]",
    "--set",
    "eval.pool_repeats=5",
    "--quiet",
]


@pytest.mark.slow
def test_demo_writes_summary_and_reuses_embeddings(tmp_path, ray_local, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    summary_path = out / "summary.json"
    assert f"summary: {summary_path.resolve()}" in printed
    summary = json.loads(summary_path.read_text())

    retrieval = summary["retrieval"]
    assert set(retrieval) == {"image->graph", "graph->image", "smiles->graph", "graph->smiles"}
    for direction in retrieval.values():
        assert set(direction) == {"pool_128", "pool_all"}
        for pool in direction.values():
            for k in ("top1", "top5", "top10"):
                assert 0.0 <= pool[k] <= 1.0
                assert pool["random"][k] == pytest.approx(min(int(k[3:]), pool["n_pool"]) / pool["n_pool"])
    # Even 4 epochs on ~300 molecules must beat chance clearly on the held-out split.
    i2g = retrieval["image->graph"]["pool_all"]
    assert i2g["top10"] > 2 * i2g["random"]["top10"]

    counts = summary["data"]
    assert counts["input"] == 400
    # Every row dropped before embedding (size filter, unparsable, duplicate) is quarantined.
    assert counts["quarantined"] >= counts["input"] - counts["usable"] > 0
    assert summary["quarantined_by_reason"]  # ChEMBL drugs include > 50 heavy atoms molecules
    for modality in ("image", "smiles"):
        first = summary["embedding"][modality]
        assert first["encoded"] == counts["usable"] and first["cache_hits"] == 0

    # Second run on the same data: every vector comes from the cache, no forward pass.
    assert main(["demo", "--out", str(out), *SMALL]) == 0
    for modality in ("image", "smiles"):
        second = json.loads(summary_path.read_text())["embedding"][modality]
        assert second["forward_passes"] == 0 and second["encoded"] == 0
        assert second["cache_hits"] == counts["usable"]
