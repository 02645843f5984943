"""The local folder connector on real files: completeness, hostile names and links, copying, moving aside."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers import make_load

from loader.connectors.base import ConnectorError, Listing, Skipped
from loader.connectors.config import LocalConnectorSettings, Schedule
from loader.connectors.local import LocalFolder
from loader.intake.load_key import PART_RULE


def connector(root: Path, after_success: str = "keep") -> LocalFolder:
    cfg = LocalConnectorSettings.model_validate({"system_code": "drop", "type": "local", "path": root,
                                                 "schedule": Schedule(every_minutes=5),
                                                 "after_success": after_success})
    return LocalFolder(cfg)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def reasons(items: list[Skipped]) -> dict[str, str]:
    return {i.where: i.reason for i in items}


def test_a_complete_load_is_listed_and_copied_byte_identical(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    folder = make_load(root, partner="acme", shop="shop-17", load_id="2026-01-05_a")
    listing = connector(root).list_loads()
    assert listing.waiting == [] and listing.skipped == []
    [load] = listing.complete
    assert (load.partner_id, load.shop_id, load.load_id, load.location) == ("acme", "shop-17", "2026-01-05_a",
                                                                            str(folder))
    assert load.files == {p.name: p.stat().st_size for p in folder.iterdir()}
    into = tmp_path / "into"
    copied = connector(root).fetch(load, into)
    assert copied == into / "acme" / "shop-17" / "2026-01-05_a"
    assert files_of(copied) == files_of(folder)
    # A copy, not a link or a move: the partner's folder is as it was.
    assert files_of(folder) == files_of(copied) and not any(p.is_symlink() for p in copied.iterdir())


def test_incomplete_folders_wait(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    no_manifest = make_load(root, load_id="load-1")
    (no_manifest / "manifest.json").unlink()
    missing_csv = make_load(root, load_id="load-2")
    (missing_csv / "vehicles.csv").unlink()
    half_manifest = make_load(root, load_id="load-3")
    (half_manifest / "manifest.json").write_text('{"load_id": "load-3", "files": [')
    listing = connector(root).list_loads()
    assert listing.complete == [] and listing.skipped == []
    assert reasons(listing.waiting) == {
        str(no_manifest): "no manifest.json yet",
        str(missing_csv): "manifest.json lists vehicles.csv, not there yet as a regular file",
        str(half_manifest): "manifest.json: not valid JSON: Expecting value at line 1 column 33",
    }


def test_hostile_names_are_skipped_and_never_walked(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    make_load(root, partner="acme", load_id="good")
    make_load(root, partner="a b")
    make_load(root, shop="it's")
    make_load(root, load_id=".hidden")
    make_load(root, load_id="x" * 65)
    (root / "acme" / "shop-1" / "good" / "notes me.txt").write_text("partner notes")
    listing = connector(root).list_loads()
    assert [load.key for load in listing.complete] == ["acme/shop-1/good"]
    rule = f"the name is not allowed (path parts are {PART_RULE})"
    wheres = {
        str(root / "a b"), str(root / "acme" / "it's"), str(root / "acme" / "shop-1" / ".hidden"),
        str(root / "acme" / "shop-1" / ("x" * 65)), str(root / "acme" / "shop-1" / "good" / "notes me.txt"),
    }
    assert reasons(listing.skipped) == dict.fromkeys(wheres, rule)


def test_links_are_skipped_and_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    elsewhere = tmp_path / "elsewhere"
    secret_load = make_load(elsewhere, partner="other", shop="shop-9", load_id="secret")
    (root / "acme" / "shop-1").mkdir(parents=True)
    # A partner folder, a shop folder and a load folder that are links to loads outside the root.
    (root / "linked-partner").symlink_to(elsewhere / "other", target_is_directory=True)
    (root / "acme" / "linked-shop").symlink_to(elsewhere / "other" / "shop-9", target_is_directory=True)
    (root / "acme" / "shop-1" / "linked-load").symlink_to(secret_load, target_is_directory=True)
    # A load whose customers.csv is a link to a file outside: the load waits, the link is reported.
    linked_file = make_load(root, load_id="linked-file")
    (linked_file / "customers.csv").unlink()
    (linked_file / "customers.csv").symlink_to(secret_load / "customers.csv")
    # Not a regular file: a FIFO where a CSV file is.
    fifo = make_load(root, load_id="fifo")
    (fifo / "vehicles.csv").unlink()
    os.mkfifo(fifo / "vehicles.csv")
    listing = connector(root).list_loads()
    link = "a symbolic link, which is never followed"
    assert listing.complete == []
    assert reasons(listing.skipped) == {
        str(root / "linked-partner"): link,
        str(root / "acme" / "linked-shop"): link,
        str(root / "acme" / "shop-1" / "linked-load"): link,
        str(linked_file / "customers.csv"): link,
        str(fifo / "vehicles.csv"): "not a folder or a regular file",
    }
    assert reasons(listing.waiting) == {
        str(linked_file): "manifest.json lists customers.csv, not there yet as a regular file",
        str(fifo): "manifest.json lists vehicles.csv, not there yet as a regular file",
    }


def test_a_file_swapped_for_a_link_after_listing_is_not_copied(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    folder = make_load(root)
    outside = tmp_path / "outside.csv"
    outside.write_bytes(b"not the partner's to give\n")
    [load] = connector(root).list_loads().complete
    (folder / "customers.csv").unlink()
    (folder / "customers.csv").symlink_to(outside)
    into = tmp_path / "into"
    with pytest.raises(ConnectorError) as caught:
        connector(root).fetch(load, into)
    assert caught.value.reason == "changed while reading"
    assert not any(p.read_bytes() == outside.read_bytes() for p in into.rglob("*") if p.is_file())


def test_a_load_folder_swapped_for_a_link_after_listing_is_not_copied(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    folder = make_load(root)
    [load] = connector(root).list_loads().complete
    decoy = make_load(tmp_path / "decoy", {"customers.csv": b"external_customer_id\r\nDECOY\r\n"})
    folder.rename(tmp_path / "moved-away")
    folder.symlink_to(decoy, target_is_directory=True)
    with pytest.raises(ConnectorError):
        connector(root).fetch(load, tmp_path / "into")
    assert not any(b"DECOY" in p.read_bytes() for p in (tmp_path / "into").rglob("*") if p.is_file())


def test_move_to_processed_moves_the_folder_and_processed_is_never_a_partner(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    folder = make_load(root, partner="acme", shop="shop-1", load_id="load-1")
    before = files_of(folder)
    moving = connector(root, "move_to_processed")
    [load] = moving.list_loads().complete
    moving.after_success(load)
    moved = root / "processed" / "acme" / "shop-1" / "load-1"
    assert not folder.exists() and files_of(moved) == before
    assert moving.list_loads() == Listing()
    # Another load of the same shop joins it there; one moved before under the same name is never overwritten.
    second = make_load(root, load_id="load-2")
    [load2] = moving.list_loads().complete
    moving.after_success(load2)
    assert (root / "processed" / "acme" / "shop-1" / "load-2").is_dir() and not second.exists()
    again = make_load(root, load_id="load-1", files={"customers.csv": b"external_customer_id\r\nC9\r\n"})
    [load3] = moving.list_loads().complete
    with pytest.raises(ConnectorError) as caught:
        moving.after_success(load3)
    assert caught.value.reason == "not moved" and again.is_dir() and files_of(moved) == before


def test_keep_leaves_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    folder = make_load(root)
    keeping = connector(root)
    [load] = keeping.list_loads().complete
    keeping.after_success(load)
    assert folder.is_dir() and not (root / "processed").exists()


def test_a_processed_folder_that_is_a_link_is_not_written_through(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    folder = make_load(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "processed").symlink_to(elsewhere, target_is_directory=True)
    moving = connector(root, "move_to_processed")
    [load] = moving.list_loads().complete
    with pytest.raises(ConnectorError) as caught:
        moving.after_success(load)
    assert caught.value.reason == "not moved" and folder.is_dir() and list(elsewhere.iterdir()) == []


def test_a_root_that_went_away_is_a_connector_error(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError) as caught:
        connector(tmp_path / "gone").list_loads()
    assert caught.value.reason == "not found" and str(tmp_path / "gone") in caught.value.detail


def test_a_manifest_listing_what_is_there_is_complete_whatever_the_digests(tmp_path: Path) -> None:
    """Digests are the poll's to check (in its own copy); the listing looks at names and kinds only."""
    root = tmp_path / "drop"
    folder = make_load(root)
    body = json.loads((folder / "manifest.json").read_text())
    body["files"][0]["sha256"] = hashlib.sha256(b"something else").hexdigest()
    (folder / "manifest.json").write_text(json.dumps(body))
    assert [load.key for load in connector(root).list_loads().complete] == ["acme/shop-1/load-1"]
