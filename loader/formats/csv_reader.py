"""Streaming RFC 4180 reading of partner CSV files into Arrow batches.

One parser (pyarrow's, single-threaded so ragged records keep their position)
serves both verification (record counts while hashing) and landing (all-text
batches with lineage), so the two can never disagree on what a record is.
Memory stays flat: files are read block by block.

The parser starts after the header's bytes (read_header found where the
header ends, quoted newlines included), and it only ever sees valid UTF-8:
the data are decoded in the partner's encoding on the way in, and every byte
that is not text there (and every NUL, which PostgreSQL's text cannot hold)
becomes a marker character. So a ragged record, which pyarrow hands over as
UTF-8 text, never fails to decode, and a column is text without a check;
only values holding a marker are looked at one by one.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
# Values of header columns the contract does not know, one row per non-empty
# value, in one table per raw dataset: `_column_index` is the 1-based position
# in the file's header (landed_files.header has the names).
EXTRA_VALUES_TABLE = "_extra_values"
EXTRA_VALUES_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("_file_id", pa.int64()),
    ("_row_number", pa.int64()),
    ("_column_index", pa.int32()),
    ("value", pa.string()),
)
EXTRA_VALUES_SCHEMA = pa.schema(list(EXTRA_VALUES_COLUMNS))

# A byte that is not text in the file's encoding, or a NUL, travels through
# the parser as the character U+10FF00 + byte (the last private-use plane,
# whose characters a file may hold too: they are marked as their bytes).
_MARK = 0x10FF00
# The first byte of every mark in UTF-8 (and of no character below U+100000): one memchr rules marks out.
_MARK_LEAD = b"\xf4"
_MARK_RUNS = re.compile("[\U0010ff00-\U0010ffff]+")
_MARK_RE2 = "[\\x{10FF00}-\\x{10FFFF}]"
_AS_SURROGATES = "loader-bytes-as-surrogates"
_AS_MARKS = "loader-surrogates-as-marks"


def _bytes_as_surrogates(exc: UnicodeError) -> tuple[str, int]:
    # Surrogates first, so that marks made for bytes stay apart from private-use characters of the text.
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return "".join(chr(0xDC00 + b) for b in exc.object[exc.start : exc.end]), exc.end


def _surrogates_as_marks(exc: UnicodeError) -> tuple[bytes, int]:
    # Bytes, not text: the UTF-8 encoder takes only ASCII text from an error handler.
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    marks = []
    for ch in exc.object[exc.start : exc.end]:
        code = ord(ch)
        if 0xDC00 <= code <= 0xDCFF:
            marks.append(chr(_MARK + code - 0xDC00))
        else:
            marks.extend(chr(_MARK + b) for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(marks).encode("utf-8"), exc.end


codecs.register_error(_AS_SURROGATES, _bytes_as_surrogates)
codecs.register_error(_AS_MARKS, _surrogates_as_marks)


@functools.cache
def _ascii_is_itself(encoding: str) -> bool:
    """Whether a block of ASCII bytes decodes to the same characters in `encoding` (a stateless codec)."""
    ascii_bytes = bytes(range(128))
    try:
        decoder = codecs.getincrementaldecoder(encoding)()
        return decoder.decode(ascii_bytes, True) == ascii_bytes.decode("ascii") and decoder.getstate() == (b"", 0)
    except UnicodeDecodeError:
        return False


def unmark(text: str, encoding: str) -> tuple[str, bool]:
    """A parsed value back as text: marked bytes decoded in `encoding` where they are text there,
    backslash-escaped where not (NUL as \\x00). The flag says whether any byte was not text."""
    bad = False

    def restore(match: re.Match[str]) -> str:
        nonlocal bad
        raw = bytes(ord(c) - _MARK for c in match.group())
        try:
            value = raw.decode(encoding)
        except UnicodeDecodeError:
            value = raw.decode(encoding, errors="backslashreplace")
            bad = True
        if "\x00" in value:
            value = value.replace("\x00", "\\x00")
            bad = True
        return value

    return _MARK_RUNS.sub(restore, text), bad


def _without_partial_utf8(data: bytes) -> int:
    """The length of `data` without a UTF-8 sequence cut off at its end (the next block completes it)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= needed else len(data) - back
    return len(data)


def _is_utf8(data: bytes, length: int) -> bool:
    """Whether data[:length] is valid UTF-8 (Arrow's check is several times faster than decoding)."""
    offsets = pa.py_buffer(np.array([0, length], dtype=np.int32))
    try:
        pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


class _ParserStream(io.RawIOBase):
    """The bytes after the header as the parser reads them: UTF-8 text with marks for non-text bytes.

    A clean UTF-8 block is passed on as it is (after a check); other blocks are
    decoded and encoded again. Reads are full-sized except at the end: the
    parser's blocks must hold whole records.
    """

    def __init__(self, source: io.BufferedIOBase | _HashingReader, encoding: str) -> None:
        self._source = source
        self._encoding = encoding
        self._utf8 = encoding == "utf-8"
        self._decoder = codecs.getincrementaldecoder(encoding)(_AS_SURROGATES)
        self._fast_ascii = self._utf8 or _ascii_is_itself(encoding)
        self._carry = b""
        self._out = b""
        self._pos = 0
        self._eof = False
        # Whether any mark was written so far: until then no value needs a look.
        self.marked = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = BLOCK_SIZE if size is None or size < 0 else size
        parts: list[bytes] = []
        while want > 0:
            if self._pos >= len(self._out):
                if self._eof:
                    break
                block = self._source.read(BLOCK_SIZE)
                self._eof = not block
                self._out, self._pos = self._convert(block, self._eof), 0
                continue
            whole = self._pos == 0 and len(self._out) <= want
            piece = self._out if whole else self._out[self._pos : self._pos + want]
            self._pos += len(piece)
            want -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _convert(self, block: bytes, final: bool) -> bytes:
        if self._utf8:
            data = self._carry + block
            if not self._carry and data.isascii() and b"\x00" not in data:
                return data
            if b"\x00" not in data and _MARK_LEAD not in data:
                used = len(data) if final else _without_partial_utf8(data)
                if _is_utf8(data, used):
                    self._carry = data[used:]
                    return data if used == len(data) else data[:used]
            text, used = codecs.utf_8_decode(data, _AS_SURROGATES, final)
            self._carry = data[used:]
            return self._marked(text)
        if self._fast_ascii and block.isascii() and b"\x00" not in block and self._decoder.getstate() == (b"", 0):
            return block
        return self._marked(self._decoder.decode(block, final))

    def _marked(self, text: str) -> bytes:
        try:
            out = text.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            if b"\x00" not in out and _MARK_LEAD not in out:
                return out
        self.marked = True
        if not text.isascii():
            text = _MARK_RUNS.sub(lambda m: "".join(chr(_MARK + b) for b in self._file_bytes(m.group())), text)
        return text.replace("\x00", chr(_MARK)).encode("utf-8", _AS_MARKS)

    def _file_bytes(self, text: str) -> bytes:
        try:
            return text.encode(self._encoding)
        except UnicodeEncodeError:
            # Not text the codec could have decoded: keep its characters as UTF-8.
            return text.encode("utf-8")


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes every byte handed to the parser."""

    def __init__(self, fh: io.BufferedIOBase) -> None:
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
    """Ragged records seen by the parser, by 0-based data record index: (marked text, field count)."""

    width: int
    records: dict[int, tuple[str, int]] = field(default_factory=dict)

    def handler(self, row: pacsv.InvalidRow) -> str:
        if row.number is None:
            raise CsvFileError("ragged record without a position")
        # number counts records from 1, and the parser starts after the header.
        self.records[row.number - 1] = (row.text, row.actual_columns)
        return "skip"


def _parse_error(exc: pa.ArrowInvalid, records: int, line: int | None) -> CsvFileError:
    near = f", near line {line:,}" if line is not None else ""
    if "straddling" in str(exc):
        return CsvFileError(f"a record longer than {BLOCK_SIZE >> 20} MiB, the limit for one record, starts after "
                            f"data record {records:,}{near}")
    return CsvFileError(f"cannot be parsed after data record {records:,}{near}: {exc}")


class _Parser:
    """pyarrow's streaming parser over one file's data records, all columns as bytes."""

    def __init__(self, stream: _ParserStream, header: Header) -> None:
        self.stream = stream
        self.ragged = _Ragged(header.width)
        self.rows = 0
        names = [f"f{i}" for i in range(header.width)]
        self._options = (
            pacsv.ReadOptions(column_names=names, use_threads=False, block_size=BLOCK_SIZE),
            pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False,
                               invalid_row_handler=self.ragged.handler),
            pacsv.ConvertOptions(column_types={n: pa.binary() for n in names}),
        )

    @property
    def records(self) -> int:
        """Data records parsed so far, ragged ones included."""
        return self.rows + len(self.ragged.records)

    def batches(self, line: Callable[[], int] | None = None) -> Iterator[pa.RecordBatch]:
        """Every batch; a parse error raises CsvFileError saying after which record (and `line`) it happened."""
        try:
            reader = pacsv.open_csv(self.stream, *self._options)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return
            raise _parse_error(exc, 0, line() if line else None) from exc
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise _parse_error(exc, self.records, line() if line else None) from exc
            self.rows += batch.num_rows
            yield batch


def _skip(source: _HashingReader, size: int) -> None:
    while size > 0:
        chunk = source.read(min(size, BLOCK_SIZE))
        if not chunk:
            return
        size -= len(chunk)


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


def count_and_digest(path: Path, header: Header | None, encoding: str) -> FileDigest:
    """Count data records and hash the file in one streaming pass."""
    with path.open("rb") as fh:
        hashing = _HashingReader(fh)
        records = 0
        if header is not None:
            _skip(hashing, header.size)
            parser = _Parser(_ParserStream(hashing, encoding), header)
            for _ in parser.batches():
                pass
            records = parser.records
        hashing.drain()
    return FileDigest(hashing.sha256.hexdigest(), records, hashing.size)


@dataclass(frozen=True)
class RawTableLayout:
    """The ordered raw-table columns an entity's files land into (the same for every file)."""

    data_columns: tuple[str, ...]

    @classmethod
    def for_entity(cls, entity: Entity) -> RawTableLayout:
        return cls(entity.column_names)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(c, pa.string()) for c in self.data_columns] + list(LINEAGE_COLUMNS))


@dataclass(frozen=True)
class RawBatch:
    """Records of one parser batch: the raw-table rows, and the non-empty values of unknown columns."""

    rows: pa.Table
    extra_values: pa.Table | None = None


def iter_raw_batches(
    path: Path,
    encoding: str,
    entity: Entity,
    header: Header | None,
    file_id: int,
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[RawBatch]:
    """Yield the file's records as all-text tables with lineage columns.

    Ragged records are kept with their raw text and `_problem = 'ragged'`;
    fields with undecodable bytes or NUL keep a backslash-escaped value and
    mark the row `_problem = 'encoding'`, naming the columns in `_problem_detail`.
    """
    if header is None:
        return
    batch_maker = _BatchMaker(RawTableLayout.for_entity(entity), header, encoding, file_id)
    with path.open("rb") as fh:
        fh.seek(header.size)
        parser = _Parser(_ParserStream(fh, encoding), header)
        for batch in parser.batches(lambda: batch_maker.next_line):
            raw = batch_maker.build(batch, parser.ragged, parser.stream.marked)
            if on_rows:
                on_rows(raw.rows.num_rows)
            yield raw
        if parser.ragged.records:
            raw = RawBatch(batch_maker.ragged_only(parser.ragged, parser.stream.marked))
            if on_rows:
                on_rows(raw.rows.num_rows)
            yield raw


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


def _text_column(col: pa.Array, data: bytes, marked: bool, encoding: str) -> tuple[pa.Array, np.ndarray | None]:
    """One parsed column as text, and a mask of the rows whose value held bytes that are not text."""
    # The parser's input is valid UTF-8 and it splits only at ASCII bytes: the values are UTF-8 as they are.
    text = col.view(pa.string())
    if not marked or _MARK_LEAD not in data:
        return text, None
    has_mark = pc.fill_null(pc.match_substring_regex(text, _MARK_RE2), False)
    where = pc.indices_nonzero(has_mark)
    if len(where) == 0:
        return text, None
    restored = [unmark(value, encoding) for value in text.take(where).to_pylist()]
    text = pc.replace_with_mask(text, has_mark, pa.array([value for value, _ in restored], pa.string()))
    bad = np.zeros(len(col), dtype=bool)
    bad[where.to_numpy()[[flag for _, flag in restored]]] = True
    return text, bad if bad.any() else None


# pa.array(), pa.scalar() and Array.to_numpy() import pandas the first time
# they are called (about 0.3 s, on the critical path of a one-shot run), so
# the per-batch path builds its integer columns from buffers instead.


def _int64_array(values: np.ndarray) -> pa.Array:
    """Wrap an int64 numpy array without copying."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _int32_array(values: np.ndarray) -> pa.Array:
    values = np.ascontiguousarray(values, dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


@dataclass
class _BatchMaker:
    """Turns parser batches into raw-table rows in file order, keeping count of records and lines."""

    layout: RawTableLayout
    header: Header
    encoding: str
    file_id: int
    next_index: int = 0
    next_line: int = 0

    def __post_init__(self) -> None:
        self.next_line = self.header.lines + 1
        self._position = {col: i for i, col in enumerate(self.header.columns) if col is not None}

    def build(self, batch: pa.RecordBatch, ragged: _Ragged, marked: bool) -> RawBatch:
        n = batch.num_rows
        raw_cols = [batch.column(i) for i in range(batch.num_columns)]
        raw_bytes = [_ColumnBytes.of(col) for col in raw_cols]
        newlines = _newline_counts(raw_bytes, n)

        def text(i: int, label: str) -> pa.Array:
            value, bad = _text_column(raw_cols[i], raw_bytes[i].data, marked, self.encoding)
            if bad is not None:
                bad_fields.append((label, bad))
            return value

        bad_fields: list[tuple[str, np.ndarray]] = []
        data = [text(self._position[col], col) if col in self._position else pa.nulls(n, pa.string())
                for col in self.layout.data_columns]
        extras = [(u.position, text(u.position - 1, u.label)) for u in self.header.unknown]

        problem = pa.nulls(n, pa.string())
        detail = pa.nulls(n, pa.string())
        if bad_fields:
            bad_any = np.logical_or.reduce([mask for _, mask in bad_fields])
            problem = pa.array(["encoding" if bad else None for bad in bad_any], pa.string())
            detail = pa.array([",".join(c for c, m in bad_fields if m[k]) or None for k in range(n)], pa.string())

        pending = sorted(k for k in ragged.records if k >= self.next_index)
        if not pending:
            rows = np.arange(self.next_index + 1, self.next_index + n + 1, dtype=np.int64)
            lines = self.next_line + np.arange(n, dtype=np.int64) + (np.cumsum(newlines) - newlines)
            self.next_index += n
            self.next_line += n + int(newlines.sum())
            tail = None
        else:
            rows, lines, tail = self._place_ragged(newlines, pending, ragged, marked)
        table = pa.Table.from_arrays(
            [*data, _int64_array(np.full(n, self.file_id, dtype=np.int64)), _int64_array(rows),
             _int64_array(lines), problem, detail, pa.nulls(n, pa.string())],
            schema=self.layout.schema,
        )
        if tail is not None:
            table = pa.concat_tables([table, tail.table(self.layout, ragged.width, self.file_id)])
        return RawBatch(table, self._extra_values(extras, rows) if extras else None)

    def _place_ragged(
        self, newlines: np.ndarray, pending: list[int], ragged: _Ragged, marked: bool
    ) -> tuple[np.ndarray, np.ndarray, _RaggedRows]:
        """Row and line numbers of this batch's rows with the ragged records between them (file order)."""
        n = len(newlines)
        candidates = np.arange(self.next_index, self.next_index + n + len(pending), dtype=np.int64)
        is_ragged = np.isin(candidates, pending)
        normal = candidates[~is_ragged][:n]
        # Ragged records after this batch's last row belong before the next batch's first.
        last = int(normal[-1]) if n else self.next_index - 1
        taken = [k for k in pending if k < last]
        total = n + len(taken)
        is_ragged = is_ragged[:total]
        tail = _RaggedRows()
        ragged_newlines = [tail.add(k, *ragged.records.pop(k), self.encoding, marked) for k in taken]
        counts = np.zeros(total, dtype=np.int64)
        counts[~is_ragged] = newlines
        counts[is_ragged] = ragged_newlines
        lines = self.next_line + np.arange(total, dtype=np.int64) + (np.cumsum(counts) - counts)
        tail.lines = [int(x) for x in lines[is_ragged]]
        self.next_index += total
        self.next_line += total + int(counts.sum())
        return normal + 1, lines[~is_ragged], tail

    def ragged_only(self, ragged: _Ragged, marked: bool) -> pa.Table:
        """Ragged records after the last parsed batch (at the end of the file)."""
        tail = _RaggedRows()
        for pos in sorted(ragged.records):
            if pos != self.next_index:
                raise CsvFileError(f"record {pos + 1} is out of order")
            tail.lines.append(self.next_line)
            self.next_line += 1 + tail.add(pos, *ragged.records.pop(pos), self.encoding, marked)
            self.next_index += 1
        return tail.table(self.layout, ragged.width, self.file_id)

    def _extra_values(self, extras: list[tuple[int, pa.Array]], rows: np.ndarray) -> pa.Table | None:
        """Unknown columns' non-empty values as rows of the side table, column by column."""
        row_numbers = _int64_array(rows)
        parts = []
        for position, values in extras:
            keep = pc.greater(pc.binary_length(values), 0)
            kept = values.filter(keep)
            if not len(kept):
                continue
            m = len(kept)
            parts.append(pa.Table.from_arrays(
                [_int64_array(np.full(m, self.file_id, dtype=np.int64)), row_numbers.filter(keep),
                 _int32_array(np.full(m, position, dtype=np.int32)), kept],
                schema=EXTRA_VALUES_SCHEMA,
            ))
        return pa.concat_tables(parts) if parts else None


@dataclass
class _RaggedRows:
    rows: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, index: int, text: str, fields: int, encoding: str, marked: bool) -> int:
        """Record one ragged record (its line is set by the caller); return the newlines inside it."""
        self.rows.append(index + 1)
        self.texts.append(unmark(text, encoding)[0] if marked else text)
        self.details.append(str(fields))
        return text.count("\n")

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
