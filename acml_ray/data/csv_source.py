"""CSV input that survives NUL bytes: pyarrow's reader, with NULs masked while it parses.

pyarrow 25's CSV parser switches to an SSE4.2 "bulk filter" once values run long; that filter
stops at a NUL byte, so a quote, comma or newline sharing 8 bytes with a NUL is skipped and
rows are mis-split: the file fails with ``Expected 2 columns, got 3`` or, worse, parses into
wrong rows (apache/arrow#50481, fixed after 25.0.1). Whether it triggers depends on where block
boundaries fall, so a file of valid RFC 4180 rows may read fine alone and fail beside others.

The fix here keeps pyarrow as the parser: each file is copied once to a spooled local file
while scanning for NUL bytes; a file with none is parsed as it is, a file with some is parsed
with every NUL replaced by a token absent from the file, and the token is turned back into
NUL in every text and binary column afterwards, so the rows hold exactly the bytes written
(NUL rows are then quarantined one by one by the featuriser's guard). The copy costs one local
write of each input file, small beside featurising its molecules.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator, Sequence
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from acml_ray.storage import resolve_filesystem

_CHUNK = 8 << 20  # bytes copied per read
_SPOOL = 8 << 20  # bytes kept in memory before the copy spills to a temporary file
_NUL = b"\x00"


def csv_read_options(text_columns: Sequence[str] = (), include_columns: Sequence[str] = ()) -> dict[str, Any]:
    """pyarrow CSV options of `acml embed`: the schema check and the reader both use them.

    RFC 4180 quoting (newlines inside quoted values); `text_columns` read as bytes, so that the
    featuriser decodes them row by row (one row in latin-1 is one quarantined row, never a
    failed file or a column of bytes); only `include_columns` are converted (others may hold
    anything).
    """
    return {
        "parse_options": pacsv.ParseOptions(newlines_in_values=True),
        "convert_options": pacsv.ConvertOptions(
            column_types={c: pa.binary() for c in text_columns}, include_columns=list(include_columns)
        ),
    }


def _spool(stream: Any) -> tuple[IO[bytes], bool]:
    """`stream` copied to a spooled local file, and whether it holds a NUL byte."""
    copy: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL)
    has_nul = False
    while chunk := stream.read(_CHUNK):
        has_nul = has_nul or _NUL in chunk
        copy.write(chunk)
    copy.seek(0)
    return copy, has_nul


def _masked(copy: IO[bytes]) -> tuple[IO[bytes], bytes]:
    """`copy` with every NUL replaced by a token that occurs nowhere in it (checked while
    copying, across chunk edges too; a new token on the astronomically rare clash)."""
    while True:
        token = b"\x1a" + secrets.token_hex(12).encode() + b"\x1a"  # no CSV-special byte
        masked: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL)
        tail, clash = b"", False
        copy.seek(0)
        while not clash and (chunk := copy.read(_CHUNK)):
            clash = token in tail + chunk
            tail = chunk[-(len(token) - 1) :]
            masked.write(chunk.replace(_NUL, token))
        if not clash:
            masked.seek(0)
            return masked, token
        masked.close()


def _unmask(table: pa.Table, token: bytes) -> pa.Table:
    """`table` with `token` turned back into NUL in every text and binary column."""
    columns = []
    for column in table.columns:
        if pa.types.is_binary(column.type) or pa.types.is_string(column.type):
            pattern: bytes | str = token if pa.types.is_binary(column.type) else token.decode()
            replacement: bytes | str = _NUL if pa.types.is_binary(column.type) else "\x00"
            column = pc.replace_substring(column, pattern=pattern, replacement=replacement)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=table.schema)


def iter_csv_tables(
    stream: Any,
    read_options: pacsv.ReadOptions | None = None,
    parse_options: pacsv.ParseOptions | None = None,
    convert_options: pacsv.ConvertOptions | None = None,
) -> Iterator[pa.Table]:
    """Tables of one CSV stream (a binary file object), batch by batch, NUL bytes kept exactly.

    `pyarrow.ArrowInvalid` for a file that is not valid CSV (e.g. a row with the wrong number
    of columns), as pyarrow's own reader.
    """
    source, has_nul = _spool(stream)
    try:
        token = None
        if has_nul:
            plain = source
            source, token = _masked(plain)
            plain.close()
        reader = pacsv.open_csv(
            pa.PythonFile(source, mode="r"),
            read_options=read_options or pacsv.ReadOptions(use_threads=False),
            parse_options=parse_options,
            convert_options=convert_options,
        )
        for batch in reader:
            table = pa.Table.from_batches([batch])
            yield _unmask(table, token) if token else table
    finally:
        source.close()


def read_csv_stream(stream: Any, **options: Any) -> pa.Table:
    """A whole CSV stream as one table, NUL bytes kept exactly (see module doc); `options` as
    `iter_csv_tables`."""
    tables = list(iter_csv_tables(stream, **options))
    if not tables:
        raise pa.ArrowInvalid("empty CSV file")
    return pa.concat_tables(tables)


def read_csv_table(location: str, **options: Any) -> pa.Table:
    """One CSV file (path or ``s3://`` URI, compression detected) as one table (see `read_csv_stream`)."""
    fs, path = resolve_filesystem(location)
    with fs.open_input_stream(path, compression="detect") as stream:
        try:
            return read_csv_stream(stream, **options)
        except pa.ArrowInvalid as exc:
            raise pa.ArrowInvalid(f"{location}: {exc}") from None


def read_csv_dataset(
    paths: str | list[str],
    filesystem: pafs.FileSystem | None,
    text_columns: Sequence[str] = (),
    include_columns: Sequence[str] = (),
    file_extensions: Sequence[str] = ("csv", "gz"),
    ray_remote_args: dict[str, Any] | None = None,
) -> Any:
    """A Ray dataset over CSV files read with `iter_csv_tables` (Ray's `read_csv` minus the NUL bug)."""
    import ray
    from ray.data.datasource import FileBasedDatasource

    options = csv_read_options(text_columns, include_columns)

    class NulSafeCSVDatasource(FileBasedDatasource):
        """Ray's CSV datasource with the parse of `iter_csv_tables`."""

        _FILE_EXTENSIONS = list(file_extensions)

        def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
            try:
                yield from iter_csv_tables(f, **options)
            except pa.ArrowInvalid as exc:
                raise ValueError(f"cannot read {path} as CSV: {exc}") from None

    datasource = NulSafeCSVDatasource(paths, filesystem=filesystem, file_extensions=list(file_extensions))
    return ray.data.read_datasource(datasource, ray_remote_args=ray_remote_args or {})


__all__ = ["csv_read_options", "iter_csv_tables", "read_csv_dataset", "read_csv_stream", "read_csv_table"]
