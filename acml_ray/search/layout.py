"""What a structure index is on storage, and the model identity it is bound to.

An index is a folder on a local disk or under ``s3://`` (written by `acml_ray.search.build`):

```
INDEX/manifest.json                  what is in it (below); replaced atomically, the commit point
INDEX/model/model.pt                 a copy of the model that embedded the library
INDEX/shards/<library>-<chunk>.parquet    id, smiles, inchikey, formula, mass, emb__<modality>
INDEX/quarantine/<library>-<chunk>.parquet  rows that did not become a graph, with the reason
INDEX/faiss/<modality>-<generation>.faiss   one FAISS index per modality (ids = row numbers)
```

Rows are numbered in manifest shard order; a FAISS id is that row number, so metadata for a
hit is a positional look-up. Shards are immutable and only ever appended; the manifest is
written last (write-then-rename locally, one PUT on S3), so a reader sees either the old or
the new index, and a build that dies leaves at most unreferenced files, which its re-run
overwrites.

The model identity is a hash of the trainable weights, the modality widths and the
featuriser settings: the three things that decide a library vector. A search with a model of
another identity is refused (`ModelMismatchError`), because its query vectors live in a
different space from the indexed ones.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from acml_ray.storage import join, resolve_filesystem

FORMAT = "acml-structure-index/1"
MANIFEST = "manifest.json"
METADATA_COLUMNS = ("id", "smiles", "inchikey", "formula", "mass")


class ModelMismatchError(ValueError):
    """A search (or an index update) with a model other than the one the index was built with."""


class IndexNotFoundError(FileNotFoundError):
    """No index manifest at the given location."""


def model_fingerprint(model: Any, cfg: Any) -> str:
    """Identity of what embeds a library: trainable weights + modality dims + featuriser settings."""
    from acml_ray.modalities import hash_module_weights

    digest = hashlib.sha256(hash_module_weights(model).encode())
    digest.update(
        json.dumps(
            {"dims": model.modality_dims, "featurizer": cfg.featurizer.model_dump(mode="json")}, sort_keys=True
        ).encode()
    )
    return digest.hexdigest()[:32]


@dataclass
class ShardEntry:
    """One immutable shard: the embedded rows of one chunk of one library."""

    name: str  # path relative to the index root
    library: str  # library key (see `library_key`)
    chunk: int
    rows: int  # rows in the shard (indexed)
    input_rows: int  # library rows the chunk covered
    quarantined: int
    already_indexed: int  # rows skipped because their InChIKey was in the index already
    quarantine: str | None = None
    seconds: float = 0.0  # wall time from the previous commit (or the run's start) to this one


@dataclass
class AnnEntry:
    """The FAISS index of one modality: which shards it covers and how it was built."""

    file: str  # relative path
    kind: str  # "flat" (exact) or "ivf"
    rows: int
    shards: int  # it holds the first `shards` shards of the manifest
    nlist: int | None = None
    nprobe: int | None = None  # default lists scanned per query (calibrated, `acml_ray.search.calibrate`)
    calibration: dict[str, Any] | None = None  # how nprobe was chosen: queries, source, recall curve


@dataclass
class Manifest:
    """The content of ``manifest.json``."""

    model: dict[str, Any]  # fingerprint, source, modalities, embed_dim, acml_ray_version[, registered]
    featurizer: dict[str, Any]
    shards: list[ShardEntry] = field(default_factory=list)
    libraries: dict[str, dict[str, Any]] = field(default_factory=dict)
    ann: dict[str, AnnEntry] = field(default_factory=dict)
    format: str = FORMAT
    updated: float = 0.0

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def fingerprint(self) -> str:
        return str(self.model["fingerprint"])

    @property
    def modalities(self) -> list[str]:
        return list(self.model["modalities"])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"not an acml structure index (format {data.get('format')!r}, expected {FORMAT!r})")
        data["shards"] = [ShardEntry(**s) for s in data.get("shards", [])]
        data["ann"] = {k: AnnEntry(**v) for k, v in data.get("ann", {}).items()}
        return cls(**data)

    def check_model(self, fingerprint: str, source: str) -> None:
        """Raise `ModelMismatchError` unless `fingerprint` is the index's model."""
        if fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"the index was built with model {self.fingerprint} ({self.model.get('source')}); "
                f"{source} is model {fingerprint}: its vectors live in another space. Search with the "
                "index's own model (leave --model out) or build a new index with this one"
            )


class IndexStore:
    """Reads and writes the files of one index folder (local path or s3://)."""

    def __init__(self, location: str) -> None:
        self.location = location.rstrip("/")
        self.fs, self.root = resolve_filesystem(self.location)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, rel: str) -> str:
        return join(self.root, rel)

    def uri(self, rel: str = "") -> str:
        return join(self.location, rel) if rel else self.location

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as stream:
            return stream.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic: readers see the old file or the new one, never a part."""
        target = self.path(rel)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, target)
        else:
            with self.fs.open_output_stream(target) as out:  # one PUT: atomic on S3
                out.write(data)

    def upload(self, local: str | Path, rel: str) -> None:
        """Copy a local file into the index (atomically on a local disk)."""
        if self.is_local:
            target = Path(self.path(rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".tmp-{uuid.uuid4().hex[:8]}")
            pafs.copy_files(
                str(local), str(tmp), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
            )
            tmp.replace(target)
        else:
            pafs.copy_files(
                str(local), self.path(rel), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
            )

    def local_copy(self, rel: str, cache_dir: str | Path) -> Path:
        """The file as a local path: itself on a local disk, else a cached download.

        The cache key is the object's URI *and* its size and modification time: an index rebuilt
        at the same location (or a bucket reused by another deployment) rewrites ``model/model.pt``
        under the same name, and a key of the URI alone served the old model's copy (the
        ``ModelMismatchError`` of an index on s3://). One metadata request per file opened.
        """
        if self.is_local:
            return Path(self.path(rel))
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{self.uri(rel)} does not exist")
        identity = f"{self.uri(rel)}|{info.size}|{info.mtime_ns}"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        target = Path(cache_dir) / digest / Path(rel).name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".tmp-{uuid.uuid4().hex[:8]}")
            pafs.copy_files(
                self.path(rel), str(tmp), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
            )
            tmp.replace(target)
        return target

    def read_manifest(self) -> Manifest | None:
        """The manifest, or None where no index exists yet."""
        if not self.exists(MANIFEST):
            return None
        return Manifest.from_json(self.read_bytes(MANIFEST).decode())

    def write_manifest(self, manifest: Manifest) -> None:
        manifest.updated = time.time()
        self.write_bytes(MANIFEST, manifest.to_json().encode())


def default_cache_dir() -> Path:
    """Where indexes on object storage are cached for searching (``ACML_INDEX_CACHE`` overrides)."""
    import os

    return Path(os.environ.get("ACML_INDEX_CACHE", Path.home() / ".cache" / "acml" / "index"))
