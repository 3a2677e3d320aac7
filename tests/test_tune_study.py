"""A real Tune study over Ray Train + DeepSpeed trials on CPU (slow): 3 trials of at most 2
epochs on 160/40 molecules, interrupted after the first trial and resumed; ASHA stops the weak
trial early; MLflow holds one parent run and one nested run per trial; the best model and config
are exported and reload.

Determinism: one trial at a time, and the first trial is the base config (lr 1e-2), which is
recorded at every ASHA rung before any other trial reports. Every trial drawing lr 1e-6 then
reaches the first rung (epoch 1) with a score below the recorded median and is stopped there.
With seed 0 the search draws lr 1e-2 and then lr 1e-6 after the base trial. Each trial costs
about 40 s of start-up (trial actor, Train worker, DeepSpeed) against 2 s per epoch: the trial
count, not the epochs, is what the test's time is made of.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import ray.tune

from acml_ray.config import ACMLConfig, load_config
from acml_ray.tune import load_space, run_study

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MAX_T = 2  # ASHA rungs at epochs 1 and 2 (grace 1, reduction 2): a weak trial stops at the first


class InterruptOnce(ray.tune.Callback):
    """Sends the driver SIGUSR1 (Tune's interrupt signal, like Ctrl+C) when the first trial
    completes; a marker file keeps the callback, which Tune restores with the study, quiet
    after the resume."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGUSR1)


def _cfg(tmp_path: Path, tables: dict[str, str]) -> ACMLConfig:
    return load_config(
        overrides={
            "modalities": [{"name": "morgan"}],
            "output_dir": str(tmp_path / "out"),
            "train.train_table": tables["train"],
            "train.val_table": tables["val"],
            "graph_encoder.hidden_dim": 16,
            "graph_encoder.num_layers": 2,
            "projection.dims": [16],
            "loss.kind": "infonce",
            "loss.temperature": 0.1,
            "optimizer.lr": 1e-2,
            "train.batch_size": 16,
            "train.epochs": MAX_T,
            "eval.pool_size": 16,
            "eval.top_k": [1, 5],
            "tune.num_samples": 3,
            "tune.max_concurrent_trials": 1,
            "tune.seed": 0,
            "tune.grace_period": 1,
            "tune.reduction_factor": 2,
            "tune.name": "tiny",
        }
    )


def test_study_asha_mlflow_export_and_resume(ray_local, tables, tmp_path):
    from mlflow.tracking import MlflowClient

    from acml_ray.model.serialization import load_model
    from acml_ray.tracking import resolve_tracking_uri

    cfg = _cfg(tmp_path, tables)
    space = load_space(ROOT / "tune_spaces" / "small.yaml", cfg)
    marker = tmp_path / "interrupted"

    first = run_study(cfg, space, callbacks=[InterruptOnce(str(marker))])
    assert not first.complete and not first.resumed and first.best_dir is None
    done_first = marker.read_text()
    assert [t.epochs for t in first.trials if t.trial_id == done_first] == [MAX_T]

    study = run_study(cfg, space)  # same name and output: Tuner.restore
    assert study.resumed and study.complete
    assert len(study.trials) == 3 and done_first in {t.trial_id for t in study.trials}
    base = next(t for t in study.trials if t.trial_id == done_first)
    assert base.params["optimizer.lr"] == 1e-2 and base.params["graph_encoder.hidden_dim"] == 16

    # ASHA stopped the lr-1e-6 trials at the first rung: Tune's own record of each trial.
    analysis = ray.tune.ExperimentAnalysis(study.study_uri)
    assert {t.status for t in analysis.trials} == {"TERMINATED"}
    iterations = {t.trial_id: (t.last_result["epoch"], t.last_result["training_iteration"]) for t in analysis.trials}
    weak = [t.trial_id for t in study.trials if t.params["optimizer.lr"] == 1e-6]
    assert weak, "the seeded search drew no lr 1e-6 trial"
    for trial_id in weak:
        assert iterations[trial_id][0] < MAX_T and iterations[trial_id][1] < MAX_T
    assert sum(t.stopped_early for t in study.trials) >= 1
    assert iterations[done_first][0] == MAX_T
    # Killed trials' worker placement groups were released (else later trials would starve).
    from ray.util.placement_group import placement_group_table

    job = ray.get_runtime_context().get_job_id()
    assert [k for k, v in placement_group_table().items() if k.endswith(job) and v["state"] != "REMOVED"] == []

    # The best trial, exported and reloadable.
    assert study.best.score == max(t.score for t in study.trials if t.score is not None)
    best_cfg = load_config(study.best_dir / "config.yaml")
    assert best_cfg == study.best_config
    for path, value in study.best.params.items():
        section, leaf = path.split(".")
        assert getattr(getattr(best_cfg, section), leaf) == value
    model, saved_cfg, extra = load_model(study.best_dir / "model")
    assert model.modalities == ["morgan"] and extra["score"] == pytest.approx(study.best.score)
    assert saved_cfg.graph_encoder == best_cfg.graph_encoder

    # MLflow: one parent run for the study (reopened on resume), one nested run per trial.
    client = MlflowClient(resolve_tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    parents = client.search_runs([experiment], "tags.`acml.tune.study` = 'tiny'")
    assert [p.info.run_id for p in parents] == [study.parent_run_id]
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["acml.tune.best_trial"] == study.best.trial_id
    artifacts = {a.path for a in client.list_artifacts(study.parent_run_id, "best")}
    assert {"best/model", "best/config.yaml", "best/trial.json"} <= artifacts
    nested = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{study.parent_run_id}'")
    by_trial = {r.data.tags["acml.tune.trial_id"]: r for r in nested}
    assert len(nested) == 3 and set(by_trial) == {t.trial_id for t in study.trials}
    assert {t: r.info.status for t, r in by_trial.items()} == {t: "FINISHED" for t in by_trial}
    for trial in study.trials:
        run = by_trial[trial.trial_id]
        assert float(run.data.params["optimizer.lr"]) == trial.params["optimizer.lr"]
        assert run.data.tags["acml.tune.stopped_early"] == str(trial.stopped_early)
        assert "val/score" in run.data.metrics
