"""Header matching: a file's first record mapped onto the contract's columns.

Names match case-insensitively after trimming; a column the contract does not
know is kept by its position in the header (the raw layer stores its values
in a side table, so no header can change a raw table's shape).

The header is also where a file that is not CSV text at all shows itself
(an archive, a workbook, an image, UTF-16 text): such a file is refused with
what it looks like rather than parsed as garbage.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path

from loader.contracts import Entity

HEADER_LIMIT = 1 << 20
# More columns than any export we know of, and far below PostgreSQL's 1,600
# per table, which no header can reach anyway (unknown columns are rows of a side table).
MAX_COLUMNS = 4096
# One field of a record as pyarrow's parser and Python's csv module read it: a quote
# opens a quoted field only at the start of a field, `""` is a quote inside one, and
# text after the closing quote belongs to the same field.
_FIELD = rb'"(?:[^"]+|"")*"?[^,\r\n]*|[^,\r\n]*'
_RECORD = re.compile(rb"(?:%s)(?:,(?:%s))*" % (_FIELD, _FIELD))
_TEXT_FIELD = re.compile(r'"((?:[^"]+|"")*)"?([^,\r\n]*)|([^,\r\n]*)')

# Leading bytes of files that are sent as .csv but are not text; the first match wins.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive (an .xlsx workbook is one)"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Excel workbook (.xls) or another OLE2 document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF-", "a PDF document"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"BZh91AY&SY", "a bzip2-compressed file"),
)
_UTF32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class CsvFileError(ValueError):
    """The file cannot be read as CSV at all (for example a record larger than a block)."""

    def __init__(self, message: str, file_name: str | None = None) -> None:
        super().__init__(message)
        self.file_name = file_name


@dataclass(frozen=True)
class UnknownColumn:
    """A header column the contract does not know.

    `label` names it in reports, distinctly within the file: the header name
    when it is unique, else the name with its position, or the position alone
    when the name is empty.
    """

    position: int
    name: str
    label: str


@dataclass(frozen=True)
class Header:
    """How a file's header maps onto raw-table columns.

    `columns` holds the contract column of each header position (None for an
    unknown one); `size` is the header's length in bytes, line end and any BOM
    included, where the data records start.
    """

    names: tuple[str, ...]
    columns: tuple[str | None, ...]
    lines: int
    size: int
    unknown: tuple[UnknownColumn, ...] = ()
    missing_required: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return len(self.names)


def _looks_like(raw: bytes) -> str | None:
    """What a file that is not CSV text appears to be, from its first bytes; None if it may be CSV."""
    for signature, what in _SIGNATURES:
        if raw.startswith(signature):
            return f"it looks like {what}, not CSV text"
    if raw.startswith(_UTF32_BOMS):
        return "it is UTF-32 text (it starts with a UTF-32 byte order mark): convert it to UTF-8"
    if raw.startswith(_UTF16_BOMS):
        return "it is UTF-16 text (it starts with a UTF-16 byte order mark): convert it to UTF-8"
    sample = raw[:4096]
    if len(sample) >= 4 and b"\x00" in sample:
        # UTF-16 without a byte order mark: ASCII text with a NUL after (LE) or before (BE) every byte.
        even, odd = sample[0::2], sample[1::2]
        if odd.count(0) >= 0.9 * len(odd) and even.count(0) == 0:
            return "it is UTF-16 text (little-endian, no byte order mark): convert it to UTF-8"
        if even.count(0) >= 0.9 * len(even) and odd.count(0) == 0:
            return "it is UTF-16 text (big-endian, no byte order mark): convert it to UTF-8"
    return None


def _record_end(raw: bytes) -> int:
    """Where the first record of `raw` ends, its line end included."""
    match = _RECORD.match(raw)
    end = match.end() if match else 0
    if raw.startswith(b"\r\n", end):
        return end + 2
    if raw.startswith((b"\n", b"\r"), end):
        return end + 1
    return end


def _fields(text: str) -> list[str]:
    """The fields of one record's text (its line end removed), unquoted."""
    values: list[str] = []
    pos = 0
    while True:
        match = _TEXT_FIELD.match(text, pos)
        assert match is not None  # every alternative may match the empty string
        quoted, rest, plain = match.groups()
        values.append(plain if plain is not None else quoted.replace('""', '"') + rest)
        pos = match.end()
        if pos >= len(text) or text[pos] != ",":
            return values
        pos += 1


def _decode_header(raw: bytes, encoding: str) -> str:
    if encoding == "utf-8" and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    return raw.decode(encoding, errors="backslashreplace")


def read_header(path: Path, encoding: str, entity: Entity) -> Header | None:
    """Parse the first record of `path`; None for a file without a byte of content (0 bytes, or a BOM only).

    Raises CsvFileError for a file that is not CSV text or whose first line
    cannot be a header.
    """
    with path.open("rb") as fh:
        raw = fh.read(HEADER_LIMIT)
    if not raw or raw == codecs.BOM_UTF8:
        return None
    looks_like = _looks_like(raw)
    if looks_like is not None:
        raise CsvFileError(looks_like)
    body = len(codecs.BOM_UTF8) if encoding == "utf-8" and raw.startswith(codecs.BOM_UTF8) else 0
    end = body + _record_end(raw[body:])
    if end == len(raw) == HEADER_LIMIT:
        raise CsvFileError(f"the header is longer than {HEADER_LIMIT >> 20} MiB, the limit for a header")
    head = raw[:end]
    if not head[body:].strip(b" \t\r\n"):
        raise CsvFileError("line 1 is blank: the header must be the first line")
    text = _decode_header(head, encoding).rstrip("\r\n")
    names = tuple(_fields(text))
    if len(names) > MAX_COLUMNS:
        raise CsvFileError(f"the header has {len(names):,} columns; at most {MAX_COLUMNS:,} are accepted")
    for position, name in enumerate(names, start=1):
        if "\x00" in name:
            raise CsvFileError(f"the header holds a NUL byte (in column {position}); CSV text cannot hold one: "
                               "is it a binary file?")
    return map_header(names, head.count(b"\n") or 1, len(head), entity)


def _labels(names: tuple[str, ...], unknown: list[int]) -> dict[int, str]:
    """A distinct report label for each unknown column (by 0-based index)."""
    def positioned(i: int) -> str:
        name = names[i].strip()
        return f"{names[i]} (column {i + 1})" if name else f"column {i + 1}"

    counts: dict[str, int] = {}
    for i in unknown:
        key = names[i].strip().lower()
        counts[key] = counts.get(key, 0) + 1
    labels = {i: names[i] if names[i].strip() and counts[names[i].strip().lower()] == 1 else positioned(i)
              for i in unknown}
    # A unique name may still equal another column's positioned label ("a (column 2)").
    taken: dict[str, int] = {}
    for label in labels.values():
        taken[label] = taken.get(label, 0) + 1
    return {i: positioned(i) if taken[label] > 1 and label == names[i] else label for i, label in labels.items()}


def map_header(names: tuple[str, ...], lines: int, size: int, entity: Entity) -> Header:
    contract_cols = set(entity.column_names)
    seen: dict[str, int] = {}
    columns: list[str | None] = []
    unknown: list[int] = []
    duplicates: list[str] = []
    for i, name in enumerate(names):
        key = name.strip().lower()
        if key in contract_cols:
            if key in seen:
                duplicates.append(key)
            seen[key] = seen.get(key, 0) + 1
            columns.append(key)
        else:
            unknown.append(i)
            columns.append(None)
    labels = _labels(names, unknown)
    missing = tuple(c.name for c in entity.columns if c.required and c.name not in seen)
    return Header(
        names=names,
        columns=tuple(columns),
        lines=lines,
        size=size,
        unknown=tuple(UnknownColumn(i + 1, names[i], labels[i]) for i in unknown),
        missing_required=missing,
        duplicates=tuple(dict.fromkeys(duplicates)),
    )
