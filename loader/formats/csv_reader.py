"""Streaming RFC 4180 reading of partner CSV files into Arrow batches.

One parser (pyarrow's, single-threaded so ragged records keep their position)
serves both verification (record counts while hashing) and landing (all-text
batches with lineage), so the two can never disagree on what a record is.
Memory stays flat: files are read block by block.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from loader.contracts import Entity
from loader.formats.header import CsvFileError, Header

BLOCK_SIZE = 4 << 20
LINEAGE_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("_file_id", pa.int64()),
    ("_row_number", pa.int64()),
    ("_line_number", pa.int64()),
    ("_problem", pa.string()),
    ("_problem_detail", pa.string()),
    ("_raw_record", pa.string()),
)
# Set only on rows the parser flags (ragged records, undecodable bytes).
PROBLEM_COLUMNS = ("_problem", "_problem_detail", "_raw_record")


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes every byte handed to the parser."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._fh.readinto(buffer)
        if n:
            self.sha256.update(buffer[:n])
            self.size += n
        return n or 0

    def drain(self) -> None:
        while chunk := self._fh.read(BLOCK_SIZE):
            self.sha256.update(chunk)
            self.size += len(chunk)


@dataclass
class _Ragged:
    """Ragged records seen by the parser, by 0-based data record index."""

    width: int
    records: dict[int, tuple[str, int]] = field(default_factory=dict)

    def handler(self, row: pacsv.InvalidRow) -> str:
        if row.number is None:
            raise CsvFileError("ragged record without a position")
        # number counts records from 1 with the header as record 1.
        self.records[row.number - 2] = (row.text, row.actual_columns)
        return "skip"


def _reader(stream: BinaryIO | _HashingReader, width: int, ragged: _Ragged) -> pacsv.CSVStreamingReader:
    names = [f"f{i}" for i in range(width)]
    return pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(skip_rows=1, column_names=names, use_threads=False, block_size=BLOCK_SIZE),
        parse_options=pacsv.ParseOptions(
            newlines_in_values=True, ignore_empty_lines=False, invalid_row_handler=ragged.handler
        ),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.binary() for n in names}),
    )


def _batches(reader: pacsv.CSVStreamingReader) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:
            raise CsvFileError(str(exc)) from exc


def _open_reader(stream: BinaryIO | _HashingReader, width: int, ragged: _Ragged) -> pacsv.CSVStreamingReader | None:
    try:
        return _reader(stream, width, ragged)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return None
        raise CsvFileError(str(exc)) from exc


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    records: int
    size: int


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(BLOCK_SIZE):
            sha.update(chunk)
    return sha.hexdigest()


def count_and_digest(path: Path, header: Header | None) -> FileDigest:
    """Count data records and hash the file in one streaming pass."""
    with path.open("rb") as fh:
        hashing = _HashingReader(fh)
        records = 0
        if header is not None:
            ragged = _Ragged(header.width)
            reader = _open_reader(hashing, header.width, ragged)
            if reader is not None:
                for batch in _batches(reader):
                    records += batch.num_rows
            records += len(ragged.records)
        hashing.drain()
    return FileDigest(hashing.sha256.hexdigest(), records, hashing.size)


def _decode_column(col: pa.Array, data: bytes, encoding: str) -> tuple[pa.Array, np.ndarray | None]:
    """Decode one binary column (`data`: its values' bytes) to text; also return a mask of rows with
    bytes that do not decode."""
    if encoding == "utf-8" and b"\x00" not in data:
        if data.isascii():
            # ASCII is valid UTF-8 and binary and string arrays share a layout: no copy, no per-value check.
            return col.view(pa.string()), None
        try:
            return col.cast(pa.string()), None
        except pa.ArrowInvalid:
            pass
    values = col.to_pylist()
    bad = np.zeros(len(values), dtype=bool)
    out: list[str | None] = []
    for i, raw in enumerate(values):
        if raw is None:
            out.append(None)
            continue
        try:
            value = raw.decode(encoding)
        except UnicodeDecodeError:
            value = raw.decode(encoding, errors="backslashreplace")
            bad[i] = True
        if "\x00" in value:
            # PostgreSQL text cannot hold NUL; show it instead of losing the row.
            value = value.replace("\x00", "\\x00")
            bad[i] = True
        out.append(value)
    return pa.array(out, pa.string()), bad if bad.any() else None


@dataclass(frozen=True)
class RawTableLayout:
    """The ordered raw-table columns a file lands into."""

    data_columns: tuple[str, ...]

    @classmethod
    def for_file(cls, entity: Entity, header: Header | None) -> RawTableLayout:
        extras = tuple(col for _, col in header.unknown) if header else ()
        return cls(entity.column_names + extras)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(c, pa.string()) for c in self.data_columns] + list(LINEAGE_COLUMNS))


def iter_raw_batches(
    path: Path,
    encoding: str,
    entity: Entity,
    header: Header | None,
    file_id: int,
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[pa.Table]:
    """Yield the file's records as all-text tables with lineage columns.

    Ragged records are kept with their raw text and `_problem = 'ragged'`;
    fields with undecodable bytes keep a backslash-escaped value and mark the
    row `_problem = 'encoding'`, naming the columns in `_problem_detail`.
    """
    if header is None:
        return
    layout = RawTableLayout.for_file(entity, header)
    position = {col: i for i, col in enumerate(header.columns)}
    ragged = _Ragged(header.width)
    next_index = 0
    next_line = header.lines + 1
    with path.open("rb") as fh:
        reader = _open_reader(fh, header.width, ragged)
        batches = _batches(reader) if reader is not None else iter(())
        for batch in batches:
            table, next_index, next_line = _build_table(
                batch, encoding, layout, position, ragged, file_id, next_index, next_line
            )
            if on_rows:
                on_rows(table.num_rows)
            yield table
    if ragged.records:
        table = _ragged_only(layout, ragged, file_id, next_index, next_line)
        if on_rows:
            on_rows(table.num_rows)
        yield table


@dataclass(frozen=True)
class _ColumnBytes:
    """A parsed binary column's values as one bytes object, and where each value ends in it."""

    data: bytes
    ends: np.ndarray

    @classmethod
    def of(cls, col: pa.Array) -> _ColumnBytes:
        offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[col.offset : col.offset + len(col) + 1]
        first, last = int(offsets[0]), int(offsets[-1])
        values = col.buffers()[2]
        data = values.slice(first, last - first).to_pybytes() if values is not None else b""
        return cls(data, offsets[1:] - first)


def _newline_counts(columns: list[_ColumnBytes], n: int) -> np.ndarray:
    """Newlines inside each row's values, from the positions of newline bytes in each column."""
    total = np.zeros(n, dtype=np.int64)
    for col in columns:
        # Most columns never hold a newline: one byte search skips them.
        if b"\n" not in col.data:
            continue
        positions = np.flatnonzero(np.frombuffer(col.data, dtype=np.uint8) == 0x0A)
        total += np.bincount(np.searchsorted(col.ends, positions, side="right"), minlength=n)
    return total


def _build_table(
    batch: pa.RecordBatch,
    encoding: str,
    layout: RawTableLayout,
    position: dict[str, int],
    ragged: _Ragged,
    file_id: int,
    next_index: int,
    next_line: int,
) -> tuple[pa.Table, int, int]:
    n = batch.num_rows
    raw_cols = [batch.column(i) for i in range(batch.num_columns)]
    raw_bytes = [_ColumnBytes.of(col) for col in raw_cols]
    newlines = _newline_counts(raw_bytes, n)

    bad_any: np.ndarray | None = None
    bad_fields: list[tuple[str, np.ndarray]] = []
    data: list[pa.Array] = []
    for col in layout.data_columns:
        i = position.get(col)
        if i is None:
            data.append(pa.nulls(n, pa.string()))
            continue
        text, bad = _decode_column(raw_cols[i], raw_bytes[i].data, encoding)
        data.append(text)
        if bad is not None:
            bad_fields.append((col, bad))
            bad_any = bad if bad_any is None else (bad_any | bad)

    problem = pa.nulls(n, pa.string())
    detail = pa.nulls(n, pa.string())
    if bad_any is not None:
        problem = pa.array(np.where(bad_any, "encoding", None).tolist(), pa.string())
        detail = pa.array(
            [",".join(c for c, m in bad_fields if m[k]) or None for k in range(n)], pa.string()
        )

    ragged_here = [k for k in ragged.records if k >= next_index]
    if not ragged_here:
        rows = np.arange(next_index + 1, next_index + n + 1, dtype=np.int64)
        lines = next_line + np.arange(n, dtype=np.int64) + (np.cumsum(newlines) - newlines)
        end_line = next_line + n + int(newlines.sum())
        table = pa.Table.from_arrays(
            [*data, _int64_array(np.full(n, file_id, dtype=np.int64)),
             _int64_array(rows), _int64_array(lines), problem, detail, pa.nulls(n, pa.string())],
            schema=layout.schema,
        )
        return table, next_index + n, end_line
    return _merge_with_ragged(data, problem, detail, newlines, layout, ragged, file_id, next_index, next_line)


# pa.array(), pa.scalar() and Array.to_numpy() import pandas the first time
# they are called (about 0.3 s, on the critical path of a one-shot run), so
# the per-batch path builds its integer columns from buffers instead.


def _int64_array(values: np.ndarray) -> pa.Array:
    """Wrap an int64 numpy array without copying."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _merge_with_ragged(
    data: list[pa.Array],
    problem: pa.Array,
    detail: pa.Array,
    newlines: np.ndarray,
    layout: RawTableLayout,
    ragged: _Ragged,
    file_id: int,
    next_index: int,
    next_line: int,
) -> tuple[pa.Table, int, int]:
    """Place this batch's rows and the ragged records between them in file order."""
    n = len(newlines)
    normal_rows: list[int] = []
    normal_lines: list[int] = []
    tail = _RaggedRows()
    index, line, k = next_index, next_line, 0
    while k < n:
        found = ragged.records.pop(index, None)
        if found is not None:
            line = tail.add(index, line, *found)
        else:
            normal_rows.append(index + 1)
            normal_lines.append(line)
            line += 1 + int(newlines[k])
            k += 1
        index += 1
    normal = pa.Table.from_arrays(
        [*data, pa.array([file_id] * n, pa.int64()), pa.array(normal_rows, pa.int64()),
         pa.array(normal_lines, pa.int64()), problem, detail, pa.nulls(n, pa.string())],
        schema=layout.schema,
    )
    return pa.concat_tables([normal, tail.table(layout, ragged.width, file_id)]), index, line


@dataclass
class _RaggedRows:
    rows: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, index: int, line: int, text: str, fields: int) -> int:
        """Record one ragged record; return the line where the next record starts."""
        self.rows.append(index + 1)
        self.lines.append(line)
        self.texts.append(text)
        self.details.append(str(fields))
        return line + 1 + text.count("\n")

    def table(self, layout: RawTableLayout, width: int, file_id: int) -> pa.Table:
        m = len(self.rows)
        return pa.Table.from_arrays(
            [*(pa.nulls(m, pa.string()) for _ in layout.data_columns), pa.array([file_id] * m, pa.int64()),
             pa.array(self.rows, pa.int64()), pa.array(self.lines, pa.int64()),
             pa.array(["ragged"] * m, pa.string()),
             pa.array([f"{d} fields where the header has {width}" for d in self.details], pa.string()),
             pa.array(self.texts, pa.string())],
            schema=layout.schema,
        )


def _ragged_only(
    layout: RawTableLayout, ragged: _Ragged, file_id: int, next_index: int, next_line: int
) -> pa.Table:
    """Ragged records after the last parsed batch (at the end of the file)."""
    tail = _RaggedRows()
    index, line = next_index, next_line
    for pos in sorted(ragged.records):
        if pos != index:
            raise CsvFileError(f"record {pos + 1} is out of order")
        line = tail.add(index, line, *ragged.records.pop(pos))
        index += 1
    return tail.table(layout, ragged.width, file_id)
