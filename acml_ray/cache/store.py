"""Content-addressed store of frozen-encoder embeddings on a local path or object storage.

Layout: ``ROOT/<modality>/<encoder fingerprint>/<sha256 of shard bytes>.parquet``; each shard
holds rows ``(key, embedding)`` where ``key`` is the content hash of the canonical input.

Why this shape:
- the fingerprint directory means a changed encoder or preprocessing never reads stale
  vectors;
- shards are immutable and named by the hash of their own bytes, so a truncated or corrupted
  shard is detected on read (the bytes no longer hash to the name) and set aside, and its keys
  are simply recomputed; of several instances that read it at once, the one that moves it
  aside counts it (`CacheStats.shards_corrupt`), so concurrent actors report it once;
- writers never modify a shard, they only add new ones under unique names (write-then-rename
  locally, a single atomic PUT on S3), so concurrent pipelines leave the cache consistent:
  at worst a key is stored twice with identical values (the encoders are deterministic);
- listing and reading cost grows with the number of shards (one GET per shard on S3), so
  `compact` merges them into one content-addressed shard; it deletes only shards it has read
  and verified, after the merged shard is durable, so a concurrent reader or compactor never
  loses a key (a reader that finds a listed shard gone simply lists again).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from acml_ray.storage import resolve_filesystem

log = logging.getLogger(__name__)


@dataclass
class CacheStats:
    """What a cache instance has read and written (reported by pipelines and benchmarks)."""

    shards_read: int = 0
    shards_corrupt: int = 0
    shards_written: int = 0
    rows_written: int = 0
    corrupt_paths: list[str] = field(default_factory=list)


class EmbeddingCache:
    """Embeddings of one (modality, encoder fingerprint) pair, keyed by content hash."""

    def __init__(
        self, root: str, modality: str, fingerprint: str, dim: int, filesystem: pafs.FileSystem | None = None
    ) -> None:
        """`filesystem`, when given, is used for `root` as is (a path inside it): pipelines
        resolve S3 credentials once in the driver and ship the filesystem to their workers."""
        self.root = root
        self.modality = modality
        self.fingerprint = fingerprint
        self.dim = dim
        if filesystem is None:
            self.fs, base = resolve_filesystem(root)
        else:
            self.fs, base = filesystem, root.removeprefix("s3://").rstrip("/")
        self.directory = f"{base}/{modality}/{fingerprint}"
        self.stats = CacheStats()
        self._index: dict[str, np.ndarray] | None = None

    # -- reading ------------------------------------------------------------------------
    def _shard_paths(self) -> list[str]:
        selector = pafs.FileSelector(self.directory, allow_not_found=True, recursive=False)
        infos = self.fs.get_file_info(selector)
        return sorted(i.path for i in infos if i.is_file and i.path.endswith(".parquet"))

    def _read_verified(self, path: str) -> pa.Table | None:
        """The shard's table, or None when its bytes do not hash to its name (corrupt).

        Raises FileNotFoundError when the shard vanished after listing (compacted away).
        """
        try:
            with self.fs.open_input_stream(path) as stream:
                data = stream.read()
        except OSError as exc:  # S3 reports a missing key as a generic OSError
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                raise FileNotFoundError(path) from exc
            raise
        expected = path.rsplit("/", 1)[-1].removesuffix(".parquet")
        if hashlib.sha256(data).hexdigest() != expected:
            return None
        try:
            table = pq.read_table(pa.BufferReader(data))
        except Exception:  # a shard whose hash matches but fails to parse was written broken
            return None
        if table.schema.names != ["key", "embedding"]:
            return None
        return table

    def _set_aside(self, path: str) -> bool:
        """Move a corrupt shard into ``corrupt/`` (the evidence, out of the way of readers);
        True when this instance is the one to count it.

        Several instances may read the same corrupt shard at once (the embed actors of
        ``embed.concurrency`` > 1, a compactor): each tries the move, and only the one whose
        move succeeds counts the shard; a move that fails because the shard is gone was beaten
        by another instance, which counts it. Locally the move is a rename, atomic, so exactly
        one instance counts it. On S3 a move is a copy and a delete: two readers racing can both
        succeed and both count it. A shard that cannot be moved at all (a read-only cache) is
        counted by every instance that reads it, as it is recomputed by each.
        """
        target = f"{self.directory}/corrupt/{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex[:8]}"
        try:
            self.fs.create_dir(f"{self.directory}/corrupt", recursive=True)
            self.fs.move(path, target)
        except OSError:
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                return False  # another instance moved it aside first
            log.warning("could not move corrupt cache shard %s aside", path)
        return True

    def _found_corrupt(self, path: str) -> None:
        """Set a shard that failed its checksum aside, and count it if this instance did."""
        if self._set_aside(path):
            self.stats.shards_corrupt += 1
            self.stats.corrupt_paths.append(path)
            log.warning("cache shard failed its checksum, recomputing its rows: %s", path)

    def load(self, refresh: bool = False) -> dict[str, np.ndarray]:
        """Read every verified shard into memory: key -> float32 vector."""
        if self._index is not None and not refresh:
            return self._index
        for _attempt in range(3):
            try:
                self._index = self._load_once()
                return self._index
            except FileNotFoundError:  # a concurrent compaction replaced shards: list again
                log.info("cache shard vanished while loading %s; listing again", self.directory)
        raise RuntimeError(f"cache directory {self.directory} kept changing while being read")

    def _load_once(self) -> dict[str, np.ndarray]:
        index: dict[str, np.ndarray] = {}
        for path in self._shard_paths():
            table = self._read_verified(path)
            if table is None:
                self._found_corrupt(path)
                continue
            self.stats.shards_read += 1
            keys = table.column("key").to_pylist()
            flat = table.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False)
            vectors = flat.astype(np.float32, copy=False).reshape(len(keys), self.dim)
            index.update(zip(keys, vectors))
        return index

    def lookup(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for `keys` -> (float32 [n, dim] with zeros where missing, found mask [n])."""
        index = self.load()
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        for i, key in enumerate(keys):
            vector = index.get(key)
            if vector is not None:
                out[i] = vector
                found[i] = True
        return out, found

    def __len__(self) -> int:
        return len(self.load())

    # -- writing ------------------------------------------------------------------------
    def put(self, keys: list[str], vectors: np.ndarray) -> str | None:
        """Store new vectors as one immutable shard; returns its path (None if nothing new)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"expected vectors of shape ({len(keys)}, {self.dim}), got {vectors.shape}")
        if not keys:
            return None
        path = self._write_shard(keys, vectors)
        self.stats.shards_written += 1
        self.stats.rows_written += len(keys)
        if self._index is not None:
            self._index.update(zip(keys, vectors))
        return path

    def _write_shard(self, keys: list[str], vectors: np.ndarray) -> str:
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim),
            }
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
        path = f"{self.directory}/{hashlib.sha256(data).hexdigest()}.parquet"
        if isinstance(self.fs, pafs.LocalFileSystem):  # object stores need no directories
            self.fs.create_dir(self.directory, recursive=True)
            tmp = f"{self.directory}/.tmp-{uuid.uuid4().hex}"
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, path)  # atomic rename: readers never see a partial shard
        else:
            with self.fs.open_output_stream(path) as out:  # one PUT: atomic on S3
                out.write(data)
        return path

    def compact(self, min_shards: int = 2) -> int:
        """Merge every verified shard into one; returns how many shards were merged away.

        Safe against concurrent writers, readers and compactors: shards written after the
        listing are untouched, the merged shard is written before anything is deleted, and
        if any listed shard vanished meanwhile (another compactor) nothing is deleted.
        """
        paths = self._shard_paths()
        if len(paths) < min_shards:
            return 0
        index: dict[str, np.ndarray] = {}
        merged: list[str] = []
        for path in paths:
            try:
                table = self._read_verified(path)
            except FileNotFoundError:
                return 0  # someone else is compacting: let them finish
            if table is None:
                self._found_corrupt(path)
                continue
            keys = table.column("key").to_pylist()
            flat = table.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False)
            index.update(zip(keys, flat.astype(np.float32, copy=False).reshape(len(keys), self.dim)))
            merged.append(path)
        if len(merged) < min_shards:
            return 0
        keys = sorted(index)  # sorted: equal content gives an equal (content-addressed) name
        target = self._write_shard(keys, np.stack([index[k] for k in keys]))
        removed = 0
        for path in merged:
            if path == target:
                continue
            try:
                self.fs.delete_file(path)
                removed += 1
            except (FileNotFoundError, OSError):
                pass  # already gone: a concurrent compactor merged it too
        log.info("compacted %d cache shards into %s", removed, target)
        self._index = index
        return removed
