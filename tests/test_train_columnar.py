"""Columnar collation (`acml_ray.data.columnar.collate`) on real molecules: the same graphs as
PyG's `Batch.from_data_list`, from both table layouts (the embed pipeline's narrow int8/int32
lists and `build_table`'s int64 lists), sliced and multi-chunk tables, modality vectors and
masks; inconsistent rows rejected with their id and column. No Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch_geometric.data import Batch

from acml_ray.chem import GraphFeaturizer, MolGraph
from acml_ray.chem.featurizer import row_arrow_schema
from acml_ray.data.columnar import ColumnarError, collate, input_columns
from acml_ray.data.paired import build_table

ATTRS = ("x", "edge_index", "edge_attr", "batch", "ptr")


@pytest.fixture(scope="module")
def molecules(chembl_drugs):
    graphs = [
        g for g in GraphFeaturizer().featurize_batch(chembl_drugs["smiles"].tolist()[:300]) if isinstance(g, MolGraph)
    ][:200]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(graphs), 24)).astype(np.float32)
    has = rng.random(len(graphs)) > 0.3
    wide = build_table(graphs, {"fp": (vectors, has)})  # int64 lists
    narrow = pa.Table.from_pylist([g.to_row() for g in graphs], schema=row_arrow_schema())  # embed's layout
    narrow = narrow.append_column("emb__fp", wide["emb__fp"]).append_column("has__fp", wide["has__fp"])
    return graphs, vectors, has, wide, narrow


def _assert_same_graphs(batch, graphs):
    reference = Batch.from_data_list([g.to_pyg() for g in graphs])
    for name in ATTRS:
        assert torch.equal(getattr(batch, name), getattr(reference, name)), name
        assert getattr(batch, name).dtype == torch.long, name
    assert batch.num_graphs == len(graphs)


@pytest.mark.parametrize("layout", ["wide", "narrow"])
def test_collate_equals_from_data_list_on_real_molecules(molecules, layout):
    graphs, vectors, has, wide, narrow = molecules
    table = wide if layout == "wide" else narrow
    rows = table.slice(37, 91)  # a slice: Arrow offsets do not start at 0
    batch, inputs = collate(rows, ["fp"])
    _assert_same_graphs(batch, graphs[37:128])
    assert set(inputs) == {"fp", "fp__mask"}
    assert torch.equal(inputs["fp"], torch.from_numpy(vectors[37:128]))
    assert torch.equal(inputs["fp__mask"], torch.from_numpy(has[37:128]))
    # Built like from_data_list: the graphs come back out one by one.
    back = batch.to_data_list()
    assert len(back) == 91 and torch.equal(back[10].edge_index, graphs[47].to_pyg().edge_index)


def test_collate_multi_chunk_tables_graphs_only_and_ids(molecules):
    graphs, vectors, _, _, narrow = molecules
    table = pa.concat_tables([narrow.slice(0, 10), narrow.slice(10, 5), narrow.slice(15, 17)])
    assert table.column("x").num_chunks == 3
    batch, inputs = collate(table)  # graphs only: what batch inference over a library needs
    _assert_same_graphs(batch, graphs[:32])
    assert inputs == {}
    record_batch = narrow.slice(0, 8).to_batches()[0]
    collated = collate(record_batch, ["fp"], with_ids=True)
    assert collated.ids.to_pylist() == [g.inchikey for g in graphs[:8]] and len(collated) == 8
    _assert_same_graphs(collated.graphs, graphs[:8])
    assert input_columns(["fp"], narrow.column_names) == [
        "num_atoms",
        "num_edges",
        "x",
        "edge_index",
        "edge_attr",
        "emb__fp",
        "has__fp",
        "inchikey",
    ]


def _replace(table: pa.Table, name: str, row: int, value) -> pa.Table:
    values = table.column(name).to_pylist()
    values[row] = value
    return table.set_column(table.column_names.index(name), name, pa.array(values, table.schema.field(name).type))


@pytest.mark.parametrize(
    "column, change, message",
    [
        ("x", lambda v: v[:-7], r"column 'x' holds \d+ values, expected num_atoms x 7"),
        ("x", lambda v: v + [0], r"column 'x' holds"),
        ("edge_index", lambda v: v[:-2], r"column 'edge_index' holds \d+ values, expected 2 x num_edges"),
        ("edge_attr", lambda v: v[:-4], r"column 'edge_attr' holds"),
        ("edge_index", lambda v: [v[0] + 40] + v[1:], r"column 'edge_index' names atom \d+ of a graph with num_atoms"),
        ("edge_index", lambda v: [-1] + v[1:], r"column 'edge_index' names atom -1"),
        ("num_atoms", lambda v: v + 1, r"column 'x' holds"),
        ("x", lambda v: None, r"column 'x' is null"),
    ],
)
def test_inconsistent_rows_are_rejected_with_id_and_column(molecules, column, change, message):
    graphs, _, _, _, narrow = molecules
    rows = narrow.slice(0, 20)
    bad = _replace(rows, column, 13, change(rows.column(column)[13].as_py()))
    with pytest.raises(ColumnarError, match=message) as err:
        collate(bad, ["fp"])
    assert f"inchikey {graphs[13].inchikey!r}" in str(err.value)


def test_missing_embedding_only_where_the_mask_allows_it(molecules):
    graphs, vectors, has, _, narrow = molecules
    rows = narrow.slice(0, 20)
    missing, present = int(np.flatnonzero(~has[:20])[0]), int(np.flatnonzero(has[:20])[0])
    emb = rows.column("emb__fp").combine_chunks()
    nulls = [i in (missing,) for i in range(20)]
    with_null = pa.FixedSizeListArray.from_arrays(emb.values, 24, mask=pa.array(nulls))
    ok = rows.set_column(rows.column_names.index("emb__fp"), "emb__fp", with_null)
    _, inputs = collate(ok, ["fp"])
    assert torch.all(inputs["fp"][missing] == 0) and not inputs["fp__mask"][missing]
    assert torch.equal(inputs["fp"][present], torch.from_numpy(vectors[present]))
    wrong = pa.FixedSizeListArray.from_arrays(emb.values, 24, mask=pa.array([i == present for i in range(20)]))
    bad = rows.set_column(rows.column_names.index("emb__fp"), "emb__fp", wrong)
    with pytest.raises(ColumnarError, match=rf"{graphs[present].inchikey}.*'emb__fp' is null where 'has__fp' is true"):
        collate(bad, ["fp"])
    with pytest.raises(ColumnarError, match="no column 'emb__other'"):
        collate(rows, ["other"])


def test_validation_score_is_the_mrr_and_does_not_saturate_with_top_k(molecules):
    """`val/score` (what picks the best checkpoint and stops training) is the mean reciprocal rank
    at the pool size: at a pool smaller than max(top_k) every top-k is 1.0 for any model, yet the
    score still tells a model that ranks the true graph first from one that does not."""
    from acml_ray.config import ACMLConfig
    from acml_ray.model import ACMLModel
    from acml_ray.train.loop import SCORE_METRIC, validate

    graphs, vectors, has, wide, _ = molecules
    cfg = ACMLConfig.model_validate(
        {
            "graph_encoder": {"num_layers": 2, "hidden_dim": 16},
            "projection": {"dims": [8]},
            "modalities": [{"name": "fp"}],
            "eval": {"pool_size": 8, "top_k": [1, 10]},
        }
    )
    torch.manual_seed(0)
    model = ACMLModel.from_config(cfg, {"fp": 24})
    batches = [collate(wide.slice(i, 50), ["fp"], with_ids=True) for i in range(0, wide.num_rows, 50)]
    metrics = validate(model, batches, cfg, torch.device("cpu"))
    prefix = "val/fp->graph/pool_8"
    assert metrics[f"{prefix}/top10"] == 1.0  # saturated by construction
    assert metrics[SCORE_METRIC] == metrics[f"{prefix}/mrr"] < 1.0
    assert metrics[f"{prefix}/top1"] <= metrics[SCORE_METRIC]
