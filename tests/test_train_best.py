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
    cfg = load_config(
        overrides={
            "graph_encoder.hidden_dim": 8,
            "graph_encoder.num_layers": 2,
            "projection.dims": [8],
            "modalities": [{"name": "ecfp"}],
        }
    )
    torch.manual_seed(seed)
    return ACMLModel.from_config(cfg, {"ecfp": 16}), cfg


def _marker(epoch: int, score: float) -> dict:
    return {"epoch": epoch, "step": 10 * epoch, "metric": "val/score", "score": score, "metrics": {}}


def _folders(best_uri: str) -> list[str]:
    """Best-model folders by epoch (the random suffix dropped), sorted."""
    fs, path = resolve_filesystem(best_uri)
    return sorted(
        i.base_name[: len("epoch-0000")]
        for i in fs.get_file_info(pafs.FileSelector(path))
        if i.type == pafs.FileType.Directory
    )


def _check_best_store(best_uri: str, tmp_path: Path) -> None:
    assert download_best(best_uri, tmp_path / "none") is None and not any((tmp_path / "none").iterdir())
    models = {epoch: _model(epoch) for epoch in (1, 3, 4)}
    for epoch, (model, cfg) in models.items():
        save_best(model, cfg, best_uri, _marker(epoch, epoch / 10), [{"epoch": e} for e in range(1, epoch + 1)])
    # The current and the previous best stay (a reader may still be copying the previous one).
    assert _folders(best_uri) == ["epoch-0003", "epoch-0004"]

    # A worker killed while writing epoch 5: a folder without the pointer moving is never read.
    fs, path = resolve_filesystem(best_uri)
    fs.create_dir(f"{path}/epoch-0005-deadbeef")
    with fs.open_output_stream(f"{path}/epoch-0005-deadbeef/model.pt") as stream:
        stream.write(b"half a model")
    marker = download_best(best_uri, tmp_path / "copy")
    assert marker["epoch"] == 4 and marker["dir"].startswith("epoch-0004-")
    assert json.loads((tmp_path / "copy" / BEST_MARKER).read_text())["epoch"] == 4
    assert len(json.loads((tmp_path / "copy" / "history.json").read_text())) == 4
    loaded, _, extra = load_model(tmp_path / "copy")
    assert extra["epoch"] == 4
    for name, value in models[4][0].state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name

    # Epoch 5 written, then replayed after a crash (resume from the epoch-4 checkpoint): the
    # replay never writes into the folder in force; the half folder and older ones are pruned.
    first = marker
    model, cfg = _model(5)
    save_best(model, cfg, best_uri, _marker(5, 0.5), [])
    attempt = download_best(best_uri, tmp_path / "copy")["dir"]
    save_best(model, cfg, best_uri, _marker(5, 0.5), [])
    replayed = download_best(best_uri, tmp_path / "copy")
    assert replayed["dir"] != attempt and replayed["dir"] != first["dir"]
    assert _folders(best_uri) == ["epoch-0005", "epoch-0005"]
    assert load_model(tmp_path / "copy")[2]["epoch"] == 5


def test_best_model_on_local_disk(tmp_path):
    _check_best_store(str(tmp_path / "run" / "best"), tmp_path)


def test_best_model_on_s3(s3_env, tmp_path):
    _check_best_store(f"s3://{s3_env['bucket']}/best-unit/run/best", tmp_path)


def test_flat_layout_of_older_runs_still_reads(tmp_path):
    model, cfg = _model(0)
    best = tmp_path / "run" / "best"
    save_model(model, cfg, best, extra={"epoch": 2})
    (best / BEST_MARKER).write_text(json.dumps(_marker(2, 0.2)))
    marker = download_best(join(str(tmp_path / "run"), "best"), tmp_path / "copy")
    assert marker["epoch"] == 2 and load_model(tmp_path / "copy")[2]["epoch"] == 2


def test_reader_starts_again_when_the_pointer_moves(tmp_path, monkeypatch):
    """A copy during which two new bests were written (its folder pruned) is taken again."""
    import acml_ray.model.serialization as reader  # the reading side of the best-model protocol

    uri = str(tmp_path / "run" / "best")
    for epoch in (1, 2):
        save_best(*_model(epoch), uri, _marker(epoch, epoch / 10), [])
    real_download, calls = reader.download, []

    def racing_download(source, target):
        calls.append(source)
        if len(calls) == 1:
            for epoch in (3, 4):
                save_best(*_model(epoch), uri, _marker(epoch, epoch / 10), [])
        return real_download(source, target)

    monkeypatch.setattr(reader, "download", racing_download)
    marker = download_best(uri, tmp_path / "copy")
    assert len(calls) == 2 and marker["epoch"] == 4 and load_model(tmp_path / "copy")[2]["epoch"] == 4


def test_a_pointer_to_a_folder_without_a_model_is_an_error(tmp_path):
    uri = str(tmp_path / "run" / "best")
    save_best(*_model(1), uri, _marker(1, 0.1), [])
    pointer = json.loads((tmp_path / "run" / "best" / BEST_MARKER).read_text())
    (tmp_path / "run" / "best" / pointer["dir"] / "model.pt").unlink()
    with pytest.raises(RuntimeError, match="has no model.pt"):
        download_best(uri, tmp_path / "copy")
