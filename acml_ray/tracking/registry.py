"""The MLflow model registry calls: log a pyfunc, register it as a new version, tag it and point
an alias at it; fetch artifacts back. `acml_ray.registry` decides *what* is registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acml_ray.tracking.mlflow_run import client, experiment_id


def run_metrics(uri: str, run_id: str) -> dict[str, float]:
    """The latest value of every metric of an MLflow run."""
    return dict(client(uri).get_run(run_id).data.metrics)


def register_pyfunc(
    uri: str,
    name: str,
    alias: str,
    *,
    artifact_name: str,
    log_model_args: dict[str, Any],
    tags: dict[str, str],
    metrics: dict[str, float],
    description: str,
    source_run_id: str | None = None,
    experiment: str = "acml-registry",
    artifact_location: str | None = None,
    run_name: str | None = None,
) -> tuple[str, str]:
    """Log a pyfunc (``mlflow.pyfunc.log_model(**log_model_args)``) into `source_run_id` or a new
    run of `experiment`, register it as a new version of `name` with `tags` on run and version,
    set its description and point `alias` at it. Returns (version, run id).

    MLflow's fluent API is the only way to log a pyfunc; the process-global tracking URI it needs
    is set for the call and restored after it (None when it was unset: restoring MLflow's
    *default* would pin a cwd-relative sqlite file for everything after us in this process).
    """
    import mlflow

    mlflow_client = client(uri)
    previous_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    try:
        mlflow.set_tracking_uri(uri)
        if source_run_id:
            active = mlflow.start_run(run_id=source_run_id)
        else:
            active = mlflow.start_run(
                experiment_id=experiment_id(mlflow_client, experiment, uri, artifact_location), run_name=run_name
            )
        with active:
            mlflow.set_tags(tags)
            if metrics:
                mlflow.log_metrics(metrics)
            info = mlflow.pyfunc.log_model(name=artifact_name, registered_model_name=name, **log_model_args)
            run_id = active.info.run_id
    finally:
        mlflow.set_tracking_uri(previous_uri)  # type: ignore[arg-type]  # None unsets it
    model_version = str(info.registered_model_version)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, model_version, key, value)
    mlflow_client.update_model_version(name, model_version, description=description)
    mlflow_client.set_registered_model_alias(name, alias, model_version)
    return model_version, run_id


def download_artifacts(artifact_uri: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Copy ``runs:/``, ``models:/`` or ``mlflow-artifacts:`` artifacts into `dst`."""
    import mlflow

    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=tracking_uri)
    )
