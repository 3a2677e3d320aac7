"""An MLflow run addressed by (tracking URI, run id), so that the driver and a training worker
can both write to it without sharing MLflow's process-global "active run" state."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from acml_ray.config import ACMLConfig

RUN_NAME_TAG = "acml.run_name"
# MLflow metric/param keys allow alphanumerics, _ - . space / only ("val/image->graph/..." has '>').
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]")


def resolve_tracking_uri(cfg: ACMLConfig) -> str:
    """``tracking.uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///ABS/OUTPUT/mlflow.db``."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{out / 'mlflow.db'}"


def git_commit(path: str | Path = ".") -> str | None:
    """HEAD commit of the repository holding `path` (with ``-dirty`` when it has local changes)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def _flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(tree)[:6000]}  # MLflow's param value limit


def metric_key(name: str) -> str:
    """A metric name MLflow accepts (``val/image->graph/top1`` -> ``val/image_to_graph/top1``)."""
    return _BAD_KEY_CHARS.sub("_", name.replace("->", "_to_"))


def experiment_id(
    client: Any, name: str, uri: str, artifact_location: str | None = None, artifacts_beside: str | Path | None = None
) -> str:
    """Id of experiment `name`, created when missing.

    `artifact_location` applies on creation only; without it a sqlite store keeps artifacts in
    ``mlartifacts/`` beside ``artifacts_beside`` (default: beside the database file), where
    MLflow's own default would be ./mlruns under whatever the working directory is.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_location
    if location is None and uri.startswith("sqlite:///"):
        base = (
            Path(artifacts_beside)
            if artifacts_beside is not None
            else Path(uri.removeprefix("sqlite:///")).resolve().parent
        )
        location = (base.resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def client(uri: str) -> Any:
    """An `MlflowClient` on `uri` (explicit: MLflow's process-global tracking URI is never used)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@dataclass
class TrackingRun:
    """A handle on one MLflow run; picklable, so it travels to the training workers."""

    uri: str
    run_id: str

    def _client(self):
        return client(self.uri)

    def log_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Log ``[(step, {name: value})]`` in one batch (non-finite values are skipped)."""
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(metric_key(k), float(v), now, int(step))
            for step, values in rows
            for k, v in values.items()
            if isinstance(v, (int, float)) and math.isfinite(v)
        ]
        client = self._client()
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self._client().log_artifacts(self.run_id, str(local_dir), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set all `tags` in one request."""
        from mlflow.entities import RunTag

        self._client().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str = "FINISHED") -> None:
        self._client().set_terminated(self.run_id, status)

    def status(self) -> str:
        """MLflow's status of the run (RUNNING, FINISHED, FAILED, KILLED)."""
        return self._client().get_run(self.run_id).info.status


def child_runs(parent: TrackingRun) -> dict[str, tuple[TrackingRun, str]]:
    """The runs nested under `parent`, by the run name `start_run` gave them -> (run, status)."""
    mlflow_client = parent._client()
    runs = mlflow_client.search_runs(
        [mlflow_client.get_run(parent.run_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
        max_results=10000,
    )
    return {r.data.tags.get(RUN_NAME_TAG): (TrackingRun(parent.uri, r.info.run_id), r.info.status) for r in runs}


_URI_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_credentials(value: Any) -> Any:
    """Copy of a config dump with ``user:password@`` removed from every URI (e.g. a tracking
    URI with a token), so nothing secret reaches MLflow params or artifacts."""
    if isinstance(value, dict):
        return {k: redact_credentials(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_credentials(v) for v in value]
    if isinstance(value, str):
        return _URI_USERINFO.sub(r"\1***@", value)
    return value


def start_run(cfg: ACMLConfig, run_name: str, resume: bool = False) -> TrackingRun:
    """Open (or, with `resume`, reopen the run tagged `run_name`) and log params, the full
    config as ``config.yaml`` and the git commit; nested under ``tracking.parent_run_id`` if set."""
    from mlflow.entities import Param

    uri = resolve_tracking_uri(cfg)
    mlflow_client = client(uri)
    experiment = experiment_id(
        mlflow_client, cfg.tracking.experiment, uri, cfg.tracking.artifact_location, artifacts_beside=cfg.output_dir
    )
    if resume:
        found = mlflow_client.search_runs(
            [experiment],
            f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if found:
            mlflow_client.update_run(found[0].info.run_id, status="RUNNING")
            return TrackingRun(uri, found[0].info.run_id)
    tags = {RUN_NAME_TAG: run_name}
    if cfg.tracking.parent_run_id:  # nested from its first moment (a Tune study finds its trials by it)
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
    run = mlflow_client.create_run(experiment, run_name=run_name, tags=tags)
    tracking = TrackingRun(uri, run.info.run_id)
    dumped = redact_credentials(cfg.model_dump(mode="json"))
    params = [Param(k, v) for k, v in _flatten(dumped).items()]
    for start in range(0, len(params), 100):  # MLflow's batch limit
        mlflow_client.log_batch(run.info.run_id, params=params[start : start + 100])
    commit = git_commit(Path(__file__).resolve().parent)
    if commit:
        mlflow_client.set_tag(run.info.run_id, "mlflow.source.git.commit", commit)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.yaml").write_text(yaml.safe_dump(dumped, sort_keys=False))
        mlflow_client.log_artifacts(run.info.run_id, tmp)
    return tracking
