"""Search queries from what users have: SMILES, spectrum files, pictures, folders or tables.

A query argument is, in this order of precedence:

- a folder: every (non-hidden) file in it, sorted, read as below;
- a table (``.csv``, ``.tsv``, ``.parquet``): one query per row, the raw input in the column
  named after the modality's input (``smiles``, ``image``, ``nmr13c``, ``nmr1h``, ``ms``) or
  ``query``; optional ``query_id`` / ``id``, ``formula``, ``mass`` and ``tol`` columns give each
  row its own name and filter (a picture path in a table is relative to the table's folder);
- a file: ``.smi``/``.txt`` SMILES lines (``SMILES [name]``) for text modalities, an image for
  ``image``, a JCAMP-DX or JSON peak list for NMR, an MGF/MSP/mzML/JSON spectrum library for
  ``ms`` (each spectrum one query);
- anything else: a literal SMILES (text modalities) or JSON peak list (spectra).

Reading never raises for one bad query: it becomes a `QueryError` with the reason and the other
queries go on. Preprocessing (`preprocess_query`) does the same per query.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acml_ray.chem.errors import InvalidInputError
from acml_ray.modalities import Modality
from acml_ray.search.filters import CandidateFilter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
MS_SUFFIXES = (".mgf", ".msp", ".mzml", ".mzxml", ".json")


@dataclass
class Query:
    """One search query: a name, the raw input of its modality and its candidate filter."""

    query_id: str
    raw: Any
    filter: CandidateFilter = CandidateFilter()


@dataclass
class QueryError:
    """A query that could not be read or preprocessed, and why (one line)."""

    query_id: str
    error: str


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _row_filter(row: dict, default: CandidateFilter) -> CandidateFilter:
    formula = row.get("formula")
    mass = row.get("mass")
    tol = row.get("tol")
    return CandidateFilter(
        formula=default.formula if _is_missing(formula) else str(formula),
        mass=default.mass if mass is None or _is_missing(mass) else float(mass),
        tol=default.tol if tol is None or _is_missing(tol) else float(tol),
    )


def _read_table(path: Path) -> list[dict]:
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=object)
    return frame.to_dict("records")


def table_queries(
    rows: list[dict], modality: Modality, default: CandidateFilter, name: str = "row", base: Path | None = None
) -> tuple[list[Query], list[QueryError]]:
    """Queries from table rows (see the module doc for the columns)."""
    queries: list[Query] = []
    errors: list[QueryError] = []
    columns = set(rows[0]) if rows else set()
    column = (
        modality.input_column
        if modality.input_column in columns
        else (modality.name if modality.name in columns else "query")
    )
    for i, row in enumerate(rows):
        qid = row.get("query_id", row.get("id"))
        qid = f"{name}:{i}" if _is_missing(qid) else str(qid)
        if column not in row:
            errors.append(
                QueryError(qid, f"no {modality.input_column!r} or 'query' column (columns: {sorted(columns)})")
            )
            continue
        raw = row[column]
        if _is_missing(raw) or (isinstance(raw, str) and not raw.strip()):
            errors.append(QueryError(qid, f"empty {column!r} cell"))
            continue
        if modality.name == "image" and isinstance(raw, str) and base is not None and not raw.startswith("data:"):
            raw = base / raw
        try:
            queries.append(Query(qid, raw, _row_filter(row, default)))
        except ValueError as exc:
            errors.append(QueryError(qid, str(exc)))
    return queries, errors


def _file_queries(path: Path, modality: Modality, default: CandidateFilter) -> tuple[list[Query], list[QueryError]]:
    suffix = path.suffix.lower()
    qid = str(path)
    if suffix in TABLE_SUFFIXES and not (modality.name == "ms" and suffix == ".json"):
        try:
            rows = _read_table(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable table is one error line
            return [], [QueryError(qid, f"unreadable table: {type(exc).__name__}: {exc}")]
        if not rows:
            return [], [QueryError(qid, "empty table")]
        return table_queries(rows, modality, default, name=path.name, base=path.parent)
    if modality.name == "image":
        return [Query(qid, path, default)], []
    if suffix in IMAGE_SUFFIXES:  # the usual mix-up: a picture handed to a spectrum or text modality
        return [], [QueryError(qid, f"a picture is not a {modality.name} input (wrong modality? use --modality image)")]
    if suffix in (".mgf", ".msp", ".mzml", ".mzxml") and modality.name != "ms":
        return [], [
            QueryError(qid, f"a mass-spectrum file is not a {modality.name} input (wrong modality? use --modality ms)")
        ]
    if modality.name == "ms":
        return _spectrum_file_queries(path, default)
    if modality.input_column == "smiles":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            return [], [QueryError(qid, "not a SMILES text file (binary content)")]
        queries = []
        for n, line in enumerate(lines):
            parts = line.strip().split(maxsplit=1)
            if parts and not parts[0].startswith("#"):
                queries.append(Query(parts[1] if len(parts) > 1 else f"{path.name}:{n + 1}", parts[0], default))
        return (queries, []) if queries else ([], [QueryError(qid, "no SMILES in the file")])
    if suffix == ".json":
        try:
            return [Query(qid, json.loads(path.read_text()), default)], []
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return [], [QueryError(qid, f"unreadable JSON peak list: {exc}")]
    return [Query(qid, str(path), default)], []  # JCAMP-DX and other spectrum files: read by the modality


def _spectrum_file_queries(path: Path, default: CandidateFilter) -> tuple[list[Query], list[QueryError]]:
    from acml_ray.data.spectra import load_spectrum_file  # matchms readers by file suffix

    try:
        spectra = load_spectrum_file(path)
    except Exception as exc:  # noqa: BLE001 - matchms raises many kinds on malformed files
        return [], [QueryError(str(path), f"unreadable spectrum file: {type(exc).__name__}: {exc}")]
    queries, errors = [], []
    for i, spectrum in enumerate(spectra):
        qid = f"{path.name}:{i}"
        if spectrum is None:
            errors.append(QueryError(qid, "unreadable spectrum"))
            continue
        title = spectrum.get("compound_name") or spectrum.get("title")
        queries.append(Query(f"{qid} {title}" if title else qid, spectrum, default))
    if not spectra:
        errors.append(QueryError(str(path), "no spectra in the file"))
    return queries, errors


def read_queries(
    arguments: list[Any], modality: Modality, default: CandidateFilter | None = None
) -> tuple[list[Query], list[QueryError]]:
    """Queries from CLI-style arguments (paths, folders, tables or literals; see the module doc)."""
    default = default or CandidateFilter()
    queries: list[Query] = []
    errors: list[QueryError] = []
    for argument in arguments:
        if not isinstance(argument, (str, Path)):  # in-memory inputs (Python API): taken as they are
            queries.append(Query(f"query:{len(queries) + len(errors)}", argument, default))
            continue
        text = str(argument)
        path = Path(text).expanduser()
        looks_literal = text.lstrip().startswith(("[", "{")) or (
            modality.input_column == "smiles" and "/" not in text and not path.suffix
        )
        if not looks_literal and path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                errors.append(QueryError(text, "empty folder"))
            for file in files:
                q, e = _file_queries(file, modality, default)
                queries += q
                errors += e
        elif not looks_literal and path.is_file():
            q, e = _file_queries(path, modality, default)
            queries += q
            errors += e
        elif modality.input_column == "smiles" or text.lstrip().startswith(("[", "{")):
            queries.append(Query(text if len(text) <= 80 else text[:77] + "...", text, default))
        else:
            errors.append(QueryError(text, "no such file or folder"))
    return queries, errors


def picture_tensor(modality: Modality, picture: Any) -> torch.Tensor:
    """A picture of a structure (PIL image, file path, bytes or a ``data:image/...;base64,`` URI)
    prepared as the image modality prepares its depictions: transparency flattened onto white,
    padded to a white square (depictions are square, black on white), resized to the
    modality's `image_size`, ImageNet-normalised."""
    import base64
    import io

    from PIL import Image, UnidentifiedImageError

    from acml_ray.modalities.image import IMAGENET_MEAN, IMAGENET_STD

    try:
        if isinstance(picture, str) and picture.startswith("data:"):
            picture = base64.b64decode(picture.split(",", 1)[1], validate=True)
        if isinstance(picture, (bytes, bytearray)):
            picture = Image.open(io.BytesIO(picture))
        elif not isinstance(picture, Image.Image):
            picture = Image.open(picture)
        picture.load()
    except FileNotFoundError:
        raise InvalidInputError(f"no such image file: {picture}") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InvalidInputError(f"unreadable image: {exc}") from None
    if picture.mode in ("RGBA", "LA", "P", "PA"):
        picture = picture.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", picture.size, (255, 255, 255, 255)), picture)
    picture = picture.convert("RGB")
    side = max(picture.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
    size = int(getattr(modality, "image_size", 224))
    if square.size != (size, size):
        square = square.resize((size, size), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.array(square, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    return (pixels - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def model_modality(model_cfg: Any, name: str) -> Modality:
    """The frozen encoder of modality `name`, built with the options a model's config gave it."""
    from acml_ray.modalities import build_modality

    options: dict[str, Any] = next((m.options for m in model_cfg.modalities if m.name == name), {})
    return build_modality(name, options)


@torch.no_grad()
def project_frozen(model: Any, name: str, frozen: torch.Tensor) -> np.ndarray:
    """Frozen-encoder outputs of modality `name` -> `model`'s joint space, L2-normalised, float32."""
    model.eval()
    projected = model.project_modality(frozen.float(), name)
    return torch.nn.functional.normalize(projected, dim=-1).cpu().numpy().astype(np.float32)


@torch.no_grad()
def embed_queries(
    model: Any, modality: Modality, name: str, tensors: list[torch.Tensor], batch_size: int = 32
) -> np.ndarray:
    """Joint-space, L2-normalised vectors of preprocessed query inputs: the frozen encoder of
    modality `name`, then `model`'s projection of that modality -> float32 ``[len(tensors), dim]``."""
    if not tensors:
        return np.zeros((0, model.embed_dim), np.float32)
    out = [
        project_frozen(model, name, modality.encode_tensors(torch.stack(tensors[start : start + batch_size])))
        for start in range(0, len(tensors), batch_size)
    ]
    return np.concatenate(out)


def preprocess_query(modality: Modality, raw: Any) -> torch.Tensor:
    """The encoder input of one query; raises `InvalidInputError` with a reason.

    SMILES queries are canonicalised first, as the library's SMILES were when the model trained.
    """
    if modality.name == "image":
        return picture_tensor(modality, raw)
    if modality.input_column == "smiles":
        from acml_ray.chem import canonical_identity

        raw = canonical_identity(raw)[0]
    return modality.preprocess_one(raw)
