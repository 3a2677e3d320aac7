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
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from acml_ray.config import ACMLConfig
from acml_ray.model.acml import ACMLModel
from acml_ray.model.serialization import BEST_MARKER, download_best, read_best_marker, save_model
from acml_ray.storage import resolve_filesystem

# The reading side (download_best) is model I/O and lives in acml_ray.model.serialization.
__all__ = ["BEST_MARKER", "download_best", "save_best"]

_PREFIX = "epoch-"


def save_best(
    model: ACMLModel, cfg: ACMLConfig, best_uri: str, marker: dict[str, Any], history: list[dict[str, float]]
) -> None:
    """Write the model of epoch ``marker["epoch"]`` as the run's best (rank 0 only).

    Args:
        marker: epoch, step, metric, score and metrics of that epoch (stored as BEST.json).
        history: per-epoch metrics so far (stored as history.json).
    """
    fs, path = resolve_filesystem(best_uri)
    folder = f"{_PREFIX}{int(marker['epoch']):04d}-{uuid.uuid4().hex[:8]}"
    previous = (read_best_marker(fs, path) or {}).get("dir")
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
        if (
            info.type == pafs.FileType.Directory
            and info.base_name.startswith(_PREFIX)
            and info.base_name not in (folder, previous)
        ):
            fs.delete_dir(info.path)
