"""The registered ACML encoder as an MLflow pyfunc: SMILES in, embeddings out.

Input: a DataFrame with a ``smiles`` column. Output: one row per input row, in order, with

- ``graph_embedding``: the raw graph-encoder output (what property models should consume),
- ``<modality>_embedding``: the graph projected into that modality's joint space (what
  cross-modal retrieval compares with the modality side, by cosine similarity),
- ``canonical_smiles`` and ``inchikey`` of the parsed molecule,
- ``error``: null for embedded rows, else why the row got no embedding (unparsable SMILES, too
  many heavy atoms, ...); such rows have null embeddings and never fail the batch. Rows are
  parsed through the featuriser's bounded guard (`acml_ray.chem.guard`): a hostile row (100,000
  characters, a NUL byte) costs milliseconds and its own `error`, never the worker (serving with
  several workers and a timeout: docs/cluster.md).

Embeddings are lists of floats in a single column each (not one column per dimension): the widths
differ per model, `mlflow models serve` returns them as JSON arrays, and ``np.stack(df[col])``
gives a matrix. Only the trainable graph side is needed, so serving never loads a frozen encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

# Imported by name: mypy reads the attribute `mlflow.pyfunc` as mlflow's LazyLoader, not the module.
from mlflow.pyfunc import PythonModel, PythonModelContext

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

    from acml_ray.config import ACMLConfig
    from acml_ray.model.acml import ACMLModel

SMILES_COLUMN = "smiles"
GRAPH_COLUMN = "graph_embedding"
ERROR_COLUMN = "error"
ID_COLUMNS = ("canonical_smiles", "inchikey")
MODEL_ARTIFACT = "acml_model"  # artifacts key: the folder holding model.pt
INPUT_EXAMPLE = pd.DataFrame({SMILES_COLUMN: ["CC(=O)Oc1ccccc1C(=O)O", "C[C@H](N)C(=O)O", "not a smiles"]})


def modality_column(modality: str) -> str:
    """Output column of the joint-space embedding for `modality`."""
    return f"{modality}_embedding"


def output_columns(modalities: Sequence[str]) -> list[str]:
    """Output columns, in order, of a model with these modalities."""
    return [GRAPH_COLUMN, *(modality_column(m) for m in modalities), *ID_COLUMNS, ERROR_COLUMN]


def embed_smiles(model: ACMLModel, cfg: ACMLConfig, smiles: Sequence[Any], batch_size: int = 256) -> pd.DataFrame:
    """Embed SMILES with a loaded model -> DataFrame of `output_columns` (see the module doc).

    The featuriser applies the run's own molecule filter, so a molecule the model was never
    allowed to see in training is reported in ``error`` instead of being embedded.
    """
    import torch
    from torch_geometric.data import Batch

    from acml_ray.chem import GraphFeaturizer, Rejected

    results = GraphFeaturizer(cfg.featurizer).featurize_batch(list(smiles))
    n = len(results)
    columns: dict[str, list] = {c: [None] * n for c in output_columns(model.modalities)}
    ok = [(i, r) for i, r in enumerate(results) if not isinstance(r, Rejected)]
    for i, r in enumerate(results):
        if isinstance(r, Rejected):
            columns[ERROR_COLUMN][i] = r.reason
        else:
            columns["canonical_smiles"][i], columns["inchikey"][i] = r.smiles, r.inchikey
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ok), batch_size):
            chunk = ok[start : start + batch_size]
            rows = [i for i, _ in chunk]
            batch = Batch.from_data_list([graph.to_pyg() for _, graph in chunk])
            # Encode once, project per modality (project_graph would re-run the GIN each time).
            raw = model.encode_graph(batch)
            outputs = {GRAPH_COLUMN: raw} | {
                modality_column(m): model.graph_projections[m](raw) for m in model.modalities
            }
            for column, tensor in outputs.items():
                for i, vector in zip(rows, tensor.float().cpu().numpy()):
                    columns[column][i] = vector.tolist()
    # object dtype keeps None as None (pandas' string dtype would turn it into NaN, which is not JSON).
    return pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in columns.items()})


def model_signature(modalities: Sequence[str]) -> ModelSignature:
    """Explicit signature: ``smiles`` string in; float arrays, ids and ``error`` out (nullable)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema, TensorSpec

    outputs: list[ColSpec | TensorSpec] = [ColSpec(Array(DataType.float), GRAPH_COLUMN, required=False)]
    outputs += [ColSpec(Array(DataType.float), modality_column(m), required=False) for m in modalities]
    outputs += [ColSpec(DataType.string, c, required=False) for c in (*ID_COLUMNS, ERROR_COLUMN)]
    return ModelSignature(inputs=Schema([ColSpec(DataType.string, SMILES_COLUMN)]), outputs=Schema(outputs))


class ACMLEmbedder(PythonModel):
    """MLflow pyfunc wrapper; the weights are the ``acml_model`` artifact (a `save_model` folder)."""

    def load_context(self, context: PythonModelContext) -> None:
        from acml_ray.model.serialization import load_model

        self.model, self.cfg, self.extra = load_model(context.artifacts[MODEL_ARTIFACT])

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        if isinstance(model_input, pd.Series):
            model_input = model_input.to_frame(SMILES_COLUMN)
        if SMILES_COLUMN not in model_input.columns:
            raise ValueError(f"input needs a {SMILES_COLUMN!r} column, got {list(model_input.columns)}")
        return embed_smiles(self.model, self.cfg, model_input[SMILES_COLUMN].tolist())
