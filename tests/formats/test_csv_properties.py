"""Property-based tests of the CSV reader: it cannot crash, and it reads what Python's csv module reads.

Records are built from an RFC 4180 grammar (quoted fields with commas,
quotes, CR and LF, ragged records, empty fields, non-ASCII text, NUL and
bytes that are not text in the encoding) and compared with the csv module
record by record: values, row and line numbers, or the row's flag. Random
bytes must give a clear CsvFileError or rows whose numbering holds together.
"""

from __future__ import annotations

import csv
import hashlib
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.contracts import load_contract
from loader.formats import csv_reader
from loader.formats.csv_reader import count_and_digest, iter_raw_batches
from loader.formats.header import CsvFileError, Header, read_header

CUSTOMERS = load_contract("sms_v1").entity("customers")
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters a field may hold, per encoding: structure (comma, quote, CR, LF), spaces, NUL, and text
# beyond ASCII (in UTF-8 up to the private-use plane the reader uses for its own marks).
TEXT = {
    "utf-8": st.sampled_from([*'ab ,"\r\n\x00\t', "é", "日", "\U0001f600", "\U0010ff41", "\U0010ff00"]),
    "cp1252": st.sampled_from([*'ab ,"\r\n\x00\t', "é", "€", "ÿ"]),
}
# Bytes that are not text in the encoding.
NOT_TEXT = {"utf-8": [b"\xff", b"\xe9", b"\xc3", b"\xed\xa0\x80"], "cp1252": [b"\x81", b"\x9d"]}


@st.composite
def fields(draw: st.DrawFn, encoding: str) -> bytes:
    parts = draw(st.lists(st.one_of(TEXT[encoding].map(lambda c: c.encode(encoding)),
                                    st.sampled_from(NOT_TEXT[encoding])), max_size=6))
    return b"".join(parts)


def serialize(value: bytes, force_quotes: bool) -> bytes:
    if force_quotes or any(c in value for c in b',"\r\n'):
        return b'"' + value.replace(b'"', b'""') + b'"'
    return value


@dataclass
class Sample:
    data: bytes
    encoding: str
    width: int


@st.composite
def grammar_files(draw: st.DrawFn) -> Sample:
    encoding = draw(st.sampled_from(["utf-8", "cp1252"]))
    pool = [*CUSTOMERS.column_names, "notes", "Notes", "x, y", 'say "hi"', "first\nname", "", "é"]
    names = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=6, unique_by=lambda n: n.strip().lower()
                          if n.strip().lower() in CUSTOMERS.column_names else n))
    width = len(names)
    records = [b",".join(serialize(n.encode(encoding), draw(st.booleans())) for n in names)]
    for _ in range(draw(st.integers(0, 8))):
        count = draw(st.sampled_from([width, width, width, max(1, width - 1), width + 1]))
        row = [serialize(draw(fields(encoding)), draw(st.booleans())) for _ in range(count)]
        records.append(b",".join(row))
    ends = [draw(st.sampled_from([b"\r\n", b"\n"])) for _ in records]
    if not draw(st.booleans()) and records[-1]:
        ends[-1] = b""
    bom = b"\xef\xbb\xbf" if encoding == "utf-8" and draw(st.booleans()) else b""
    return Sample(bom + b"".join(r + e for r, e in zip(records, ends, strict=True)), encoding, width)


def csv_module_records(sample: Sample) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and every data record with its first line, as Python's csv module reads the file.

    Lines are LF-terminated, as the loader counts them; undecodable bytes stay surrogates.
    """
    text = sample.data.decode(sample.encoding, errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(_lf_lines(text))
    header = next(reader)
    records = []
    start = reader.line_num + 1
    for row in reader:
        records.append((start, row))
        start = reader.line_num + 1
    return header, records


def _lf_lines(text: str) -> Iterator[str]:
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end + 1
        yield text[pos:end]
        pos = end


def as_stored(value: str, encoding: str) -> tuple[str, bool]:
    """A csv-module value as the raw layer keeps it: bytes not text backslash-escaped, NUL as \\x00."""
    raw = value.encode(encoding, errors="surrogateescape")
    try:
        text, bad = raw.decode(encoding), False
    except UnicodeDecodeError:
        text, bad = raw.decode(encoding, errors="backslashreplace"), True
    return text.replace("\x00", "\\x00"), bad or "\x00" in text


def loaded(path: Path, sample: Sample, header: Header) -> list[dict[str, object]]:
    """Every row the reader yields, with unknown columns' values put back in their header positions."""
    rows: list[dict[str, object]] = []
    for batch in iter_raw_batches(path, sample.encoding, CUSTOMERS, header, file_id=7):
        table = batch.rows
        assert table.column("_file_id").to_pylist() == [7] * table.num_rows
        extras: dict[tuple[int, int], str] = {}
        if batch.extra_values is not None:
            for x in batch.extra_values.to_pylist():
                extras[(x["_row_number"], x["_column_index"])] = x["value"]
        for row in table.to_pylist():
            if row["_problem"] != "ragged":
                values = [row[col] if col is not None else extras.pop((row["_row_number"], i), "")
                          for i, col in enumerate(header.columns, start=1)]
                row["values"] = values
            rows.append(row)
        assert not extras
    # A batch's ragged records follow its other rows; the raw layer orders by row number.
    return sorted(rows, key=lambda r: r["_row_number"])


@SETTINGS
@given(grammar_files())
def test_the_reader_reads_records_as_the_csv_module_does(sample: Sample) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "customers.csv"
        path.write_bytes(sample.data)
        if not sample.data.removeprefix(b"\xef\xbb\xbf").split(b"\n")[0].strip(b"\r"):
            # A blank first line: the header is not where it must be.
            with pytest.raises(CsvFileError, match="line 1 is blank"):
                read_header(path, sample.encoding, CUSTOMERS)
            return
        header = read_header(path, sample.encoding, CUSTOMERS)
        assert header is not None
        names, expected = csv_module_records(sample)
        assert list(header.names) == [as_stored(n, sample.encoding)[0] for n in names]
        digest = count_and_digest(path, header, sample.encoding)
        assert (digest.sha256, digest.size) == (hashlib.sha256(sample.data).hexdigest(), len(sample.data))
        assert digest.records == len(expected)
        rows = loaded(path, sample, header)
    assert [(r["_row_number"], r["_line_number"]) for r in rows] == [
        (i, line) for i, (line, _) in enumerate(expected, start=1)]
    for row, (_, values) in zip(rows, expected, strict=True):
        if values and len(values) != sample.width:
            assert row["_problem"] == "ragged", (row, values)
            assert row["_problem_detail"] == f"{len(values)} fields where the header has {sample.width}"
            continue
        stored = [as_stored(v, sample.encoding) for v in (values or [""] * sample.width)]
        assert row["values"] == [text for text, _ in stored]
        assert row["_problem"] == ("encoding" if any(bad for _, bad in stored) else None), (row, values)


@SETTINGS
@given(st.one_of(st.binary(max_size=300),
                 st.lists(st.sampled_from([b",", b'"', b"\r", b"\n", b"\x00", b"\xff", b"\xe9", b"\xef\xbb\xbf",
                                           b"a", b" ", b"last_name", b"external_customer_id", b"\xf4\x8f\xbc\x80"]),
                          max_size=60).map(b"".join)),
       st.sampled_from(["utf-8", "cp1252"]), st.sampled_from([64, 1 << 20]))
def test_random_bytes_never_crash_the_reader(data: bytes, encoding: str, block_size: int) -> None:
    original = csv_reader.BLOCK_SIZE
    csv_reader.BLOCK_SIZE = block_size
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "customers.csv"
            path.write_bytes(data)
            check_random_file(path, data, encoding)
    finally:
        csv_reader.BLOCK_SIZE = original


def check_random_file(path: Path, data: bytes, encoding: str) -> None:
    try:
        header = read_header(path, encoding, CUSTOMERS)
    except CsvFileError:
        return
    try:
        digest = count_and_digest(path, header, encoding)
    except CsvFileError as exc:
        # Landing fails the same way, with a message that says where.
        try:
            list(iter_raw_batches(path, encoding, CUSTOMERS, header, file_id=1))
        except CsvFileError as again:
            assert str(again).split(",")[0] == str(exc).split(",")[0]
            return
        raise AssertionError(f"counting failed ({exc}) but landing did not") from exc
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    if header is None:
        assert digest.records == 0
        return
    rows = sorted((row for batch in iter_raw_batches(path, encoding, CUSTOMERS, header, file_id=1)
                   for row in _checked(batch.rows)), key=lambda r: r["_row_number"])
    assert [r["_row_number"] for r in rows] == list(range(1, digest.records + 1))
    # Outside the contract a bare CR ends a record too, and counts as a line end there.
    lines = [r["_line_number"] for r in rows]
    assert lines == sorted(set(lines))
    assert all(header.lines + 1 <= line <= len(re.findall(rb"\r\n|\r|\n", data)) + 1 for line in lines)
    for row in rows:
        assert row["_problem"] in (None, "ragged", "encoding")
        assert (row["_raw_record"] is not None) == (row["_problem"] == "ragged")


def _checked(table: pa.Table) -> list[dict[str, object]]:
    # Text PostgreSQL can store: valid UTF-8 without NUL.
    for column in table.columns:
        if pa.types.is_string(column.type):
            column.validate(full=True)
            assert not any("\x00" in v for v in column.to_pylist() if v is not None)
    return table.to_pylist()
