"""A run's best model, ``<run>/best`` (local path or s3://), written so that no reader ever
sees half of it.

Every new best goes to a folder of its own, ``best/epoch-NNNN-<id>/`` (model.pt, history.json,
BEST.json; never reused, so an epoch replayed after a crash does not touch the folder in force);
only when that folder is complete is the pointer ``best/BEST.json`` replaced, in one step (a
rename on disk, a single-object copy on S3). A worker killed mid-write leaves the previous best
in force. The writer keeps the previous folder besides the current one, and a reader that finds
the pointer moved while it copied starts again. Runs written before this layout (files directly
in ``best/``) still read.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from acml_ray.config import ACMLConfig
from acml_ray.model.acml import ACMLModel
from acml_ray.model.serialization import MODEL_FILE, save_model
from acml_ray.storage.filesystem import download, join, resolve_filesystem

BEST_MARKER = "BEST.json"
_PREFIX = "epoch-"


def _read_marker(fs: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    """The pointer ``path/BEST.json``, or None if there is none yet."""
    try:
        with fs.open_input_stream(f"{path}/{BEST_MARKER}") as stream:
            return json.loads(stream.read())
    except FileNotFoundError:
        return None


def save_best(model: ACMLModel, cfg: ACMLConfig, best_uri: str, marker: dict[str, Any],
              history: list[dict[str, float]]) -> None:
    """Write the model of epoch ``marker["epoch"]`` as the run's best (rank 0 only).

    Args:
        marker: epoch, step, metric, score and metrics of that epoch (stored as BEST.json).
        history: per-epoch metrics so far (stored as history.json).
    """
    fs, path = resolve_filesystem(best_uri)
    folder = f"{_PREFIX}{int(marker['epoch']):04d}-{uuid.uuid4().hex[:8]}"
    previous = (_read_marker(fs, path) or {}).get("dir")
    pointer = {**marker, "dir": folder}
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, cfg, tmp, extra=marker)
        Path(tmp, "history.json").write_text(json.dumps(history, indent=1))
        Path(tmp, BEST_MARKER).write_text(json.dumps(pointer, indent=1))
        fs.create_dir(f"{path}/{folder}", recursive=True)
        pafs.copy_files(tmp, f"{path}/{folder}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    staged = f"{path}/.{BEST_MARKER}.{folder}"
    with fs.open_output_stream(staged) as stream:
        stream.write(json.dumps(pointer, indent=1).encode())
    fs.move(staged, f"{path}/{BEST_MARKER}")
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith(_PREFIX) \
                and info.base_name not in (folder, previous):
            fs.delete_dir(info.path)


def download_best(best_uri: str, target: str | Path, attempts: int = 3) -> dict[str, Any] | None:
    """Copy the run's best model to the local folder `target` (replaced); return its BEST.json
    contents, or None when the run has no best model yet (`target` then holds nothing).

    Raises RuntimeError if the folder the pointer names has no model file (and the pointer did
    not move meanwhile), or if the pointer kept moving for `attempts` copies.
    """
    fs, path = resolve_filesystem(best_uri)
    target = Path(target)
    marker = _read_marker(fs, path)
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
        now = _read_marker(fs, path)
        if now == marker:  # the pointer held still: the copy is the best
            if (target / MODEL_FILE).is_file():
                return marker
            raise RuntimeError(f"the best model at {source} has no {MODEL_FILE}")
        marker = now
    raise RuntimeError(f"the best model at {best_uri} kept changing while it was copied")
