"""Uploads through the dashboard: staged safely as a load folder, verified in the CLI's words, queued as submit does."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from pathlib import Path

import pytest

from loader.cli import main
from loader.connectors.upload import (
    UploadedFile,
    UploadError,
    draft_manifest,
    stage_upload,
    submit_upload,
    upload_limit_bytes,
    verify_upload,
    write_manifest,
)
from loader.contracts import load_contract
from loader.database import Warehouse
from loader.runs.registry import ensure_registry
from loader.samples.sms_v1 import ExportResult, ExportSpec, write_export
from loader.settings import LoaderSettings

MB = 1 << 20
LIMIT = 5 * MB
KEY = ("acme", "shop-7", "2026-01-05_upload")


@pytest.fixture
def sample(tmp_path: Path) -> ExportResult:
    return write_export(tmp_path / "export", ExportSpec(customers=12, load_id=KEY[2], seed=5))


def sample_files(sample: ExportResult, *, manifest: bool = True) -> list[UploadedFile]:
    return [UploadedFile(name=p.name, data=p.read_bytes()) for p in sorted(sample.folder.iterdir())
            if manifest or p.name != "manifest.json"]


def zipped(entries: dict[str, bytes], *, links: tuple[str, ...] = ()) -> UploadedFile:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "../../../../etc/passwd")
    return UploadedFile(name="export.zip", data=out.getvalue())


def stage(files: list[UploadedFile], into: Path, key: tuple[str, str, str] = KEY, limit: int = LIMIT) -> Path:
    return stage_upload(files, *key, into, limit_bytes=limit)


def settings(tmp_path: Path) -> LoaderSettings:
    return LoaderSettings(partners_file=tmp_path / "no-partners.yml", home=tmp_path / "home")


def left_behind(into: Path) -> list[str]:
    return sorted(str(p.relative_to(into)) for p in into.rglob("*") if p.is_file()) if into.exists() else []


def test_loose_files_are_staged_as_the_load_folder(tmp_path: Path, sample: ExportResult) -> None:
    into = tmp_path / "staged"
    folder = stage(sample_files(sample), into)
    assert folder == into / "acme" / "shop-7" / "2026-01-05_upload"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {p.name: p.read_bytes()
                                                                  for p in sample.folder.iterdir()}
    # Nothing else: no scratch folder beside it.
    assert [p.name for p in folder.parent.iterdir()] == ["2026-01-05_upload"]


@pytest.mark.parametrize("prefix", ["", "2026-01-05_upload/"])
def test_a_zip_with_files_at_its_root_or_in_one_folder(tmp_path: Path, sample: ExportResult, prefix: str) -> None:
    entries = {prefix + f.name: f.data for f in sample_files(sample)}
    # What macOS's Finder adds to a zip: left out.
    entries["__MACOSX/sample/._customers.csv"] = b"\x00\x05\x16\x07"
    entries[prefix + ".DS_Store"] = b"\x00\x00\x00\x01Bud1"
    folder = stage([zipped(entries)], tmp_path / "staged")
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.name for f in sample_files(sample))
    assert (folder / "customers.csv").read_bytes() == (sample.folder / "customers.csv").read_bytes()


@pytest.mark.parametrize(("entries", "links", "refused"), [
    ({"../customers.csv": b"x"}, (), r"export\.zip: '\.\./customers\.csv' leads out of the folder"),
    ({"sample/../../../x.csv": b"x"}, (), r"leads out of the folder"),
    ({"/etc/cron.d/x.csv": b"x"}, (), r"'/etc/cron\.d/x\.csv' is an absolute path"),
    ({"C:/x.csv": b"x"}, (), r"is an absolute path"),
    ({"..\\..\\x.csv": b"x"}, (), r"has a backslash"),
    ({"customers.csv": b"x"}, ("vehicles.csv",), r"'vehicles\.csv' is a symbolic link"),
    ({"a/b/customers.csv": b"x"}, (), r"'a/b/customers\.csv' is in a folder inside a folder"),
    ({"a/b/": b""}, (), r"'a/b/' is in a folder inside a folder"),
    ({"a/customers.csv": b"x", "b/vehicles.csv": b"x"}, (), r"holds more than one folder \('a', 'b'\)"),
    ({"customers.csv": b"x", "a/vehicles.csv": b"x"}, (), r"holds files both at its root"),
    ({"a/customers.csv": b"x", "a/Customers.csv": b"x"}, (), r"'customers\.csv' and 'Customers\.csv' differ only"),
    ({"a/.hidden": b"x"}, (), r"'\.hidden' is not a plain file name"),
    ({"a/cust omers.csv": b"x"}, (), r"'cust omers\.csv' is not a plain file name"),
    ({"a/": b""}, (), r"export\.zip: holds no files"),
])
def test_hostile_zips_are_refused_and_leave_nothing(tmp_path: Path, entries: dict[str, bytes],
                                                    links: tuple[str, ...], refused: str) -> None:
    into = tmp_path / "staged"
    with pytest.raises(UploadError, match=refused):
        stage([zipped(entries, links=links)], into)
    assert left_behind(into) == []
    assert not (into / "acme" / "shop-7" / "2026-01-05_upload").exists()


def test_a_zip_listing_one_name_twice_is_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("customers.csv", b"first")
        archive.writestr("customers.csv", b"second")
    with pytest.raises(UploadError, match=r"'customers\.csv' appears more than once"):
        stage([UploadedFile(name="x.zip", data=out.getvalue())], tmp_path / "staged")


def test_a_zip_bomb_is_stopped_at_the_limit(tmp_path: Path) -> None:
    # 64 MB of zeros in about 64 KB: the limit is counted on what comes out, as it comes out.
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("customers.csv", "w") as entry:
        for _ in range(64):
            entry.write(bytes(MB))
    bomb = UploadedFile(name="bomb.zip", data=out.getvalue())
    assert len(bomb.data) < LIMIT
    into = tmp_path / "staged"
    with pytest.raises(UploadError, match=r"bomb\.zip: its files come to more than 5 MB uncompressed; an upload may"
                                          r" hold at most 5 MB \(setting LOADER_UPLOAD_LIMIT_MB\)"):
        stage([bomb], into)
    assert left_behind(into) == []


def test_a_zip_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match=r"broken\.zip: not a zip file that can be read"):
        stage([UploadedFile(name="broken.zip", data=b"PK\x03\x04 not really")], tmp_path / "staged")


@pytest.mark.parametrize(("files", "refused"), [
    ([UploadedFile(name="../customers.csv", data=b"x")], r"'\.\./customers\.csv' leads out of the folder"),
    ([UploadedFile(name="/tmp/customers.csv", data=b"x")], r"is an absolute path"),
    ([UploadedFile(name="..\\customers.csv", data=b"x")], r"has a backslash"),
    ([UploadedFile(name="sub/customers.csv", data=b"x")], r"'sub/customers\.csv' is in a folder"),
    ([UploadedFile(name=".manifest.json", data=b"x")], r"is not a plain file name"),
    ([UploadedFile(name="customers.csv", data=b"x")] * 2, r"'customers\.csv' appears more than once"),
    ([UploadedFile(name="customers.csv", data=b"x"), zipped({"a.csv": b"x"})],
     r"export\.zip: upload one zip of the load folder, or the folder's files, not both"),
    ([UploadedFile(name="customers.csv", data=bytes(3 * MB)), UploadedFile(name="vehicles.csv", data=bytes(3 * MB))],
     r"the files come to 6 MB; an upload may hold at most 5 MB \(setting LOADER_UPLOAD_LIMIT_MB\)"),
    ([], r"nothing was uploaded"),
])
def test_loose_files_that_are_refused(tmp_path: Path, files: list[UploadedFile], refused: str) -> None:
    into = tmp_path / "staged"
    with pytest.raises(UploadError, match=refused):
        stage(files, into)
    assert left_behind(into) == []


@pytest.mark.parametrize(("key", "refused"), [
    (("../etc", "shop-7", "l1"), r"partner_id '\.\./etc' is not allowed"),
    (("acme", "shop 7", "l1"), r"shop_id 'shop 7' is not allowed"),
    (("acme", "shop-7", ".hidden"), r"load_id '\.hidden' is not allowed"),
    (("acme", "shop-7", ""), r"load_id '' is not allowed"),
])
def test_partner_shop_and_load_follow_the_load_key_rules(tmp_path: Path, key: tuple[str, str, str],
                                                         refused: str) -> None:
    with pytest.raises(UploadError, match=refused):
        stage([UploadedFile(name="customers.csv", data=b"x")], tmp_path / "staged", key)
    assert left_behind(tmp_path / "staged") == []


def test_an_upload_of_a_load_already_staged_is_refused(tmp_path: Path, sample: ExportResult) -> None:
    into = tmp_path / "staged"
    stage(sample_files(sample), into)
    with pytest.raises(UploadError, match=r"already exists: an upload of load acme/shop-7/2026-01-05_upload"):
        stage(sample_files(sample), into)


def test_the_drafted_manifest_counts_and_hashes_as_the_export_did(tmp_path: Path, sample: ExportResult) -> None:
    folder = stage(sample_files(sample, manifest=False), tmp_path / "staged")
    assert verify_upload(folder, settings(tmp_path)) == [
        "  [manifest] manifest.json: manifest.json is missing (it is written last: is the folder complete?)"]
    draft = draft_manifest(folder, load_contract("sms_v1"))
    # The sample writer counted its own records as it wrote them.
    written = {e.file: sample.rows[e.name] for e in load_contract("sms_v1").entities}
    assert draft["load_id"] == "2026-01-05_upload" and draft["contract"] == "sms_v1"
    assert [f["name"] for f in draft["files"]] == list(written)
    for entry in draft["files"]:
        assert entry["rows"] == written[entry["name"]], entry["name"]
        assert entry["sha256"] == hashlib.sha256((folder / entry["name"]).read_bytes()).hexdigest()
    assert json.loads((sample.folder / "manifest.json").read_text())["files"] == draft["files"]
    write_manifest(folder, draft)
    assert json.loads((folder / "manifest.json").read_text()) == draft
    assert verify_upload(folder, settings(tmp_path)) == []


def test_a_manifest_that_is_not_one_is_not_written(tmp_path: Path, sample: ExportResult) -> None:
    folder = stage(sample_files(sample, manifest=False), tmp_path / "staged")
    draft = draft_manifest(folder)
    draft["files"][0]["rows"] = "12"
    with pytest.raises(UploadError, match=r"manifest\.json: files\.0\.rows: Input should be a valid integer"):
        write_manifest(folder, draft)
    assert not (folder / "manifest.json").exists()


def test_a_tampered_file_gets_the_messages_loader_run_prints(db: Warehouse, tmp_path: Path, sample: ExportResult,
                                                             capsys) -> None:
    files = sample_files(sample)
    extra = b"C999,Late,Addition,late@example.com\r\n"
    tampered = [UploadedFile(name=f.name, data=f.data + extra) if f.name == "customers.csv" else f for f in files]
    folder = stage(tampered, tmp_path / "staged")
    problems = verify_upload(folder, settings(tmp_path))
    customers = (folder / "customers.csv").read_bytes()
    promised = next(f for f in json.loads((folder / "manifest.json").read_text())["files"]
                    if f["name"] == "customers.csv")
    assert problems == [
        f"  [digest] customers.csv: sha256 is {hashlib.sha256(customers).hexdigest()},"
        f" manifest.json says {promised['sha256']}",
        f"  [row_count] customers.csv: has {sample.rows['customers'] + 1} data records,"
        f" manifest.json says {sample.rows['customers']}",
    ]
    capsys.readouterr()
    assert main(["run", str(folder)]) == 2
    out = capsys.readouterr().out.splitlines()
    refused = out.index("the folder was refused; nothing was landed:")
    assert out[refused + 1:refused + 1 + len(problems)] == problems


def test_submit_upload_queues_a_run_that_status_shows(db: Warehouse, tmp_path: Path, sample: ExportResult,
                                                      capsys) -> None:
    ensure_registry(db)
    folder = stage(sample_files(sample), tmp_path / "staged")
    inbox = tmp_path / "inbox"
    run_id = submit_upload(db, folder, "dashboard:alice", inbox=inbox)
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    [run] = json.loads(capsys.readouterr().out)
    assert (run["run_id"], run["load"], run["status"], run["triggered_by"], run["contract"]) == (
        run_id, "acme/shop-7/2026-01-05_upload", "queued", "dashboard:alice", "sms_v1")
    # Its files are kept in the inbox: the staged folder may go.
    [kept] = [p for p in inbox.rglob("2026-01-05_upload") if p.is_dir()]
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == {p.name: p.read_bytes() for p in folder.iterdir()}


def test_submit_upload_refuses_a_folder_without_a_manifest(db: Warehouse, tmp_path: Path,
                                                           sample: ExportResult) -> None:
    folder = stage(sample_files(sample, manifest=False), tmp_path / "staged")
    with pytest.raises(UploadError, match=r"there is no manifest\.json"):
        submit_upload(db, folder, "dashboard:alice", inbox=tmp_path / "inbox")
    assert not (tmp_path / "inbox").exists()


def test_the_limit_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADER_UPLOAD_LIMIT_MB", "3")
    assert upload_limit_bytes(LoaderSettings()) == 3 * MB
    monkeypatch.setenv("LOADER_UPLOAD_LIMIT_MB", "0")
    with pytest.raises(ValueError, match="upload_limit_mb"):
        LoaderSettings()
