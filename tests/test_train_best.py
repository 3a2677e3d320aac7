"""The run's best model (`acml_ray.train.best`) on local disk and on a real S3 server: a new best
replaces the previous one only once complete, a half-written folder (worker killed mid-write)
is never read, the previous folder stays for a reader that is still copying, and runs written in
the older flat layout still read."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from acml_ray.config import load_config
from acml_ray.model.acml import ACMLModel
from acml_ray.model.serialization import load_model, save_model
from acml_ray.storage.filesystem import join, resolve_filesystem
from acml_ray.train.best import BEST_MARKER, download_best, save_best


def _model(seed: int):
    cfg = load_config(overrides={"graph_encoder.hidden_dim": 8, "graph_encoder.num_layers": 2,
                                 "projection.dims": [8], "modalities": [{"name": "ecfp"}]})
    torch.manual_seed(seed)
    return ACMLModel.from_config(cfg, {"ecfp": 16}), cfg


def _marker(epoch: int, score: float) -> dict:
    return {"epoch": epoch, "step": 10 * epoch, "metric": "val/score", "score": score, "metrics": {}}


def _folders(best_uri: str) -> list[str]:
    fs, path = resolve_filesystem(best_uri)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                  if i.type == pafs.FileType.Directory)


def _check_best_store(best_uri: str, tmp_path: Path) -> None:
    assert download_best(best_uri, tmp_path / "none") is None and not any((tmp_path / "none").iterdir())
    models = {epoch: _model(epoch) for epoch in (1, 3, 4)}
    for epoch, (model, cfg) in models.items():
        save_best(model, cfg, best_uri, _marker(epoch, epoch / 10), [{"epoch": e} for e in range(1, epoch + 1)])
    # The current and the previous best stay (a reader may still be copying the previous one).
    assert _folders(best_uri) == ["epoch-0003", "epoch-0004"]

    # A worker killed while writing epoch 5: a folder without the pointer moving is never read.
    fs, path = resolve_filesystem(best_uri)
    fs.create_dir(f"{path}/epoch-0005")
    with fs.open_output_stream(f"{path}/epoch-0005/model.pt") as stream:
        stream.write(b"half a model")
    marker = download_best(best_uri, tmp_path / "copy")
    assert marker["epoch"] == 4 and marker["dir"] == "epoch-0004"
    assert json.loads((tmp_path / "copy" / BEST_MARKER).read_text())["epoch"] == 4
    assert len(json.loads((tmp_path / "copy" / "history.json").read_text())) == 4
    loaded, _, extra = load_model(tmp_path / "copy")
    assert extra["epoch"] == 4
    for name, value in models[4][0].state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name

    # The replayed epoch 5 (resume after that crash) overwrites the half folder; older ones go.
    model, cfg = _model(5)
    save_best(model, cfg, best_uri, _marker(5, 0.5), [])
    assert _folders(best_uri) == ["epoch-0004", "epoch-0005"]
    assert download_best(best_uri, tmp_path / "copy")["epoch"] == 5
    assert load_model(tmp_path / "copy")[2]["epoch"] == 5


def test_best_model_on_local_disk(tmp_path):
    _check_best_store(str(tmp_path / "run" / "best"), tmp_path)


def test_best_model_on_s3(s3_server, monkeypatch, tmp_path):
    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    _check_best_store(f"s3://{s3_server['bucket']}/best-unit/run/best", tmp_path)


def test_flat_layout_of_older_runs_still_reads(tmp_path):
    model, cfg = _model(0)
    best = tmp_path / "run" / "best"
    save_model(model, cfg, best, extra={"epoch": 2})
    (best / BEST_MARKER).write_text(json.dumps(_marker(2, 0.2)))
    marker = download_best(join(str(tmp_path / "run"), "best"), tmp_path / "copy")
    assert marker["epoch"] == 2 and load_model(tmp_path / "copy")[2]["epoch"] == 2
