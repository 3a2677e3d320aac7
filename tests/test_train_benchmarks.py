"""The training-input benchmark's contenders do the work they claim, on real molecules (no
timings, no Ray): both collations build the same graphs, the replicated tables hold the rows
asked for, in several files, and both throughput contenders read the same molecules."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

input_bench = pytest.importorskip("benchmarks.train_input")


def test_train_input_contenders_collate_the_same_real_rows(tmp_path) -> None:
    graphs, table = input_bench.real_rows(80, dim=32)
    assert len(graphs) == table.num_rows == 80
    assert table.schema.field("x").type.value_type.bit_width == 8  # the embed pipeline's layout
    rates = input_bench.bench_collate(graphs, table, batch_size=16, repeats=1)  # asserts equal graphs
    assert all(rate > 0 for rate in rates.values())
    train, val = input_bench.write_tables(table, rows=10_000, out=tmp_path / "data", n_val=16)
    assert pq.ParquetDataset(train).read(columns=["num_atoms"]).num_rows == 10_000
    assert len(list(Path(train).glob("*.parquet"))) == 3  # 4096 rows per file
    assert pq.read_table(val).num_rows == 16


def test_train_throughput_reference_sees_the_training_table(tmp_path) -> None:
    throughput = pytest.importorskip("benchmarks.train_throughput")
    train, _, graphs, vectors = throughput.make_tables(tmp_path, 100, 64)
    keys = pq.read_table(train, columns=["inchikey"])["inchikey"].to_pylist()
    assert [g.inchikey for g in graphs] == keys and vectors.shape == (len(keys), 64)
