"""Fast tuning tests (no Ray): search space files load into HyperOpt spaces, every kind of
mistake is a clear error naming the parameter, the base config becomes the first point, trial
configs, and the `acml tune` parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import yaml

from acml_ray.config import ACMLConfig, load_config
from acml_ray.tune import SearchSpace, StudyPlan, load_space, parse_space, with_overrides

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "tune_spaces").glob("*.yaml"))


def _sample(space: SearchSpace, seed: int) -> dict:
    from hyperopt.pyll import stochastic

    return stochastic.sample(space.hyperopt_space(), rng=np.random.default_rng(seed))


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_spaces_sample_valid_configs(path):
    space = load_space(path)
    for seed in range(20):
        cfg = with_overrides(ACMLConfig(), space.overrides(_sample(space, seed)))
        assert isinstance(cfg, ACMLConfig)


def test_acml_space_covers_the_issue_and_maps_types():
    space = load_space(ROOT / "tune_spaces" / "acml.yaml")
    assert {
        "graph_encoder.num_layers",
        "graph_encoder.hidden_dim",
        "graph_encoder.pooling",
        "loss.kind",
        "loss.temperature",
        "loss.learnable_temperature",
        "projection.dims",
        "optimizer.lr",
        "optimizer.weight_decay",
        "train.batch_size",
    } <= set(space.parameters)
    depth = space.parameters["graph_encoder.num_layers"]
    assert (depth.low, depth.high, depth.integer) == (2, 8, True)
    seen = {"depth": set(), "dims": set()}
    for seed in range(40):
        overrides = space.overrides(_sample(space, seed))
        assert type(overrides["graph_encoder.num_layers"]) is int and 2 <= overrides["graph_encoder.num_layers"] <= 8
        assert type(overrides["optimizer.lr"]) is float and 1e-4 <= overrides["optimizer.lr"] <= 3e-3
        assert isinstance(overrides["projection.dims"], list)
        seen["depth"].add(overrides["graph_encoder.num_layers"])
        seen["dims"].add(tuple(overrides["projection.dims"]))
    assert len(seen["depth"]) > 3 and len(seen["dims"]) > 2


def test_base_config_is_the_first_point():
    space = load_space(ROOT / "tune_spaces" / "acml.yaml")
    point, moved = space.start_point(ACMLConfig())  # the reference config lies inside this space
    assert moved == []
    assert space.overrides(point)["projection.dims"] == [512, 512]
    assert point["projection.dims"] == "[512, 512]"  # lists travel as labels HyperOpt can match
    assert with_overrides(ACMLConfig(), space.overrides(point)) == ACMLConfig()

    small = load_space(ROOT / "tune_spaces" / "small.yaml")
    point, moved = small.start_point(load_config(overrides={"optimizer.lr": 0.5, "graph_encoder.num_layers": 2}))
    assert point["optimizer.lr"] == 1e-2 and point["graph_encoder.num_layers"] == 2
    assert any(m.startswith("optimizer.lr: 0.5 ->") for m in moved)


def _space(**parameters) -> dict:
    return {"parameters": {k.replace("__", "."): v for k, v in parameters.items()}}


@pytest.mark.parametrize(
    "spec, message",
    [
        # unknown parameter: not a config path
        (
            _space(graph_encoder__depth={"choice": [2, 3]}),
            r"unknown parameter 'graph_encoder.depth': not a config "
            r"path \(graph_encoder has: num_layers",
        ),
        (_space(optimiser__lr={"choice": [0.1]}), r"unknown parameter 'optimiser.lr'"),
        (_space(graph_encoder={"choice": [1]}), r"graph_encoder is a config section"),
        (_space(modalities__weight={"choice": [1.0]}), r"lists such as modalities cannot be tuned"),
        (_space(train__epochs={"quniform": [1, 9, 1]}), r"'train.epochs' cannot be tuned \(ASHA decides"),
        (_space(tracking__uri={"choice": ["x"]}), r"'tracking.uri' cannot be tuned"),
        # empty range / empty choice
        (_space(optimizer__lr={"loguniform": [1e-2, 1e-4]}), r"'optimizer.lr': empty range, low 0.01 must be below"),
        (_space(optimizer__lr={"uniform": [0.1, 0.1]}), r"empty range"),
        (_space(graph_encoder__pooling={"choice": []}), r"'graph_encoder.pooling': empty choice"),
        ({"parameters": {}}, r"no parameters to search"),
        # wrong type
        (
            _space(optimizer__lr={"loguniform": ["1e-4", 1e-2]}),
            r"'optimizer.lr': loguniform low must be a number, got "
            r"'1e-4' \(str\)",
        ),
        (_space(optimizer__lr={"uniform": [True, 1.0]}), r"low must be a number"),
        (
            _space(graph_encoder__pooling={"uniform": [0, 1]}),
            r"'graph_encoder.pooling': a numeric range needs a number "
            r"field.*use choice",
        ),
        (
            _space(graph_encoder__num_layers={"uniform": [2, 8]}),
            r"integer field: use quniform/qloguniform with an "
            r"integer q",
        ),
        (_space(graph_encoder__num_layers={"quniform": [2, 8, 0.5]}), r"integer field"),
        (_space(optimizer__lr={"loguniform": [0.0, 1.0]}), r"loguniform needs low > 0"),
        (_space(optimizer__lr={"loguniform": [1e-4]}), r"loguniform takes \[low, high\]"),
        (_space(optimizer__lr={"normal": [0, 1]}), r"unknown distribution 'normal'"),
        (_space(optimizer__lr=[1e-3, 1e-2]), r"expected one of \{choice"),
        (_space(graph_encoder__pooling={"choice": "sum"}), r"choice needs a list of options"),
        (_space(graph_encoder__pooling={"choice": ["sum", "sum"]}), r"lists an option twice"),
        # a value the config field rejects
        (
            _space(graph_encoder__pooling={"choice": ["sum", "attention"]}),
            r"'graph_encoder.pooling': value 'attention' "
            r"is rejected by the config: Input should be",
        ),
        (_space(graph_encoder__num_layers={"quniform": [0, 4, 1]}), r"value 0 is rejected by the config"),
        (_space(graph_encoder__dropout={"uniform": [0.0, 1.5]}), r"value 1.5 is rejected by the config"),
        (_space(projection__dims={"choice": [[256], []]}), r"value \[\] is rejected by the config"),
        (_space(loss__kind={"choice": ["infonce", 3]}), r"value 3 is rejected"),
        # file structure
        ({"params": {}}, r"expected a mapping with a 'parameters' mapping"),
        ({"parameters": {"optimizer.lr": {"choice": [0.1]}}, "seed": 1}, r"unknown top-level keys \['seed'\]"),
    ],
)
def test_space_errors_are_clear(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_space(spec, source="bad.yaml")


def test_space_errors_name_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"parameters": {"graph_encoder.depth": {"choice": [2]}}}))
    with pytest.raises(ValueError, match=rf"^{path}: unknown parameter"):
        load_space(path)
    with pytest.raises(FileNotFoundError, match="search space file not found"):
        load_space(tmp_path / "missing.yaml")


def test_values_are_checked_against_the_base_config():
    # batch 2 is fine by the field (>= 2), and the range ends are the values a trial can draw.
    parse_space(_space(train__batch_size={"quniform": [2, 64, 2]}))
    with pytest.raises(ValueError, match="value 1 is rejected"):
        parse_space(_space(train__batch_size={"choice": [1, 16]}))
    # With a GPU base config bf16 is valid; on the CPU default it is rejected by the config.
    parse_space(_space(train__precision={"choice": ["auto", "bf16"]}), load_config(overrides={"train.use_gpu": True}))
    with pytest.raises(ValueError, match="bf16 needs use_gpu"):
        parse_space(_space(train__precision={"choice": ["auto", "bf16"]}))


def test_trial_config_plumbing(tmp_path):
    base = load_config(overrides={"output_dir": str(tmp_path), "train.epochs": 50})
    plan = StudyPlan(
        name="s",
        study_uri=str(tmp_path / "s"),
        output_dir=str(tmp_path),
        train_table="t.parquet",
        val_table="v.parquet",
        modality_dims={"image": 8},
        max_t=4,
        metric="val/score",
        mode="max",
        tracking_uri="sqlite:///x.db",
        parent_run_id="abc",
    )
    cfg = plan.trial_config(base, {"optimizer.lr": 0.01, "projection.dims": [16]}, "t1")
    assert cfg.optimizer.lr == 0.01 and cfg.projection.dims == [16] and cfg.train.epochs == 4
    assert cfg.train.storage_path == str(tmp_path / "s" / "train") and cfg.output_dir == str(tmp_path / "trials" / "t1")
    assert cfg.tracking.parent_run_id == "abc" and cfg.tracking.uri == "sqlite:///x.db"
    assert plan.run_name("t1") == "s-t1"
    best = plan.best_config(base, {"optimizer.lr": 0.01})
    assert best.output_dir == str(tmp_path) and best.tracking.parent_run_id is None and best.train.epochs == 4
    untracked = StudyPlan(**{**plan.__dict__, "tracking_uri": None, "parent_run_id": None})
    assert untracked.trial_config(base, {}, "t1").tracking.enabled is False


def test_study_owns_trial_run_status(tmp_path):
    """The study sets each nested run's final status from Tune's verdict, whatever the trial
    wrote (a stopped trial's run can read FAILED, or still RUNNING, when the study ends)."""
    from mlflow.tracking import MlflowClient

    from acml_ray.tracking import start_run
    from acml_ray.tune.study import TrialSummary, _close_trial_runs

    cfg = load_config(overrides={"output_dir": str(tmp_path)})
    parent = start_run(cfg, "s")
    plan = StudyPlan(
        name="s",
        study_uri=str(tmp_path / "s"),
        output_dir=str(tmp_path),
        train_table="t",
        val_table="v",
        modality_dims={},
        max_t=3,
        metric="val/score",
        mode="max",
        tracking_uri=parent.uri,
        parent_run_id=parent.run_id,
    )
    client = MlflowClient(parent.uri)
    runs = {}
    for trial_id, status in [("done", "FINISHED"), ("stopped", "FAILED"), ("open", "RUNNING"), ("broken", "RUNNING")]:
        run = start_run(cfg, plan.run_name(trial_id))
        run.set_tags({"mlflow.parentRunId": parent.run_id})
        if status != "RUNNING":
            run.finish(status)
        runs[trial_id] = run.run_id
    trials = [
        TrialSummary("done", {}, 3, 0.5, 0.5, False),
        TrialSummary("stopped", {}, 1, 0.1, 0.1, True),
        TrialSummary("open", {}, 1, 0.2, 0.2, True),
        TrialSummary("broken", {}, 0, None, None, False, "boom"),
    ]

    def statuses():
        return {t: client.get_run(r).info.status for t, r in runs.items()}

    _close_trial_runs(plan, trials, complete=False)
    assert statuses() == {"done": "FINISHED", "stopped": "FAILED", "open": "KILLED", "broken": "FAILED"}
    assert client.get_run(runs["open"]).data.tags["acml.tune.stopped_early"] == "True"
    _close_trial_runs(plan, trials, complete=True)
    assert statuses() == {"done": "FINISHED", "stopped": "FINISHED", "open": "FINISHED", "broken": "FAILED"}
    client.update_run(runs["open"], status="RUNNING")  # Tune itself failed mid-study
    _close_trial_runs(plan, None, complete=False)
    after = statuses()
    assert after["open"] == "KILLED" and after["done"] == "FINISHED"


def test_tune_config_section():
    cfg = load_config(overrides={"tune.num_samples": 4, "tune.max_t": 3})
    assert cfg.tune.metric == "val/score" and cfg.tune.mode == "max" and cfg.tune.max_concurrent_trials == 2
    with pytest.raises(ValueError):
        load_config(overrides={"tune.reduction_factor": 1})
    with pytest.raises(ValueError):
        load_config(overrides={"tune.name": "../escape"})


def test_cli_tune_parser_and_validation_before_ray(tmp_path, capsys):
    from acml_ray.cli import tune
    from acml_ray.cli.main import COMMANDS, main

    assert "tune" in COMMANDS
    parser = argparse.ArgumentParser()
    tune.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tune", "--space", "s.yaml", "--name", "st", "--samples", "8", "--set", "tune.seed=3"])
    assert (args.space, args.name, args.samples, args.set) == ("s.yaml", "st", 8, ["tune.seed=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters:\n  graph_encoder.depth: {choice: [2, 3]}\n")
    assert main(["tune", "--space", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "unknown parameter 'graph_encoder.depth'" in capsys.readouterr().err
