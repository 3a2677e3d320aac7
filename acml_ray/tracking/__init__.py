"""Experiment tracking (MLflow): the driver opens the run and logs the config, the git commit, the
final model and the split; rank 0 of the training workers logs step and epoch metrics to it."""

from acml_ray.tracking.mlflow_run import (
    TrackingRun,
    child_runs,
    client,
    experiment_id,
    git_commit,
    metric_key,
    resolve_tracking_uri,
    start_run,
)

__all__ = [
    "TrackingRun",
    "child_runs",
    "client",
    "experiment_id",
    "git_commit",
    "metric_key",
    "resolve_tracking_uri",
    "start_run",
]
