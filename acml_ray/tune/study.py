"""A Ray Tune study over distributed ACML training.

Each trial is a Tune function trainable that builds and fits its own `TorchTrainer` through
`acml_ray.train.fit` (Ray Train V2's pattern for Tune: the trial is the Train *driver*, the
workers come from ``train.num_workers``), with Tune's `TuneReportCallback` forwarding every
epoch report (rank 0's validation metrics) to Tune. HyperOpt (seeded, first trial = the base
config) proposes configs under a `ConcurrencyLimiter`; ASHA stops weak trials at epoch rungs.

Layout of a study ``<tune.storage_path or OUTPUT>/<tune.name>``::

    <study>/                 Tune experiment state (Tuner.restore resumes from here)
    <study>/trial_<id>/      Tune's per-trial results (result.json, progress.csv)
    <study>/train/<name>-<id>/   the trial's Train run: checkpoints and best/ (acml_ray.train.best)
    <study>/acml_study.yaml  base config + space, checked when the study is resumed
    OUTPUT/best/             the best trial: model/ (model.pt, BEST.json), config.yaml, trial.json

MLflow: one parent run per study (tagged with the study name), each trial's training run
nested under it (``mlflow.parentRunId``) with the trial's full config as params and its
step/epoch metrics; the best trial's files are logged to the parent under ``best/``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import yaml
from ray.tune import Callback

from acml_ray.config import ACMLConfig
from acml_ray.storage.filesystem import join, resolve_filesystem
from acml_ray.train.best import download_best
from acml_ray.train.loop import PLACEMENT_GROUP_KEY
from acml_ray.tune.space import SearchSpace, with_overrides

logger = logging.getLogger(__name__)

SPEC_FILE = "acml_study.yaml"
TRIAL_PREFIX = "trial_"


@dataclass(frozen=True)
class StudyPlan:
    """What every trial needs besides its sampled params (picklable: travels to trial actors)."""

    name: str
    study_uri: str
    output_dir: str  # absolute; trials write OUTPUT/trials/<id>/model when they finish
    train_table: str
    val_table: str
    modality_dims: dict[str, int]
    max_t: int
    metric: str
    mode: str
    tracking_uri: str | None = None  # None: tracking disabled
    parent_run_id: str | None = None

    def run_name(self, trial_id: str) -> str:
        """The trial's Train run folder and MLflow run name."""
        return f"{self.name}-{trial_id}"

    @property
    def train_storage(self) -> str:
        """Where the trials' Train runs live (their ``train.storage_path``)."""
        return join(self.study_uri, "train")

    def run_uri(self, trial_id: str) -> str:
        """The trial's Train run folder (checkpoints, best/)."""
        return join(self.train_storage, self.run_name(trial_id))

    def trial_config(self, base: ACMLConfig, overrides: dict[str, Any], trial_id: str) -> ACMLConfig:
        """The full config a trial trains with: base + sampled overrides + the study's plumbing."""
        plumbing: dict[str, Any] = {
            "train.epochs": self.max_t,
            # Each trial keeps its best epoch by the metric the study ranks trials on.
            "train.early_stopping_metric": self.metric,
            "train.early_stopping_mode": self.mode,
            "train.storage_path": self.train_storage,
            "train.train_table": self.train_table,
            "train.val_table": self.val_table,
            "output_dir": str(Path(self.output_dir) / "trials" / trial_id),
            "tracking.enabled": self.tracking_uri is not None,
        }
        if self.tracking_uri is not None:
            plumbing.update({"tracking.uri": self.tracking_uri, "tracking.parent_run_id": self.parent_run_id})
        return with_overrides(base, {**overrides, **plumbing})

    def best_config(self, base: ACMLConfig, overrides: dict[str, Any]) -> ACMLConfig:
        """The winning config as a user would train it again: base + overrides, epochs = max_t."""
        return with_overrides(base, {**overrides, "train.epochs": self.max_t})


def _run_trial(params: dict[str, Any], base: dict[str, Any], space: SearchSpace, plan: StudyPlan) -> None:
    """Tune function trainable: one distributed training run (runs in the trial's actor)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from acml_ray.train import fit

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = plan.trial_config(ACMLConfig.model_validate(base), space.overrides(params), trial_id)
    # resume=None: a trial restarted by Tuner.restore continues its Train run from the latest checkpoint.
    # mark_failed=False: the study owns the run's final status (`_close_trial_runs`).
    fit(
        cfg,
        plan.train_table,
        plan.val_table,
        plan.modality_dims,
        run_name=plan.run_name(trial_id),
        resume=None,
        callbacks=[TuneReportCallback()],
        mark_failed=False,
    )


def _remove_placement_group(pg_hex: str, table: dict | None = None) -> None:
    """Remove a placement group by id unless it is gone already (`table`: a fresh
    `placement_group_table()`, when the caller has one)."""
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    table = placement_group_table() if table is None else table
    if table.get(pg_hex, {}).get("state") not in (None, "REMOVED"):
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_hex))))


def _release_job_placement_groups() -> None:
    """Remove every placement group this job still holds (call when no trial runs): those of
    trials stopped before their first report. Placement group ids end with their job's id."""
    import ray
    from ray.util.placement_group import placement_group_table

    job = ray.get_runtime_context().get_job_id()
    table = placement_group_table()
    for pg_hex in table:
        if pg_hex.endswith(job):
            _remove_placement_group(pg_hex, table)


def _best(items: list, key: Any, mode: str) -> Any:
    """The first of `items` with the highest (mode "max") or lowest (mode "min") key."""
    return (max if mode == "max" else min)(items, key=key)


def _trial_dirname(trial: Any) -> str:
    """Short trial folders (Tune's default embeds every param value in the name)."""
    return f"{TRIAL_PREFIX}{trial.trial_id}"


class ReleaseTrialPlacementGroups(Callback):
    """Free the workers' placement group of a trial that Tune stopped (ASHA) or that failed.

    Why: Ray Train V2 creates each run's placement group from its controller actor, which dies
    with the trial actor when Tune kills it; the group then lives as long as the job, and
    Train's cleaner actor can only notice through the dashboard's State API. Without one, the
    CPUs stay reserved and the next trials starve. Each epoch report carries the group's id.
    """

    def _release(self, trial: Any) -> None:
        pg_hex = (trial.last_result or {}).get(PLACEMENT_GROUP_KEY)
        if pg_hex:
            _remove_placement_group(pg_hex)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)


@dataclass
class TrialSummary:
    """Tune's record of one trial."""

    trial_id: str
    params: dict[str, Any]  # config overrides the trial ran with
    epochs: int  # epochs reported to Tune (ASHA's time attribute)
    score: float | None  # best value of the study metric over the trial's epochs
    last_score: float | None
    stopped_early: bool  # ended before max_t epochs (ASHA, or the trial's own patience)
    error: str | None = None


@dataclass
class StudyResult:
    """Outcome of `run_study`; `complete` is False when the study was interrupted."""

    study_uri: str
    complete: bool
    trials: list[TrialSummary]
    best: TrialSummary | None = None
    best_dir: Path | None = None  # OUTPUT/best: model/model.pt, config.yaml, trial.json
    best_config: ACMLConfig | None = None
    parent_run_id: str | None = None
    resumed: bool = False
    moved_start: list[str] = field(default_factory=list)  # base values moved into the space


def _read_text(uri: str) -> str | None:
    fs, path = resolve_filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def _write_text(uri: str, text: str) -> None:
    fs, path = resolve_filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def _study_spec(cfg: ACMLConfig, space: SearchSpace) -> str:
    """What must not change when a study is resumed: the base config (less the study's own
    settings, which Tune restores from its state) and the space."""
    base = cfg.model_dump(mode="json")
    base.pop("tune")
    parameters = space.as_dict()
    return yaml.safe_dump({"base": base, "space": parameters}, sort_keys=True)


def _summaries(results: Any, space: SearchSpace, plan: StudyPlan) -> list[TrialSummary]:
    """One `TrialSummary` per Tune trial, from Tune's own results."""
    summaries = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix(TRIAL_PREFIX)
        scores = []
        frame = result.metrics_dataframe
        if frame is not None and plan.metric in frame:
            scores = [float(s) for s in frame[plan.metric] if s is not None and math.isfinite(float(s))]
        epochs = int(metrics.get("epoch", 0) or 0)
        summaries.append(
            TrialSummary(
                trial_id=trial_id,
                params=space.overrides(result.config) if result.config else {},
                epochs=epochs,
                score=(_best(scores, lambda s: s, plan.mode) if scores else None),
                last_score=metrics.get(plan.metric),
                stopped_early=result.error is None and epochs < plan.max_t,
                error=None if result.error is None else str(result.error).splitlines()[0][:500],
            )
        )
    return sorted(summaries, key=lambda s: s.trial_id)


def _open_parent_run(cfg: ACMLConfig, space: SearchSpace, resume: bool):
    """The study's MLflow run (reopened when the study resumes); logs the space."""
    from acml_ray.tracking import start_run

    parent = start_run(cfg, cfg.tune.name, resume=resume)
    parent.set_tags(
        {
            "acml.tune.study": cfg.tune.name,
            "acml.tune.space": space.source,
            "acml.tune.metric": cfg.tune.metric,
            "acml.tune.mode": cfg.tune.mode,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        parameters = space.as_dict()
        Path(tmp, "space.yaml").write_text(
            yaml.safe_dump(
                {"source": space.source, "description": space.description, "parameters": parameters}, sort_keys=False
            )
        )
        parent.log_artifacts(tmp)
    return parent


def _close_trial_runs(plan: StudyPlan, trials: list[TrialSummary] | None, complete: bool) -> None:
    """Tag each trial's nested MLflow run with Tune's verdict and set its final status.

    The study, not the trial, owns that status: a trial that ASHA stops sees its Train run
    fail when Tune frees its workers, and that can happen after Tune has moved on. So: FAILED
    for a trial with an error; FINISHED for every other trial of a complete study (reaching
    max_t and being stopped early are both normal ends); KILLED for a run still open in an
    unfinished study (a resumed trial reopens it). `trials` None (Tune itself failed): every
    open run is KILLED.
    """
    from acml_ray.tracking import TrackingRun, child_runs

    if plan.tracking_uri is None or plan.parent_run_id is None:  # the study runs without MLflow
        return
    by_name = child_runs(TrackingRun(plan.tracking_uri, plan.parent_run_id))
    if trials is None:
        for run, status in by_name.values():
            if status == "RUNNING":
                run.finish("KILLED")
        return
    for trial in trials:
        found = by_name.get(plan.run_name(trial.trial_id))
        if found is None:
            continue
        run, current = found
        run.set_tags(
            {
                "acml.tune.trial_id": trial.trial_id,
                "acml.tune.epochs": trial.epochs,
                "acml.tune.stopped_early": trial.stopped_early,
            }
        )
        if trial.error is not None:
            status = "FAILED"
        elif complete:
            status = "FINISHED"
        else:
            status = "KILLED" if current == "RUNNING" else current
        if current != status:
            run.finish(status)


def _export_best(best: TrialSummary, cfg: ACMLConfig, plan: StudyPlan, parent: Any) -> tuple[Path, ACMLConfig]:
    """Copy the best trial's best-epoch model to OUTPUT/best/model and write its config,
    i.e. a run folder `acml register` takes; log it to the parent run under ``best/``."""
    run = plan.run_uri(best.trial_id)
    target = Path(cfg.output_dir) / "best"
    shutil.rmtree(target, ignore_errors=True)
    if download_best(join(run, "best"), target / "model") is None:
        raise RuntimeError(f"trial {best.trial_id} scored {best.score} but its run {run} has no best model")
    best_cfg = plan.best_config(cfg, best.params)
    (target / "config.yaml").write_text(yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False))
    (target / "trial.json").write_text(
        json.dumps(
            {"study": plan.name, "study_uri": plan.study_uri, "train_run": run, **asdict(best)}, indent=1, default=str
        )
    )
    if parent is not None:
        parent.log_artifacts(target, "best")
    return target, best_cfg


def run_study(
    cfg: ACMLConfig,
    space: SearchSpace,
    train_data: str | None = None,
    val_data: str | None = None,
    callbacks: list | None = None,
) -> StudyResult:
    """Run (or resume) the Tune study ``cfg.tune.name``; export the best trial when it completes.

    Args:
        cfg: the base configuration; the space's parameters override it per trial.
        space: the validated search space (`acml_ray.tune.space.load_space`).
        train_data, val_data: training tables (default: ``train.*_table`` or OUTPUT/data).
        callbacks: extra driver-side Tune callbacks (kept in the study state on resume).

    A study folder that Tune can restore is resumed: finished trials are kept, unfinished
    ones restart and their Train runs continue from their latest checkpoints. Resuming with a
    different base config or space is an error.
    """
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    from acml_ray.tracking import resolve_tracking_uri
    from acml_ray.train.trainer import modality_dims_from_table, table_locations

    t = cfg.tune
    output_dir = Path(cfg.output_dir).resolve()
    cfg = with_overrides(cfg, {"output_dir": str(output_dir)})
    storage = t.storage_path or str(output_dir)
    study_uri = join(storage, t.name)
    fs, study_path = resolve_filesystem(study_uri)
    spec_uri = join(study_uri, SPEC_FILE)
    resume = ray.tune.Tuner.can_restore(study_path, storage_filesystem=fs)
    spec = _study_spec(cfg, space)
    if resume:
        previous = _read_text(spec_uri)
        if previous is not None and previous != spec:
            raise ValueError(
                f"study {t.name!r} at {study_uri} was started with another base config or "
                f"search space; resume it unchanged or pick another tune.name"
            )
    else:
        _write_text(spec_uri, spec)

    train_table, val_table = table_locations(cfg, train_data, val_data)
    modality_dims = modality_dims_from_table(train_table, [m.name for m in cfg.modalities])
    parent = _open_parent_run(cfg, space, resume) if cfg.tracking.enabled else None
    plan = StudyPlan(
        name=t.name,
        study_uri=study_uri,
        output_dir=str(output_dir),
        train_table=train_table,
        val_table=val_table,
        modality_dims=modality_dims,
        max_t=t.max_t or cfg.train.epochs,
        metric=t.metric,
        mode=t.mode,
        tracking_uri=resolve_tracking_uri(cfg) if parent is not None else None,
        parent_run_id=parent.run_id if parent is not None else None,
    )
    # The trial actor only drives its Train run (the workers reserve their own CPUs/GPUs). Tune
    # rejects an all-zero request, so with driver_cpus 0 it reserves 1 MiB of Ray's memory
    # resource instead of a CPU that the trial's workers would then lack.
    driver: dict[str, float] = {"CPU": t.driver_cpus} if t.driver_cpus > 0 else {"memory": 2**20}
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(_run_trial, base=cfg.model_dump(mode="json"), space=space, plan=plan), driver
    )

    moved: list[str] = []
    if resume:
        logger.info("resuming study %s at %s", t.name, study_uri)
        tuner = ray.tune.Tuner.restore(study_path, trainable, resume_unfinished=True, storage_filesystem=fs)
    else:
        start, moved = space.start_point(cfg) if t.start_from_base else ({}, [])
        if moved:
            logger.warning(
                "base config values outside the search space, moved in for the first trial: %s", "; ".join(moved)
            )
        searcher = HyperOptSearch(
            space.hyperopt_space(),
            metric=t.metric,
            mode=t.mode,
            points_to_evaluate=[start] if start else None,
            n_initial_points=t.n_initial_points,
            random_state_seed=t.seed,
        )
        tuner = ray.tune.Tuner(
            trainable,
            tune_config=ray.tune.TuneConfig(
                metric=t.metric,
                mode=t.mode,
                num_samples=t.num_samples,
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=t.max_concurrent_trials),
                # "epoch" (not Tune's report count) so that a resumed trial keeps its place in the
                # rungs; a trial at max_t ends by itself (stop_last_trials=False), so that its
                # training run closes normally (final MLflow logging, model copy).
                scheduler=ASHAScheduler(
                    time_attr="epoch",
                    max_t=plan.max_t,
                    grace_period=t.grace_period,
                    reduction_factor=t.reduction_factor,
                    stop_last_trials=False,
                ),
                trial_dirname_creator=_trial_dirname,
                reuse_actors=False,
            ),
            run_config=ray.tune.RunConfig(
                name=t.name,
                storage_path=study_path.rsplit("/", 1)[0],
                storage_filesystem=fs,
                callbacks=[ReleaseTrialPlacementGroups(), *(callbacks or [])],
                verbose=1,
            ),
        )
    try:
        results = tuner.fit()
    except BaseException:
        if parent is not None:
            try:
                _close_trial_runs(plan, None, complete=False)
            except Exception as exc:  # the study's own error is the one to raise
                logger.warning("could not close the trials' MLflow runs: %s", exc)
            parent.finish("FAILED")
        raise
    finally:
        _release_job_placement_groups()

    trials = _summaries(results, space, plan)
    finished = results.num_terminated + results.num_errors
    complete = finished >= t.num_samples and len(results) >= t.num_samples
    study = StudyResult(
        study_uri=study_uri,
        complete=complete,
        trials=trials,
        resumed=resume,
        parent_run_id=plan.parent_run_id,
        moved_start=moved,
    )
    if parent is not None:
        _close_trial_runs(plan, trials, complete)
    if not complete:
        logger.warning(
            "study %s interrupted after %d of %d trials; run it again to resume", t.name, finished, t.num_samples
        )
        if parent is not None:
            parent.finish("KILLED")
        return study

    ranked = [s for s in trials if s.score is not None]
    if ranked:
        study.best = _best(ranked, lambda s: s.score, t.mode)
        study.best_dir, study.best_config = _export_best(study.best, cfg, plan, parent)
    if parent is not None:
        summary: dict[str, float] = {
            "tune/trials": len(trials),
            "tune/stopped_early": sum(s.stopped_early for s in trials),
            "tune/errors": sum(s.error is not None for s in trials),
        }
        if study.best is not None:
            if study.best.score is not None:
                summary["best/" + t.metric.replace("/", "_")] = study.best.score
            parent.set_tags(
                {"acml.tune.best_trial": study.best.trial_id, "acml.tune.best_run": plan.run_name(study.best.trial_id)}
            )
        parent.log_metrics([(0, summary)])
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "trials.json").write_text(json.dumps([asdict(s) for s in trials], indent=1, default=str))
            parent.log_artifacts(tmp)
        parent.finish()
    return study
