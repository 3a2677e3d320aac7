"""Where user-supplied pretrained weights come from: a local path, or an ``s3://`` URI that is
copied once into a local cache directory (the loaders of torch / transformers need files)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

# Where s3 weights are copied unless a modality is given `cache_dir`.
DEFAULT_CACHE = Path(os.environ.get("ACML_WEIGHTS_CACHE", Path.home() / ".cache" / "acml_ray" / "weights"))


def local_copy(location: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local path of a weights file or model directory given as a path or an ``s3://`` URI.

    A URI is listed first (sizes and modification times of every object under it) and copied
    into ``cache_dir/<hash of URI + listing>``, so a changed remote object is fetched again
    while an unchanged one is reused. The copy goes to a temporary directory and is renamed
    into place, so an interrupted download never looks complete.
    """
    location = str(location)
    if not location.startswith("s3://"):
        path = Path(location[len("file://") :] if location.startswith("file://") else location)
        if not path.exists():
            raise FileNotFoundError(f"weights not found: {path}")
        return path

    import pyarrow.fs as pafs

    from acml_ray.storage import resolve_filesystem

    fs, root = resolve_filesystem(location)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"weights not found: {location}")
    if info.type == pafs.FileType.File:
        listing = [(Path(root).name, info.size, str(info.mtime))]
    else:
        entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        listing = sorted(
            (e.path[len(root) :].lstrip("/"), e.size, str(e.mtime)) for e in entries if e.type == pafs.FileType.File
        )
        if not listing:
            raise FileNotFoundError(f"no files under {location}")
    digest = hashlib.sha256(json.dumps([location, listing]).encode()).hexdigest()[:24]
    base = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    target = base / digest
    result = target / Path(root).name if info.type == pafs.FileType.File else target
    if target.is_dir():
        return result
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=base))
    try:
        if info.type == pafs.FileType.File:
            pafs.copy_files(
                root,
                str(staging / Path(root).name),
                source_filesystem=fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
        else:
            pafs.copy_files(root, str(staging), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        try:
            staging.rename(target)
        except OSError:  # another process finished the same download first: use theirs
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
