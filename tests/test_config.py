"""Typed configuration: defaults are the paper's setup, YAML and overrides are validated."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from acml_ray.config import ACMLConfig, load_config, packaged_config


def test_defaults_reproduce_reference_setup() -> None:
    cfg = ACMLConfig()
    assert cfg.graph_encoder.num_layers == 5 and cfg.graph_encoder.hidden_dim == 64
    assert cfg.graph_encoder.dropout == 0.2 and cfg.graph_encoder.pooling == "sum"
    assert cfg.projection.dims == [512, 512] and cfg.projection.dropout == 0.1
    assert cfg.loss.kind == "clip_soft" and cfg.loss.temperature == 1.0
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (1e-3, 1e-3)
    assert (cfg.train.batch_size, cfg.train.drop_last, cfg.train.epochs) == (128, True, 100)
    assert (cfg.data.val_fraction, cfg.data.split_seed) == (0.2, 4)
    assert (cfg.featurizer.max_heavy_atoms, cfg.featurizer.min_atoms) == (50, 3)


def test_packaged_demo_config_loads_with_overrides() -> None:
    cfg = load_config(packaged_config("demo"), {"train.epochs": 3, "output_dir": "/tmp/x"})
    assert cfg.loss.kind == "infonce" and cfg.train.epochs == 3 and cfg.output_dir == "/tmp/x"
    assert [m.name for m in cfg.modalities][0] == "image"
    assert cfg.resolved_cache_dir() == "/tmp/x/cache"


def test_unknown_key_is_an_error(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epohcs: 3\n")
    with pytest.raises(ValueError, match="epohcs"):
        load_config(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("loss:\n  kind: hinge\n", "kind"),
        ("projection:\n  dims: []\n", "dims"),
        ("modalities:\n  - name: image\n  - name: image\n", "twice"),
        ("- a\n- b\n", "mapping"),
    ],
)
def test_invalid_values_are_rejected(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises((ValidationError, ValueError), match=match):
        load_config(path)


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_config_is_a_file_or_a_packaged_name(tmp_path, monkeypatch):
    """`--config study` finds the packaged study config; a file of that name in the working
    directory wins; a bare name that is neither says which packaged names exist."""
    monkeypatch.chdir(tmp_path)
    assert load_config("study").model_dump() == load_config(packaged_config("study")).model_dump()
    (tmp_path / "study").write_text("train: {epochs: 3}\n")
    assert load_config("study").train.epochs == 3  # the user's own file, not the packaged one
    with pytest.raises(FileNotFoundError, match=r"config file not found: nope \(nor a packaged config: demo, .*study"):
        load_config("nope")
    with pytest.raises(FileNotFoundError, match="config file not found: conf/nope.yaml"):
        load_config("conf/nope.yaml")
