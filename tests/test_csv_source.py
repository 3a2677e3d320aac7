"""The CSV reader keeps every byte of valid RFC 4180 rows, NUL bytes included.

pyarrow 25's parser mis-splits rows once its SIMD bulk filter is on (after a first chunk of
16,384 rows with values longer than a few bytes) and a NUL shares 8 bytes with a quote
(apache/arrow#50481); `acml_ray.data.csv_source` masks NULs while pyarrow parses.
"""

from __future__ import annotations

import gzip
import io

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from acml_ray.data.csv_source import csv_read_options, iter_csv_tables, read_csv_table

ASPIRIN = b"CC(=O)Oc1ccccc1C(=O)O"


def _csv(rows: list[tuple[bytes, bytes]]) -> bytes:
    return b"id,smiles\n" + b"".join(i + b',"' + s.replace(b'"', b'""') + b'"\n' for i, s in rows)


def _rows_after_a_long_first_chunk() -> list[tuple[bytes, bytes]]:
    """17,000 real SMILES (the first chunk turns pyarrow's bulk filter on), then NUL rows."""
    rows = [(b"m%d" % i, ASPIRIN) for i in range(17000)]
    rows += [(b"nul-%d" % i, b"C" * (i % 8) + b"\x00CO") for i in range(40)]  # every word offset
    rows += [(b"latin", b"C\xe9C"), (b"quoted", b'C"C'), (b"newline", b"C\nC"), (b"last", b"CCO")]
    return rows


def test_rows_with_nul_bytes_come_back_exactly():
    rows = _rows_after_a_long_first_chunk()
    options = csv_read_options(["id", "smiles"], ["id", "smiles"])
    table = pa.concat_tables(list(iter_csv_tables(io.BytesIO(_csv(rows)), **options)))
    assert table.column("id").to_pylist() == [i for i, _ in rows]
    assert table.column("smiles").to_pylist() == [s for _, s in rows]


def test_pyarrow_alone_mis_splits_the_same_file():
    """Why the module exists; if a pyarrow upgrade fixes the bug this test says so (then the
    masking can go, see the module doc)."""
    rows = _rows_after_a_long_first_chunk()
    try:
        table = pacsv.read_csv(io.BytesIO(_csv(rows)), **csv_read_options(["id", "smiles"], ["id", "smiles"]))
    except pa.ArrowInvalid as exc:
        assert "Expected 2 columns" in str(exc)
    else:
        assert table.column("smiles").to_pylist() != [s for _, s in rows]


def test_text_columns_of_inferred_type_are_unmasked_too(tmp_path):
    """A column read as string (not one of the binary text columns) gets its NULs back as well."""
    path = tmp_path / "library.csv.gz"
    body = b"id,smiles,note\n" + b"".join(b'%d,"%s","a\x00b"\n' % (i, ASPIRIN) for i in range(20000))
    path.write_bytes(gzip.compress(body))
    table = read_csv_table(str(path), **csv_read_options(["smiles"], ["id", "smiles", "note"]))
    assert table.num_rows == 20000
    assert table.schema.field("note").type == pa.string() and set(table.column("note").to_pylist()) == {"a\x00b"}
    assert table.column("id").to_pylist()[-1] == 19999  # inferred int64, untouched


def test_malformed_csv_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,smiles\nm1,CCO\nm2,CCO,extra\n")
    with pytest.raises(pa.ArrowInvalid, match="Expected 2 columns, got 3"):
        read_csv_table(str(path))
