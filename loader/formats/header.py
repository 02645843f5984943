"""Header matching: a file's first record mapped onto the contract's columns.

Names match case-insensitively after trimming; a name the contract does not
know gets a safe raw-table column of its own.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from loader.contracts import Entity

HEADER_LIMIT = 1 << 20
EXTRA_PREFIX = "extra_"
_NOT_IDENT = re.compile(r"[^a-z0-9]+")


class CsvFileError(ValueError):
    """The file cannot be read as CSV at all (for example a record larger than a block)."""

    def __init__(self, message: str, file_name: str | None = None) -> None:
        super().__init__(message)
        self.file_name = file_name


@dataclass(frozen=True)
class Header:
    """How a file's header maps onto raw-table columns."""

    names: tuple[str, ...]
    columns: tuple[str, ...]
    lines: int
    unknown: tuple[tuple[str, str], ...] = ()
    missing_required: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return len(self.names)


def extra_column_name(header_name: str, taken: set[str]) -> str:
    """A safe, unique raw-table column for a header name the contract does not know."""
    slug = _NOT_IDENT.sub("_", header_name.strip().lower()).strip("_") or "column"
    base = (EXTRA_PREFIX + slug)[:56]
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _decode_header(raw: bytes, encoding: str) -> str:
    if encoding == "utf-8" and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    return raw.decode(encoding, errors="backslashreplace")


def read_header(path: Path, encoding: str, entity: Entity) -> Header | None:
    """Parse the first record of `path`; None for a 0-byte file."""
    with path.open("rb") as fh:
        raw = fh.read(HEADER_LIMIT)
    if not raw:
        return None
    # The header ends at the first line end outside quotes.
    end, quoted = None, False
    for i, byte in enumerate(raw):
        if byte == 0x22:
            quoted = not quoted
        elif byte == 0x0A and not quoted:
            end = i + 1
            break
    if end is None and len(raw) == HEADER_LIMIT:
        raise CsvFileError(f"header line is longer than {HEADER_LIMIT} bytes")
    head = raw[: end if end is not None else len(raw)]
    text = _decode_header(head, encoding)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    names = tuple(rows[0]) if rows else ("",)
    return map_header(names, head.count(b"\n") or 1, entity)


def map_header(names: tuple[str, ...], lines: int, entity: Entity) -> Header:
    contract_cols = set(entity.column_names)
    taken = set(contract_cols)
    seen: dict[str, int] = {}
    columns: list[str] = []
    unknown: list[tuple[str, str]] = []
    duplicates: list[str] = []
    for name in names:
        key = name.strip().lower()
        if key in contract_cols:
            if key in seen:
                duplicates.append(key)
            seen[key] = seen.get(key, 0) + 1
            columns.append(key)
        else:
            col = extra_column_name(name, taken)
            unknown.append((name, col))
            columns.append(col)
    missing = tuple(c.name for c in entity.columns if c.required and c.name not in seen)
    return Header(
        names=names,
        columns=tuple(columns),
        lines=lines,
        unknown=tuple(unknown),
        missing_required=missing,
        duplicates=tuple(dict.fromkeys(duplicates)),
    )
