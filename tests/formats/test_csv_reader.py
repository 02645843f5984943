"""The CSV reader on its own: header mapping, block boundaries, encodings and marks, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.contracts import load_contract
from loader.formats import csv_reader
from loader.formats.csv_reader import count_and_digest, iter_raw_batches
from loader.formats.header import HEADER_LIMIT, CsvFileError, read_header

CUSTOMERS = load_contract("sms_v1").entity("customers")


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "customers.csv"
    path.write_bytes(data)
    return path


def rows(path: Path, encoding: str = "utf-8") -> list[dict[str, object]]:
    header = read_header(path, encoding, CUSTOMERS)
    out = [row for batch in iter_raw_batches(path, encoding, CUSTOMERS, header, 1) for row in batch.rows.to_pylist()]
    assert count_and_digest(path, header, encoding).records == len(out)
    return sorted(out, key=lambda r: r["_row_number"])


def test_unknown_columns_get_distinct_labels(tmp_path: Path) -> None:
    header = read_header(write(tmp_path, b'external_customer_id,notes,notes,"notes (column 3)",,x,\r\n'), "utf-8",
                         CUSTOMERS)
    assert header is not None
    assert [(u.position, u.name, u.label) for u in header.unknown] == [
        (2, "notes", "notes (column 2)"), (3, "notes", "notes (column 3)"),
        (4, "notes (column 3)", "notes (column 3) (column 4)"), (5, "", "column 5"), (6, "x", "x"),
        (7, "", "column 7")]
    assert header.columns == ("external_customer_id", None, None, None, None, None, None)


def test_header_fields_are_read_as_the_parser_reads_records(tmp_path: Path) -> None:
    header = read_header(write(tmp_path, b'\xef\xbb\xbfexternal_customer_id,a"b,"c""d"e,"f\r\ng"\r\nC1,1,2,3\r\n'),
                         "utf-8", CUSTOMERS)
    assert header is not None
    assert header.names == ("external_customer_id", 'a"b', 'c"de', "f\r\ng")
    assert (header.lines, header.size) == (2, 44)


def test_a_bom_alone_is_an_empty_file_and_an_endless_header_is_refused(tmp_path: Path) -> None:
    assert read_header(write(tmp_path, b"\xef\xbb\xbf"), "utf-8", CUSTOMERS) is None
    with pytest.raises(CsvFileError, match="the header is longer than 1 MiB"):
        read_header(write(tmp_path, b"a" * (HEADER_LIMIT + 10)), "utf-8", CUSTOMERS)


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_characters_cut_by_block_boundaries_stay_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    monkeypatch.setattr(csv_reader, "BLOCK_SIZE", 64)
    names = ["Zoë Ærø", "Ålm€"] if encoding == "cp1252" else ["日本語の名前", "Zoë \U0001f600"]
    lines = ["external_customer_id,last_name"] + [f"C{i},{names[i % 2]}" for i in range(200)]
    data = ("\r\n".join(lines) + "\r\n").encode(encoding) + b"C200,bad\x81\r\n"
    loaded = rows(write(tmp_path, data), encoding)
    assert [r["last_name"] for r in loaded[:200]] == [names[i % 2] for i in range(200)]
    assert all(r["_problem"] is None for r in loaded[:200])
    assert (loaded[200]["last_name"], loaded[200]["_problem"]) == ("bad\\x81", "encoding")
    assert [r["_line_number"] for r in loaded] == list(range(2, 203))


def test_private_use_characters_are_text_and_not_marks(tmp_path: Path) -> None:
    data = "external_customer_id,last_name\r\nC1,\U0010ff00\U0010ffff\r\nC2,x\x00\U0010ff41\r\nC3,y\r\n".encode()
    loaded = rows(write(tmp_path, data))
    assert [(r["last_name"], r["_problem"]) for r in loaded] == [
        ("\U0010ff00\U0010ffff", None), ("x\\x00\U0010ff41", "encoding"), ("y", None)]


def test_ragged_records_between_batches_keep_their_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_reader, "BLOCK_SIZE", 128)
    lines = [b"external_customer_id,last_name"]
    for i in range(60):
        lines.append(b"R%d\xe9" % i if i % 7 == 0 else b'C%d,"a\nb"' % i)
    loaded = rows(write(tmp_path, b"\n".join(lines)))
    expected_line = 2
    for i, row in enumerate(loaded):
        assert row["_row_number"] == i + 1
        assert row["_line_number"] == expected_line
        if i % 7 == 0:
            assert (row["_problem"], row["_raw_record"]) == ("ragged", f"R{i}\\xe9")
            expected_line += 1
        else:
            assert row["external_customer_id"] == f"C{i}"
            expected_line += 2


def test_a_record_longer_than_a_block_is_refused_saying_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_reader, "BLOCK_SIZE", 1 << 20)
    data = b"external_customer_id,last_name\nC1,a\nC2,b\nC3,\"" + b"x" * (3 << 20) + b'"\n'
    path = write(tmp_path, data)
    header = read_header(path, "utf-8", CUSTOMERS)
    with pytest.raises(CsvFileError, match=r"^a record longer than 1 MiB, the limit for one record, starts after "
                                           r"data record 2$"):
        count_and_digest(path, header, "utf-8")
    with pytest.raises(CsvFileError, match=r"starts after data record 2, near line 4$"):
        list(iter_raw_batches(path, "utf-8", CUSTOMERS, header, 1))
