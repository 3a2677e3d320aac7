"""Model I/O, in one place: save and load a trained ACML model with the configuration that built
it, read a Train run's best model (``<run>/best``, written by `acml_ray.train.best`), and
resolve any model reference users give (run folder, model folder, best folder, s3://, MLflow
URI) to a local model folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from pydantic import ValidationError

from acml_ray import __version__
from acml_ray.config import ACMLConfig
from acml_ray.model.acml import ACMLModel, ModelFactory
from acml_ray.storage import download, join, resolve_filesystem

MODEL_FILE = "model.pt"
BEST_MARKER = "BEST.json"  # the pointer to a Train run's current best folder (see acml_ray.train.best)
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:")


def save_model(model: ACMLModel, cfg: ACMLConfig, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``directory/model.pt``: trainable weights, config and modality dims.

    Frozen encoders are not saved: they are rebuilt from their modality definition, whose
    fingerprint is stored in `extra` by the caller when it matters.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("frozen_encoders.")}
    path = directory / MODEL_FILE
    torch.save(
        {
            "state_dict": state,
            "config": cfg.model_dump(mode="json"),
            "modality_dims": model.modality_dims,
            "extra": extra or {},
            "acml_ray_version": __version__,
        },
        path,
    )
    return path


def load_model(
    directory: str | Path, map_location: str = "cpu", model_factory: ModelFactory | None = None
) -> tuple[ACMLModel, ACMLConfig, dict]:
    """Rebuild a saved model in eval mode -> (model, config, extra).

    `model_factory` is the one training used (`fit(model_factory=...)`); default
    `ACMLModel.from_config`.

    The file is read with ``weights_only=True``: models travel between teams through the
    registry, and a model file must never be able to run code when it is loaded.
    """
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in {directory}")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    try:
        cfg = ACMLConfig.model_validate(blob["config"])
    except ValidationError as err:
        saved_by = blob.get("acml_ray_version", "an unknown version")
        raise ValueError(
            f"{path} was saved by acml-ray {saved_by} with a configuration acml-ray {__version__} "
            f"cannot read (a newer release's settings?); load it with that release or later: {err}"
        ) from err
    model = (model_factory or ACMLModel.from_config)(cfg, blob["modality_dims"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, cfg, blob.get("extra", {})


def read_best_marker(fs: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    """The pointer ``path/BEST.json``, or None if there is none yet."""
    try:
        with fs.open_input_stream(f"{path}/{BEST_MARKER}") as stream:
            return json.loads(stream.read())
    except FileNotFoundError:
        return None


def download_best(best_uri: str, target: str | Path, attempts: int = 3) -> dict[str, Any] | None:
    """Copy the run's best model to the local folder `target` (replaced); return its BEST.json
    contents, or None when the run has no best model yet (`target` then holds nothing).

    Raises RuntimeError if the folder the pointer names has no model file (and the pointer did
    not move meanwhile), or if the pointer kept moving for `attempts` copies.
    """
    fs, path = resolve_filesystem(best_uri)
    target = Path(target)
    marker = read_best_marker(fs, path)
    for _ in range(attempts):
        if marker is None:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            return None
        source = join(best_uri, marker["dir"]) if "dir" in marker else best_uri
        try:
            download(source, target)
        except FileNotFoundError:
            pass  # pruned while we copied: the pointer has moved on
        now = read_best_marker(fs, path)
        if now == marker:  # the pointer held still: the copy is the best
            if (target / MODEL_FILE).is_file():
                return marker
            raise RuntimeError(f"the best model at {source} has no {MODEL_FILE}")
        marker = now
    raise RuntimeError(f"the best model at {best_uri} kept changing while it was copied")


def is_best_folder(ref: str) -> bool:
    """True for ``<run>/best`` of a Train run: a BEST.json pointer naming the current best
    folder, and no model file of its own (a copied best model has both)."""
    fs, path = resolve_filesystem(ref.removeprefix("file://"))
    marker, model = fs.get_file_info([join(path, BEST_MARKER), join(path, MODEL_FILE)])
    return marker.type == pafs.FileType.File and model.type == pafs.FileType.NotFound


def resolve_model(ref: str, workdir: str | Path, tracking_uri: str | None = None) -> tuple[Path, Path | None]:
    """A run folder, a model folder, a Train run's ``best`` folder, an ``s3://`` location or an
    MLflow artifact URI (``runs:/ID/model``, ``models:/NAME@alias``) -> (local model dir, local
    run dir or None).

    Remote models are copied into `workdir` (only ``model.pt`` and the held-out table)."""
    if ref.startswith(MLFLOW_SCHEMES):
        from acml_ray.tracking.registry import download_artifacts

        ref = str(download_artifacts(ref, workdir, tracking_uri))
    elif is_best_folder(ref):
        local = Path(workdir) / "best"
        download_best(ref, local)
        return local, None
    elif ref.startswith("s3://"):
        local = Path(workdir) / "remote_run"
        for rel in (MODEL_FILE, f"model/{MODEL_FILE}", "data/val.parquet"):
            fs, remote = resolve_filesystem(join(ref, rel))
            if fs.get_file_info(remote).type == pafs.FileType.File:
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(remote, str(local / rel), source_filesystem=fs)
        ref = str(local)
    path = Path(ref.removeprefix("file://"))
    if (path / MODEL_FILE).is_file():
        return path, (path.parent if path.name == "model" else None)
    if (path / "model" / MODEL_FILE).is_file():
        return path / "model", path
    raise FileNotFoundError(f"no {MODEL_FILE} in {ref} or {ref}/model")
