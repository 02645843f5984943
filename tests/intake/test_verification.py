"""Verification of load folders: every problem of a folder, each naming its file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import header_only, make_load

from loader.intake.load_key import LoadKey, LoadKeyError
from loader.intake.manifest import verify_folder
from loader.intake.partners import PartnerSettings


def verify(folder: Path):
    return verify_folder(folder, lambda _partner: PartnerSettings())


def rules(result) -> list[tuple[str, str | None]]:
    return sorted((p.rule, p.file) for p in result.refusals)


def test_a_complete_folder_passes(tmp_path: Path) -> None:
    result = verify(make_load(tmp_path))
    assert result.ok, result.refusals
    assert [f.entity.name for f in result.files] == [
        "customers", "vehicles", "invoices", "line_items", "payments", "inventory_parts", "suppliers"]
    assert result.files[0].records == 2


def test_invalid_json(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    (folder / "manifest.json").write_text('{"load_id": "load-1", "files": [')
    result = verify(folder)
    assert not result.ok
    assert rules(result) == [("manifest", "manifest.json")]
    assert "not valid JSON" in result.refusals[0].message


def test_manifest_schema_errors_name_the_field(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    (folder / "manifest.json").write_text(json.dumps({"load_id": "load-1", "files": [{"name": "customers.csv",
                                                                                    "rows": -1, "sha256": "XYZ"}]}))
    result = verify(folder)
    messages = " | ".join(p.message for p in result.refusals)
    assert "files.0.rows" in messages and "files.0.sha256" in messages


def test_missing_manifest(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    (folder / "manifest.json").unlink()
    assert rules(verify(folder)) == [("manifest", "manifest.json")]


def test_missing_file_is_reported_with_its_name(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    (folder / "payments.csv").unlink()
    result = verify(folder)
    assert ("missing_file", "payments.csv") in rules(result)


def test_file_in_folder_but_not_in_manifest(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["name"] != "suppliers.csv"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert rules(verify(folder)) == [("manifest", "suppliers.csv")]


def test_extra_file_is_refused(tmp_path: Path) -> None:
    folder = make_load(tmp_path, {"employees.csv": b"id\r\n1\r\n"})
    assert rules(verify(folder)) == [("extra_file", "employees.csv"), ("extra_file", "employees.csv")]


def test_wrong_rows_and_wrong_digest_are_reported_together(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["name"] == "customers.csv":
            entry["rows"] = 3
        if entry["name"] == "vehicles.csv":
            entry["sha256"] = hashlib.sha256(b"something else").hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = verify(folder)
    assert rules(result) == [("digest", "vehicles.csv"), ("row_count", "customers.csv")]
    assert "has 2 data records, manifest.json says 3" in str(result.refusals[1]) + str(result.refusals[0])


def test_rows_count_records_not_lines(tmp_path: Path) -> None:
    data = b'external_customer_id,last_name\r\nC1,"two\r\nlines"\r\nC2,"and ""three""\nlines\nhere"\r\n'
    result = verify(make_load(tmp_path, {"customers.csv": data}))
    assert result.ok, result.refusals
    assert result.files[0].records == 2


def test_load_id_must_match_folder(tmp_path: Path) -> None:
    folder = make_load(tmp_path, manifest={"load_id": "another-load"})
    result = verify(folder)
    assert rules(result) == [("load_id", "manifest.json")]
    assert "another-load" in result.refusals[0].message


def test_unknown_contract(tmp_path: Path) -> None:
    result = verify(make_load(tmp_path, manifest={"contract": "crm_v9"}))
    assert rules(result) == [("contract", "manifest.json")]
    assert "sms_v1" in result.refusals[0].message


def test_contract_defaults_to_sms_v1(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["contract"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert verify(folder).contract.name == "sms_v1"


def test_documents_csv_is_accepted_for_invoices(tmp_path: Path) -> None:
    folder = make_load(tmp_path, {"invoices.csv": None, "documents.csv": header_only("invoices")})
    result = verify(folder)
    assert result.ok, result.refusals
    assert any(f.path.name == "documents.csv" and f.entity.name == "invoices" for f in result.files)


def test_invoices_and_documents_together_are_refused(tmp_path: Path) -> None:
    folder = make_load(tmp_path, {"documents.csv": header_only("invoices")})
    assert ("extra_file", "documents.csv") in rules(verify(folder))


def test_file_listed_twice(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"].append(manifest["files"][0])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert rules(verify(folder)) == [("manifest", "customers.csv")]


def test_customers_must_not_be_empty(tmp_path: Path) -> None:
    folder = make_load(tmp_path, {"customers.csv": header_only("customers")})
    assert rules(verify(folder)) == [("empty_file", "customers.csv")]


def test_duplicate_header_column_is_refused(tmp_path: Path) -> None:
    folder = make_load(tmp_path, {"customers.csv": b"external_customer_id,Email,EMAIL ,last_name\r\nC1,a,b,c\r\n"})
    result = verify(folder)
    assert rules(result) == [("duplicate_column", "customers.csv")]
    assert result.refusals[0].field == "email"


def test_symlinked_csv_is_not_followed(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    outside = tmp_path / "secret.csv"
    outside.write_bytes(header_only("suppliers"))
    (folder / "suppliers.csv").unlink()
    (folder / "suppliers.csv").symlink_to(outside)
    assert ("extra_file", "suppliers.csv") in rules(verify(folder))


def test_missing_required_column_is_a_file_finding(tmp_path: Path) -> None:
    folder = make_load(tmp_path, {"vehicles.csv": b"external_vehicle_id,vin\r\nV1,1HGCM82633A004352\r\n"})
    result = verify(folder)
    assert result.ok
    [finding] = [p for p in result.findings if p.rule == "required"]
    assert (finding.file, finding.field) == ("vehicles.csv", "external_customer_id")


@pytest.mark.parametrize(
    "parts",
    [("..", "shop", "load"), ("acme", "..", "load"), ("acme", "shop", ".hidden"), ("ac me", "shop", "load"),
     ("acme", "sh'op", "load"), ("acme", 'sh"op', "load"), ("acme", "shop", "x" * 65), ("acme", "", "load"),
     ("acme", "shop;drop", "load")],
)
def test_bad_path_parts_are_refused_before_any_read(tmp_path: Path, parts: tuple[str, str, str]) -> None:
    # The folder does not exist: a refusal that names the path rule proves nothing was read.
    folder = Path(str(tmp_path)) / "/".join(parts)
    result = verify(folder)
    assert [p.rule for p in result.refusals] == ["path"]
    assert not folder.exists() or not any(folder.iterdir())


def test_dot_dot_inside_the_path_is_not_normalised_away(tmp_path: Path) -> None:
    with pytest.raises(LoadKeyError):
        LoadKey.from_folder(f"{tmp_path}/acme/shop/../load")


@pytest.mark.parametrize("text", ["acme/shop", "acme/shop/load/extra", "acme//load", "a/b/c d"])
def test_load_key_text_is_checked(text: str) -> None:
    with pytest.raises(LoadKeyError):
        LoadKey.parse(text)


def test_load_key_round_trips() -> None:
    assert str(LoadKey.parse("acme/shop-17/2025-08-22_partnerA")) == "acme/shop-17/2025-08-22_partnerA"
