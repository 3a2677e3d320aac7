"""`acml index`: embed a molecule library with a trained model into a structure index.

For each chunk of ``index.chunk_rows`` library rows (in file order), a Ray Data pipeline
featurises the SMILES in CPU tasks (the run's own `GraphFeaturizer`, so the index holds exactly
the molecules the model may embed; InChIKey, Hill formula and monoisotopic mass come with each
graph) and runs the graph encoder plus every modality's graph-side projection in an actor pool
(one GPU per actor when the cluster has GPUs). Vectors are L2-normalised, so inner product is
cosine similarity. The driver drops repeats of an InChIKey, writes the chunk as one immutable
shard, its bad rows as a quarantine file with their reasons, and then the manifest, so an
interrupted build resumes at the first chunk without a shard. Rows whose InChIKey is already in
the index are never sent to the encoder: adding a library to an index embeds only new molecules.

When every chunk is in, each modality's FAISS index is brought up to date: exact
(``IndexFlatIP``) below ``index.ann_threshold`` rows, an inverted file (``IndexIVFFlat``, nlist
lists, k-means trained on a sample) above it. New shards are added to the existing FAISS index
without re-training; crossing the threshold builds the IVF index from all shards. FAISS was
chosen over Lance by measurement (`benchmarks/search_backends.py`, docs/search.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from acml_ray.chem import GraphFeaturizer, Rejected, reason_kind, row_arrow_schema
from acml_ray.config import ACMLConfig, FeaturizerConfig, IndexConfig
from acml_ray.data.columnar import list_column
from acml_ray.search.calibrate import FALLBACK_NPROBE, CalibrationQueries, calibrate, calibration_settings
from acml_ray.search.layout import (
    METADATA_COLUMNS,
    AnnEntry,
    IndexStore,
    Manifest,
    ShardEntry,
    model_fingerprint,
)
from acml_ray.storage import check_access

log = logging.getLogger(__name__)

SMILES_CANDIDATES = ("smiles", "SMILES", "Smiles", "canonical_smiles")
ID_CANDIDATES = ("id", "ID", "Id", "name", "Name", "mol_id", "zinc_id")
_GRAPH_COLUMNS = [f.name for f in row_arrow_schema() if f.name not in ("smiles", "inchikey")]


def emb_column(modality: str) -> str:
    """Shard column of the library's vectors in `modality`'s joint space."""
    return f"emb__{modality}"


def _say(message: str) -> None:
    print(f"[acml index] {message}", flush=True)


# -- chemistry of one library row ----------------------------------------------------------
def formula_and_mass(smiles: str) -> tuple[str, float]:
    """Hill formula and monoisotopic mass (RDKit) of a canonical SMILES from the featuriser.

    The SMILES was already sanitised once by the featuriser, so it is parsed without sanitising
    again: about 20 us instead of 170 us a molecule, same formula and mass (tested).
    """
    from rdkit import Chem
    from rdkit.Chem import rdMolDescriptors

    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    mol.UpdatePropertyCache(strict=False)
    return rdMolDescriptors.CalcMolFormula(mol), float(rdMolDescriptors.CalcExactMolWt(mol))


def key_hashes(inchikeys: list[str]) -> np.ndarray:
    """64-bit hashes of InChIKeys (for membership tests against millions of indexed keys)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in inchikeys),
        dtype=np.uint64,
        count=len(inchikeys),
    )


def featurise_library(batch: pa.Table, featurizer_config: dict[str, Any], known: np.ndarray) -> pa.Table:
    """Library rows (``id``, ``smiles``) -> identity, formula, mass, graph columns and a status.

    ``status`` is ``ok`` (to embed), ``bad`` (``reason`` says why) or ``known`` (its InChIKey is
    in `known`, the sorted hashes of the index's keys: not embedded again). Never raises for a
    bad molecule.
    """
    featurizer = GraphFeaturizer(FeaturizerConfig.model_validate(featurizer_config))
    inputs = batch.column("smiles").to_pylist()
    results = featurizer.featurize_batch(inputs)
    n = len(results)
    status: list[str] = ["ok"] * n
    reasons: list[str | None] = [None] * n
    smiles: list[str | None] = [None] * n
    inchikeys: list[str | None] = [None] * n
    formulas: list[str | None] = [None] * n
    masses = np.full(n, np.nan)
    rows: list[dict | None] = [None] * n
    for i, r in enumerate(results):
        if isinstance(r, Rejected):
            status[i], reasons[i] = "bad", r.reason
            continue
        try:
            formulas[i], masses[i] = formula_and_mass(r.smiles)
        except Exception as exc:  # noqa: BLE001 - one odd molecule must not sink the chunk
            status[i], reasons[i] = "bad", f"formula/mass failed: {type(exc).__name__}: {exc}"
            continue
        smiles[i], inchikeys[i] = r.smiles, r.inchikey
        rows[i] = r.to_row()
    live = [i for i in range(n) if status[i] == "ok"]
    if live and len(known):
        hashes = key_hashes([str(inchikeys[i]) for i in live])
        pos = np.minimum(np.searchsorted(known, hashes), len(known) - 1)
        for i, hit in zip(live, known[pos] == hashes):
            if hit:
                status[i], rows[i] = "known", None
    columns: dict[str, pa.Array] = {
        "id": batch.column("id").combine_chunks().cast(pa.string()),
        "input": pa.array([r.input if isinstance(r, Rejected) else s for r, s in zip(results, inputs)], pa.string()),
        "status": pa.array(status, pa.string()),
        "reason": pa.array(reasons, pa.string()),
        "smiles": pa.array(smiles, pa.string()),
        "inchikey": pa.array(inchikeys, pa.string()),
        "formula": pa.array(formulas, pa.string()),
        "mass": pa.array(masses, pa.float64(), mask=np.isnan(masses)),
    }
    if "chunk" in batch.column_names:  # which library chunk the row belongs to (see _embed_stream)
        columns["chunk"] = batch.column("chunk").combine_chunks()
    for f in row_arrow_schema():
        if f.name in _GRAPH_COLUMNS:
            values = [None if r is None else r[f.name] for r in rows]
            columns[f.name] = (
                list_column(values, f.type.value_type) if pa.types.is_list(f.type) else pa.array(values, f.type)
            )
    return pa.table(columns)


class LibraryEncoder:
    """Ray Data actor: graph columns -> L2-normalised joint-space vectors of every modality.

    Only ``status == "ok"`` rows are encoded; the graph columns are dropped on the way out.
    """

    def __init__(self, model_blob: bytes, use_gpu: bool, num_cpus: float) -> None:
        import torch

        from acml_ray.model.serialization import MODEL_FILE, load_model

        torch.set_num_threads(max(1, int(num_cpus)))
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / MODEL_FILE).write_bytes(model_blob)
            self.model, _, _ = load_model(tmp)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from acml_ray.data.columnar import collate  # vectorised: no Python object per molecule

        ok = pc.equal(batch.column("status"), "ok")
        rows = np.flatnonzero(ok.to_numpy(zero_copy_only=False))
        n, dim = batch.num_rows, self.model.embed_dim
        vectors = {m: np.zeros((n, dim), np.float32) for m in self.model.modalities}
        if rows.size:
            collated: Any = collate(batch.filter(ok), check=False)  # (graphs, {}); the featuriser built the rows
            graphs = collated[0]
            with torch.no_grad():
                raw = self.model.encode_graph(graphs.to(self.device))
                for m in self.model.modalities:
                    projected = torch.nn.functional.normalize(self.model.graph_projections[m](raw).float(), dim=-1)
                    vectors[m][rows] = projected.cpu().numpy()
        out = batch.drop_columns(_GRAPH_COLUMNS)
        invalid = pa.array(~ok.to_numpy(zero_copy_only=False))
        for m, v in vectors.items():
            flat = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), dim)
            out = out.append_column(emb_column(m), pc.if_else(invalid, pa.nulls(n, flat.type), flat))
        return out


# -- the library ---------------------------------------------------------------------------
@dataclass
class Library:
    """A molecule table to index: where it is, which columns hold SMILES and ids, its key."""

    location: str
    files: list[str]
    fmt: str  # "csv", "tsv", "parquet" or "smi"
    smiles_column: str
    id_column: str | None
    key: str
    fs: pafs.FileSystem = field(repr=False)

    def chunks(self, rows: int) -> Iterator[pa.Table]:
        """Tables of `rows` rows (the last one shorter) with columns ``id`` and ``smiles``, in
        file order; an absent id column gives null ids (the InChIKey stands in later)."""
        pending: list[pa.Table] = []
        size = 0
        for table in self._batches():
            pending.append(table)
            size += table.num_rows
            while size >= rows:
                whole = pa.concat_tables(pending).combine_chunks()
                yield whole.slice(0, rows)
                rest = whole.slice(rows)
                pending, size = ([rest] if rest.num_rows else []), rest.num_rows
        if size:
            yield pa.concat_tables(pending).combine_chunks()

    def _batches(self) -> Iterator[pa.Table]:
        for path in self.files:
            if self.fmt == "smi":
                yield _read_smi(self.fs, path)
                continue
            if self.fmt == "parquet":
                source = pq.ParquetFile(self.fs.open_input_file(path))
                cols = [self.smiles_column] + ([self.id_column] if self.id_column else [])
                batches: Iterator[pa.Table] = (
                    pa.Table.from_batches([b]) for b in source.iter_batches(batch_size=65536, columns=cols)
                )
            else:
                batches = iter([_read_delimited(self.fs, path, self.fmt)])
            for table in batches:
                ids = (
                    table.column(self.id_column).cast(pa.string())
                    if self.id_column
                    else pa.nulls(table.num_rows, pa.string())
                )
                yield pa.table({"id": ids, "smiles": table.column(self.smiles_column).cast(pa.string())})


def _read_delimited(fs: pafs.FileSystem, path: str, fmt: str) -> pa.Table:
    import pyarrow.csv as pacsv

    from acml_ray.data.csv_source import read_csv_stream  # pyarrow alone mis-splits rows with NUL bytes

    delimiter = "\t" if fmt == "tsv" else ","
    with fs.open_input_stream(path, compression="detect") as stream:
        return read_csv_stream(stream, parse_options=pacsv.ParseOptions(delimiter=delimiter))


def _read_smi(fs: pafs.FileSystem, path: str) -> pa.Table:
    """A SMILES file: ``SMILES [name]`` per line (whitespace-separated), no header."""
    with fs.open_input_stream(path, compression="detect") as stream:
        lines = stream.read().decode("utf-8", "replace").splitlines()
    smiles, ids = [], []
    for line in lines:
        parts = line.strip().split(maxsplit=1)
        if not parts or parts[0].startswith("#"):
            continue
        smiles.append(parts[0])
        ids.append(parts[1].strip() if len(parts) > 1 else None)
    return pa.table({"id": pa.array(ids, pa.string()), "smiles": pa.array(smiles, pa.string())})


def _format_of(name: str) -> str | None:
    lower = name.lower().removesuffix(".gz")
    for suffix, fmt in (
        (".parquet", "parquet"),
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".smi", "smi"),
        (".smiles", "smi"),
        (".txt", "smi"),
    ):
        if lower.endswith(suffix):
            return fmt
    return None


def _schema_names(fs: pafs.FileSystem, path: str, fmt: str) -> list[str]:
    if fmt == "parquet":
        return pq.ParquetFile(fs.open_input_file(path)).schema_arrow.names
    import pyarrow.csv as pacsv

    delimiter = "\t" if fmt == "tsv" else ","
    with fs.open_input_stream(path, compression="detect") as stream:
        reader = pacsv.open_csv(stream, parse_options=pacsv.ParseOptions(delimiter=delimiter))
        return reader.schema.names


def open_library(location: str, cfg: IndexConfig) -> Library:
    """Find the files of a library (file or folder, path or s3://) and its SMILES/id columns.

    Errors name what is wrong (missing, empty, unknown format, no SMILES column) before any
    distributed work starts.
    """
    fs, path = check_access(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"library not found: {location}")
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = sorted(
            (
                i
                for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                if i.is_file and _format_of(i.base_name)
            ),
            key=lambda i: i.path,
        )
    found = {_format_of(i.base_name) for i in infos}
    if not infos:
        raise ValueError(f"no CSV/TSV/Parquet/SMI files in library {location}")
    formats = {f for f in found if f is not None}
    if len(formats) != len(found) or not formats:
        raise ValueError(f"library {location}: unknown format (use .csv, .tsv, .parquet or .smi, optionally .gz)")
    if len(formats) > 1:
        raise ValueError(f"library {location} mixes formats {sorted(formats)}; give one format per library")
    fmt = formats.pop()
    smiles_column: str | None = "smiles"
    id_column: str | None = None
    if fmt != "smi":
        try:
            names = _schema_names(fs, infos[0].path, fmt)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"cannot read library {location} as {fmt}: {exc}") from None
        smiles_column = cfg.smiles_column or next((c for c in SMILES_CANDIDATES if c in names), None)
        if smiles_column is None or smiles_column not in names:
            raise ValueError(
                f"library {location} has no SMILES column {cfg.smiles_column or SMILES_CANDIDATES} "
                f"(columns: {names}); set --smiles-column"
            )
        id_column = cfg.id_column or next((c for c in ID_CANDIDATES if c in names), None)
        if id_column is not None and id_column not in names:
            raise ValueError(f"library {location} has no id column {id_column!r} (columns: {names})")
    digest = hashlib.sha256(location.rstrip("/").encode())
    for i in infos:
        digest.update(f"{i.path}:{i.size}".encode())
    return Library(location, [i.path for i in infos], fmt, str(smiles_column), id_column, digest.hexdigest()[:12], fs)


# -- the build -----------------------------------------------------------------------------
@dataclass
class IndexBuildResult:
    """What `build_index` did."""

    location: str
    rows: int  # rows in the index now
    added: int  # rows this call added
    already_indexed: int  # library rows skipped: their InChIKey was indexed before
    duplicates: int  # repeats of an InChIKey within what this call read
    quarantined: int
    quarantined_by_reason: dict[str, int]
    chunks_done: int  # chunks embedded by this call
    chunks_skipped: int  # chunks found complete (resume)
    ann: dict[str, dict[str, Any]]
    timings: dict[str, float]

    @property
    def molecules_per_second(self) -> float:
        return self.added / max(self.timings.get("embed_s", 0.0), 1e-9)


def _known_hashes(store: IndexStore, manifest: Manifest) -> np.ndarray:
    keys: list[str] = []
    for shard in manifest.shards:
        keys += (
            pq.read_table(store.path(shard.name), columns=["inchikey"], filesystem=store.fs)
            .column("inchikey")
            .to_pylist()
        )
    return np.sort(key_hashes(keys))


def _actors(cfg: IndexConfig) -> tuple[float, int]:
    """(GPUs per encoder actor, number of actors): one GPU each when the cluster has GPUs;
    by default one actor per GPU, or per `num_cpus_per_actor` CPUs on a CPU cluster."""
    import ray

    resources = ray.cluster_resources()
    gpus = cfg.num_gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
    if cfg.concurrency is not None:
        return gpus, cfg.concurrency
    if gpus > 0:
        return gpus, max(1, int(resources.get("GPU", 0) // gpus))
    return gpus, max(1, int(resources.get("CPU", 1) // max(cfg.num_cpus_per_actor, 1e-9)))


def _embed_stream(
    chunks: list[tuple[int, pa.Table]],
    model_blob: bytes,
    featurizer: dict,
    known: np.ndarray,
    cfg: IndexConfig,
    concurrency: int,
    num_gpus: float,
) -> Iterator[tuple[int, pa.Table]]:
    """Run chunks through one Ray Data pipeline (actors start once per group, not per chunk) and
    yield ``(chunk number, embedded rows)`` as soon as each chunk is complete, in order."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    blocks, expected = [], {}
    for number, chunk in chunks:
        expected[number] = chunk.num_rows
        tagged = chunk.append_column("chunk", pa.array(np.full(chunk.num_rows, number, np.int32)))
        step = cfg.featurize_batch_size
        blocks += [tagged.slice(s, step) for s in range(0, chunk.num_rows, step)]
    context = DataContext.get_current()
    previous = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # first occurrence of a key wins, deterministically
    try:
        ds: Any = ray.data.from_arrow(blocks)  # Ray's annotations do not follow map_batches' pyarrow batches
        ds = ds.map_batches(
            featurise_library,
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=1,
            fn_kwargs={"featurizer_config": featurizer, "known": known},
        )
        # On CPU, Ray fuses the featuriser into the encoder actors (no graph columns cross
        # processes); GPU actors stay a separate stage fed by CPU featurising tasks.
        ds = ds.map_batches(
            LibraryEncoder,
            batch_format="pyarrow",
            batch_size=cfg.encode_batch_size,
            compute=ActorPoolStrategy(size=concurrency),
            num_cpus=cfg.num_cpus_per_actor,
            num_gpus=num_gpus,
            fn_constructor_kwargs={
                "model_blob": model_blob,
                "use_gpu": num_gpus > 0,
                "num_cpus": cfg.num_cpus_per_actor,
            },
        )
        received: dict[int, list[pa.Table]] = {n: [] for n in expected}
        rows = dict.fromkeys(expected, 0)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            numbers = batch.column("chunk").to_numpy()
            for number in np.unique(numbers):
                part = batch.filter(pa.array(numbers == number))
                received[int(number)].append(part.drop_columns(["chunk"]))
                rows[int(number)] += part.num_rows
            for number in [n for n in received if rows[n] == expected[n]]:
                yield number, pa.concat_tables(received.pop(number))
    finally:
        context.execution_options.preserve_order = previous


def _groups(chunks: Iterator[tuple[int, pa.Table]], max_rows: int) -> Iterator[list[tuple[int, pa.Table]]]:
    group, size = [], 0
    for item in chunks:
        group.append(item)
        size += item[1].num_rows
        if size >= max_rows:
            yield group
            group, size = [], 0
    if group:
        yield group


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _model_source_info(source: str, tracking_uri: str | None) -> dict[str, Any]:
    """Name and version of a registered model reference (``models:/NAME@alias`` or ``/VERSION``)."""
    if not source.startswith("models:/"):
        return {}
    from mlflow.tracking import MlflowClient

    ref = source.removeprefix("models:/")
    client = MlflowClient(tracking_uri=tracking_uri)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        found = client.get_model_version_by_alias(name, alias)
        return {"name": name, "alias": alias, "version": str(found.version), "run_id": found.run_id}
    name, _, version = ref.partition("/")
    return {"name": name, "version": version}


def prepare_index(
    store: IndexStore, model_dir: Path, source: str, tracking_uri: str | None = None
) -> tuple[Manifest, Any, ACMLConfig]:
    """Open (or create) the index at `store` for the model in `model_dir`.

    A new index gets a copy of the model and a manifest; an existing one must have been built by
    the same model (`ModelMismatchError` otherwise: its vectors would mix two spaces).
    """
    from acml_ray import __version__
    from acml_ray.model.serialization import MODEL_FILE, load_model

    model, cfg, _ = load_model(model_dir)
    fingerprint = model_fingerprint(model, cfg)
    manifest = store.read_manifest()
    if manifest is not None:
        manifest.check_model(fingerprint, source)
        return manifest, model, cfg
    manifest = Manifest(
        model={
            "fingerprint": fingerprint,
            "source": source,
            "modalities": model.modalities,
            "embed_dim": model.embed_dim,
            "acml_ray_version": __version__,
            "registered": _model_source_info(source, tracking_uri),
        },
        featurizer=cfg.featurizer.model_dump(mode="json"),
    )
    store.write_bytes(f"model/{MODEL_FILE}", (Path(model_dir) / MODEL_FILE).read_bytes())
    store.write_manifest(manifest)
    return manifest, model, cfg


def _commit_chunk(
    store: IndexStore,
    manifest: Manifest,
    entry: dict,
    library_key: str,
    number: int,
    out: pa.Table,
    indexed_now: set[str],
    by_reason: dict[str, int],
    seconds: float = 0.0,
) -> dict[str, int]:
    """Write one embedded chunk as its shard (+ quarantine file), then the manifest (the commit)."""
    status = out.column("status").to_pylist()
    reasons = out.column("reason").to_pylist()
    keys = out.column("inchikey").to_pylist()
    keep = np.zeros(out.num_rows, dtype=bool)
    duplicates = 0
    for i, (s, key) in enumerate(zip(status, keys)):
        if s != "ok":
            continue
        if key in indexed_now:
            reasons[i], status[i] = f"duplicate InChIKey {key}", "bad"
            duplicates += 1
        else:
            indexed_now.add(key)
            keep[i] = True
    bad = np.array([s == "bad" for s in status], dtype=bool)
    n_known = sum(s == "known" for s in status)
    good = out.filter(pa.array(keep))
    good = good.set_column(
        good.schema.get_field_index("id"), "id", pc.coalesce(good.column("id"), good.column("inchikey"))
    )  # no id: the InChIKey
    good = good.select([*METADATA_COLUMNS, *(emb_column(m) for m in manifest.modalities)])
    quarantine_name = None
    if bad.any():
        quarantine = pa.table(
            {
                "id": out.column("id").filter(pa.array(bad)),
                "input": out.column("input").filter(pa.array(bad)),
                "reason": pa.array([r for r, b in zip(reasons, bad) if b], pa.string()),
            }
        )
        quarantine_name = f"quarantine/{library_key}-{number:05d}.parquet"
        store.write_bytes(quarantine_name, _parquet_bytes(quarantine))
        for r in quarantine.column("reason").to_pylist():
            kind = reason_kind(r)
            by_reason[kind] = by_reason.get(kind, 0) + 1
    if good.num_rows:
        name = f"shards/{library_key}-{number:05d}.parquet"
        store.write_bytes(name, _parquet_bytes(good))
        manifest.shards.append(
            ShardEntry(
                name=name,
                library=library_key,
                chunk=number,
                rows=good.num_rows,
                input_rows=out.num_rows,
                quarantined=int(bad.sum()),
                already_indexed=n_known,
                quarantine=quarantine_name,
                seconds=seconds,
            )
        )
    entry["chunks_done"] = sorted({*entry["chunks_done"], number})
    store.write_manifest(manifest)  # the commit point of this chunk
    return {"added": good.num_rows, "known": n_known, "duplicates": duplicates, "quarantined": int(bad.sum())}


def build_index(
    model_dir: str | Path,
    output: str,
    library: str | None,
    cfg: IndexConfig,
    source: str | None = None,
    tracking_uri: str | None = None,
    held_out: str | Path | None = None,
) -> IndexBuildResult:
    """Add `library` to the index at `output` (created when absent), then update the FAISS
    indexes and their calibrated nprobe; with ``library=None`` only the FAISS step runs (e.g.
    after an interrupted build, or to recalibrate under new ``index.target_recall`` settings).

    `held_out` is a table of the model's held-out inputs (default: the run folder's
    ``data/val.parquet`` when `model_dir` is a run's ``model`` folder): it calibrates modalities
    whose queries a structure does not give, such as spectra.

    Needs a connected Ray (`acml_ray.train.init_ray`) when there is a library to embed.
    """

    started = time.perf_counter()
    check_access(output, write=True)
    store = IndexStore(output)
    manifest, model, model_cfg = prepare_index(store, Path(model_dir), source or str(model_dir), tracking_uri)
    if held_out is None and Path(model_dir).name == "model":
        held_out = Path(model_dir).parent / "data" / "val.parquet"
    timings: dict[str, float] = {}
    counts = {"added": 0, "known": 0, "duplicates": 0, "quarantined": 0, "done": 0, "skipped": 0}
    by_reason: dict[str, int] = {}
    if library is not None:
        lib = open_library(library, cfg)
        entry = manifest.libraries.setdefault(
            lib.key, {"location": library, "chunk_rows": cfg.chunk_rows, "chunks_done": [], "complete": False}
        )
        if entry["chunk_rows"] != cfg.chunk_rows:
            raise ValueError(
                f"library {library} was started with index.chunk_rows={entry['chunk_rows']}; "
                f"resume it with the same value (got {cfg.chunk_rows})"
            )
        done = set(entry["chunks_done"])
        known = _known_hashes(store, manifest)
        model_blob = Path(model_dir, "model.pt").read_bytes()  # shipped: workers need no access to the file
        num_gpus, concurrency = _actors(cfg)
        _say(
            f"library {library} ({lib.fmt}, SMILES column {lib.smiles_column!r}, id column "
            f"{lib.id_column!r}); {manifest.rows} rows indexed; {len(done)} chunks of it done before; "
            f"encoder actors: {concurrency} x ({cfg.num_cpus_per_actor} CPU, {num_gpus} GPU)"
        )
        t_embed = time.perf_counter()
        pending = ((n, c) for n, c in enumerate(lib.chunks(cfg.chunk_rows)) if n not in done)
        indexed_now: set[str] = set()  # keys added by this call (the tasks only know `known`)
        for group in _groups(pending, cfg.rows_per_run):
            t = time.perf_counter()
            group_rows = sum(c.num_rows for _, c in group)
            last = t
            for number, out in _embed_stream(group, model_blob, manifest.featurizer, known, cfg, concurrency, num_gpus):
                now = time.perf_counter()
                stats = _commit_chunk(
                    store, manifest, entry, lib.key, number, out, indexed_now, by_reason, seconds=now - last
                )
                last = now
                for key, value in stats.items():
                    counts[key] += value
                counts["done"] += 1
                _say(
                    f"chunk {number}: {out.num_rows} rows -> {stats['added']} indexed, {stats['quarantined']} "
                    f"quarantined ({stats['duplicates']} duplicates), {stats['known']} already indexed; "
                    f"{manifest.rows} rows in the index"
                )
            _say(
                f"{group_rows} rows in {time.perf_counter() - t:.0f} s "
                f"({group_rows / (time.perf_counter() - t):.0f} rows/s)"
            )
        counts["skipped"] = len(done)
        timings["embed_s"] = time.perf_counter() - t_embed
        entry["complete"] = True
        store.write_manifest(manifest)
    t = time.perf_counter()
    ann = update_ann(store, manifest, cfg, CalibrationQueries(store, manifest, model, model_cfg, cfg, held_out))
    timings["ann_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    result = IndexBuildResult(
        location=output,
        rows=manifest.rows,
        added=counts["added"],
        already_indexed=counts["known"],
        duplicates=counts["duplicates"],
        quarantined=counts["quarantined"],
        quarantined_by_reason=dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        chunks_done=counts["done"],
        chunks_skipped=counts["skipped"],
        ann={
            m: {
                "kind": a.kind,
                "rows": a.rows,
                "nlist": a.nlist,
                "nprobe": a.nprobe,
                "recall": (a.calibration or {}).get("recall_at_nprobe"),
            }
            for m, a in ann.items()
        },
        timings=timings,
    )
    store.write_bytes("build-report.json", json.dumps(result.__dict__, indent=2, default=str).encode())
    return result


# -- FAISS -----------------------------------------------------------------------------------
def _shard_vectors(store: IndexStore, shard: ShardEntry, modality: str) -> np.ndarray:
    table = pq.read_table(store.path(shard.name), columns=[emb_column(modality)], filesystem=store.fs)
    column = table.column(0).combine_chunks()
    dim = column.type.list_size
    return np.asarray(column.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def default_nlist(rows: int) -> int:
    """4 * sqrt(rows) as a power of two (FAISS's guidance for IVF list counts), halved until every
    list gets at least 39 training rows (fewer leave k-means centroids poorly placed)."""
    nlist = 2 ** max(1, round(math.log2(4 * math.sqrt(max(rows, 1)))))
    while nlist > 1 and nlist * 39 > rows:
        nlist //= 2
    return nlist


def _training_sample(
    store: IndexStore, shards: list[ShardEntry], modality: str, size: int, seed: int = 0
) -> np.ndarray:
    """`size` rows drawn evenly over all shards (k-means needs the whole library's spread)."""
    rng = np.random.default_rng(seed)
    total = sum(s.rows for s in shards)
    parts = []
    for shard in shards:
        take = min(shard.rows, max(1, round(size * shard.rows / total)))
        vectors = _shard_vectors(store, shard, modality)
        parts.append(vectors[rng.choice(len(vectors), take, replace=False)])
    return np.concatenate(parts)


def update_ann(
    store: IndexStore, manifest: Manifest, cfg: IndexConfig, queries: CalibrationQueries
) -> dict[str, AnnEntry]:
    """Bring every modality's FAISS index up to the manifest's shards (see the module doc), then
    calibrate each IVF index's default nprobe (`acml_ray.search.calibrate`): after any update, and
    for an unchanged index when its calibration is missing or was made under other settings."""
    import faiss

    rows = manifest.rows
    settings = calibration_settings(cfg)
    uncalibrated: dict[str, AnnEntry] = {}
    for modality in manifest.modalities:
        current = manifest.ann.get(modality)
        if rows == 0:
            continue
        if current is not None and current.shards == len(manifest.shards):
            if current.kind == "ivf" and (current.calibration or {}).get("settings") != settings:
                path = str(store.local_copy(current.file, tempfile.gettempdir()))
                index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
                if not _calibrate(current, index, modality, cfg, queries, settings):
                    uncalibrated[modality] = current
                store.write_manifest(manifest)
            continue
        kind = "ivf" if rows >= cfg.ann_threshold else "flat"
        t = time.perf_counter()
        reuse = current is not None and current.kind == kind
        dim = int(manifest.model["embed_dim"])
        if reuse and current is not None:
            index = faiss.read_index(str(store.local_copy(current.file, tempfile.gettempdir())))
            start, nlist = current.shards, current.nlist
        elif kind == "flat":
            index, start, nlist = faiss.IndexFlatIP(dim), 0, None
        else:
            nlist = cfg.nlist or default_nlist(rows)
            sample = _training_sample(store, manifest.shards, modality, min(rows, nlist * cfg.train_per_list))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(sample)
            del sample
            start = 0
        for shard in manifest.shards[start:]:
            index.add(_shard_vectors(store, shard, modality))
        name = f"faiss/{modality}-{uuid.uuid4().hex[:12]}.faiss"
        if store.is_local:  # written in place, then renamed: no second copy of a large file
            target = Path(store.path(name))
            target.parent.mkdir(parents=True, exist_ok=True)
            faiss.write_index(index, str(target) + ".tmp")
            Path(str(target) + ".tmp").replace(target)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "index.faiss"
                faiss.write_index(index, str(local))
                store.upload(local, name)
        _say(
            f"{modality}: {kind} index over {rows} rows ({'added to' if reuse else 'built'}"
            f"{f', nlist {nlist}' if nlist else ''}) in {time.perf_counter() - t:.1f} s"
        )
        old = current.file if current is not None else None
        entry = AnnEntry(file=name, kind=kind, rows=rows, shards=len(manifest.shards), nlist=nlist)
        if kind == "ivf" and not _calibrate(entry, index, modality, cfg, queries, settings):
            uncalibrated[modality] = entry
        del index
        manifest.ann[modality] = entry
        store.write_manifest(manifest)
        if old and old != name:
            try:  # readers of the previous manifest keep an open (or cached) copy
                store.fs.delete_file(store.path(old))
            except OSError:
                log.warning("could not delete the replaced FAISS index %s", old)
    if uncalibrated:  # the largest nprobe any of this index's query modalities needed
        measured = [e.nprobe for e in manifest.ann.values() if e.nprobe and "recall" in (e.calibration or {})]
        fallback = cfg.nprobe or max([FALLBACK_NPROBE, *measured])
        for modality, entry in uncalibrated.items():
            entry.nprobe = min(fallback, int(entry.nlist or 1))
            reason = (entry.calibration or {}).get("uncalibrated")
            _say(f"{modality}: nprobe {entry.nprobe} (the largest calibrated here), uncalibrated: {reason}")
        store.write_manifest(manifest)
    return manifest.ann


def _calibrate(
    entry: AnnEntry, index: Any, modality: str, cfg: IndexConfig, queries: CalibrationQueries, settings: dict
) -> bool:
    """Set `entry`'s nprobe and calibration record from `modality`'s queries; False without any."""
    nprobe, record = calibrate(index, int(entry.nlist or 1), cfg, queries.get(modality))
    entry.calibration = {**record, "settings": settings}
    entry.nprobe = nprobe
    if nprobe is None:
        return False
    _say(
        f"{modality}: nprobe {nprobe} of {entry.nlist} lists gives recall@{record['top_k']} "
        f"{record['recall_at_nprobe']:.3f} vs exact search over {record['queries']} queries from "
        f"{record['source']} (target {record['target_recall']}; {record['seconds']:.1f} s)"
    )
    return True


def read_shard_metadata(store: IndexStore, manifest: Manifest) -> pa.Table:
    """The metadata columns of every row, in row (FAISS id) order."""
    parts = [
        pq.read_table(store.path(s.name), columns=list(METADATA_COLUMNS), filesystem=store.fs) for s in manifest.shards
    ]
    return pa.concat_tables(parts) if parts else pa.table({c: pa.array([], pa.string()) for c in METADATA_COLUMNS})


__all__ = [
    "IndexBuildResult",
    "Library",
    "LibraryEncoder",
    "build_index",
    "default_nlist",
    "emb_column",
    "featurise_library",
    "formula_and_mass",
    "key_hashes",
    "open_library",
    "prepare_index",
    "read_shard_metadata",
    "update_ann",
]
