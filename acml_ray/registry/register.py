"""Register a trained ACML run in the MLflow model registry, addressed by alias.

``register_run`` logs the run's model as an `ACMLEmbedder` pyfunc (weights, the acml_ray code,
pinned requirements, signature, input example), registers a new version under NAME, tags it
with what downstream teams ask first (data, modalities, held-out retrieval metrics) and points
the alias (``champion`` by default) at it, so consumers load ``models:/NAME@champion``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from acml_ray.registry.pyfunc import INPUT_EXAMPLE, MODEL_ARTIFACT, model_signature

REGISTRY_EXPERIMENT = "acml-registry"
PYFUNC_NAME = "acml_pyfunc"  # the logged model's name inside its MLflow run
# What the served model imports; versions are pinned to the registering environment.
_REQUIREMENTS = ("torch", "torch-geometric", "rdkit", "pydantic", "pyyaml", "numpy", "pandas")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# Metrics worth a tag: top-1 and top-10 retrieval, both directions, fixed pool and whole set.
_KEY_METRIC = re.compile(r"top(1|10)$")


@dataclass
class RegisteredModel:
    """A registered version and how to load it."""

    name: str
    version: str
    alias: str
    tracking_uri: str
    run_id: str  # the MLflow run holding the logged pyfunc
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def pinned_requirements() -> list[str]:
    """``pkg==version`` for what the pyfunc imports (a local tag like ``+cpu`` dropped, so
    the consumer's pip picks the right torch build for its machine)."""
    pins = []
    for package in _REQUIREMENTS:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def _retrieval_metrics(retrieval: dict) -> dict[str, float]:
    """``{"image->graph": {"pool_128": {"top10": ..}}}`` -> ``{"image_to_graph/pool_128/top10": ..}``."""
    from acml_ray.tracking.mlflow_run import metric_key

    out = {}
    for direction, pools in retrieval.items():
        for pool, values in pools.items():
            for name, value in values.items():
                if _KEY_METRIC.search(name) and isinstance(value, (int, float)):
                    out[metric_key(f"{direction}/{pool}/{name}")] = float(value)
    return out


def _run_dir_metrics(run_dir: Path) -> tuple[dict[str, float], dict[str, str]]:
    """Key metrics and extra tags from ``summary.json`` (`acml demo`) and
    ``evaluation/report.json`` (`acml evaluate`, which wins where both report a metric)."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for rel in ("summary.json", "evaluation/report.json"):
        path = run_dir / rel
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        metrics.update(_retrieval_metrics(report.get("retrieval") or {}))
        if report.get("held_out_molecules") is not None:
            tags["acml.held_out_molecules"] = str(report["held_out_molecules"])
        if report.get("encoder_fingerprints"):
            tags["acml.encoder_fingerprints"] = json.dumps(report["encoder_fingerprints"], sort_keys=True)[:4000]
    return metrics, tags


def registry_tracking_uri(run: str, tracking_uri: str | None) -> str:
    """``tracking_uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///RUN/mlflow.db`` (RUN a folder)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if Path(run).is_dir():
        return f"sqlite:///{Path(run).resolve() / 'mlflow.db'}"
    raise ValueError(
        f"{run!r} is not a run folder: give --tracking-uri or set MLFLOW_TRACKING_URI to register an MLflow run"
    )


def _model_tags(cfg: Any, model: Any, extra: dict) -> dict[str, str]:
    """Data sources, modalities and shape of the model, from the config saved with it."""
    sources = [s.name + (f"(limit={s.limit})" if s.limit else "") for s in cfg.data.sources]
    tags = {
        "acml.modalities": ",".join(model.modalities),
        "acml.data_sources": ",".join(sources),
        "acml.graph_embedding_dim": str(model.graph_encoder.out_dim),
        "acml.joint_embedding_dim": str(model.embed_dim),
        "acml.loss": f"{cfg.loss.kind} tau={cfg.loss.temperature}",
    }
    # Table locations name a bucket and a key, never a credential (those come from the env).
    for key in ("train_table", "val_table"):
        if getattr(cfg.train, key):
            tags[f"acml.{key}"] = getattr(cfg.train, key)
    if cfg.embed.input:
        tags["acml.embed_input"] = cfg.embed.input
    if extra.get("epoch") is not None:
        tags["acml.best_epoch"] = str(extra["epoch"])
    return tags


def check_names(name: str, alias: str) -> None:
    """Reject a model name or alias the registry would refuse, before anything is written."""
    if not name.strip():
        raise ValueError("--name: the registered model name is empty")
    # MLflow reserves "latest" and version-like "v<N>" aliases; they would fail after registration.
    if not alias or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ValueError(f"--alias {alias!r} is reserved or empty in the MLflow registry (use e.g. champion, staging)")


def register_run(
    run: str,
    name: str,
    alias: str = "champion",
    tracking_uri: str | None = None,
    description: str | None = None,
    artifact_location: str | None = None,
) -> RegisteredModel:
    """Log RUN's model as an `ACMLEmbedder` pyfunc, register it as a new version of `name`, tag it, set `alias`.

    RUN is a run folder (``model/model.pt``, optionally ``summary.json`` and
    ``evaluation/report.json`` for metrics), a model folder, an ``s3://`` run location, or an
    MLflow run id / ``runs:/ID/model`` URI whose artifacts hold the model (metrics then come
    from that run, and the pyfunc is logged into it).
    """
    from acml_ray.model.serialization import load_model, resolve_model
    from acml_ray.tracking.registry import register_pyfunc, run_metrics

    check_names(name, alias)  # before anything is logged: a refused alias must not leave a version
    # `artifact_location` (e.g. s3://bucket/mlartifacts/registry) applies when the registry
    # experiment is first created; by default artifacts go beside a sqlite store.
    uri = registry_tracking_uri(run, tracking_uri)
    source_run_id = None
    ref = run
    if not Path(run).exists() and _RUN_ID.match(run):
        source_run_id, ref = run, f"runs:/{run}/model"
    elif run.startswith("runs:/"):
        source_run_id = run.removeprefix("runs:/").split("/", 1)[0]

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, run_dir = resolve_model(ref, tmp, uri)
        model, cfg, extra = load_model(model_dir)
        tags = _model_tags(cfg, model, extra)
        if source_run_id:
            found = run_metrics(uri, source_run_id)
            metrics = {k: v for k, v in found.items() if _KEY_METRIC.search(k)}
            tags["acml.source_run_id"] = source_run_id
        else:
            metrics, more = _run_dir_metrics(Path(run)) if Path(run).is_dir() else ({}, {})
            tags |= more
            tags["acml.source"] = str(Path(run).resolve()) if Path(run).exists() else run
        tags |= {f"metric.{k}": f"{v:.4f}" for k, v in metrics.items()}

        # Ship the package code with the model so a consumer needs only the pinned requirements
        # (not the demo/evaluation data sets the package also carries: serving never reads them).
        code = Path(tmp) / "code" / "acml_ray"
        shutil.copytree(
            Path(__file__).resolve().parents[1], code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "sets")
        )
        description = description or (
            f"ACML graph encoder ({tags['acml.modalities']}) trained on {tags['acml.data_sources']}; "
            "input: DataFrame with a `smiles` column; output: graph_embedding, <modality>_embedding, error"
        )
        model_version, run_id = register_pyfunc(
            uri,
            name,
            alias,
            artifact_name=PYFUNC_NAME,
            tags=tags,
            metrics=metrics,
            description=description,
            source_run_id=source_run_id,
            experiment=REGISTRY_EXPERIMENT,
            artifact_location=artifact_location,
            run_name=f"register-{name}",
            log_model_args=dict(
                python_model=str(Path(__file__).with_name("serving_model.py")),
                artifacts={MODEL_ARTIFACT: str(model_dir)},
                code_paths=[str(code)],
                signature=model_signature(model.modalities),
                input_example=INPUT_EXAMPLE,
                pip_requirements=pinned_requirements(),
            ),
        )
    return RegisteredModel(name=name, version=model_version, alias=alias, tracking_uri=uri, run_id=run_id, tags=tags)
