"""Review before publish: thresholds hold a load, diff previews it, approve publishes exactly it, reject discards it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import LOADER, make_load, query

from loader.cli import main
from loader.database import Warehouse
from loader.intake.load_key import LoadKey
from loader.runs import review


def customers(rows: list[tuple[str, str, str]]) -> bytes:
    """customers.csv of (id, last name, email) rows; an email without @ is rejected."""
    body = "".join(f"{cid},Ann,{last},{email}\r\n" for cid, last, email in rows)
    return ("external_customer_id,first_name,last_name,email\r\n" + body).encode()


BASE = [(f"C{i}", f"Last{i}", f"c{i}@example.com") for i in range(1, 11)]


def write_partners(tmp_path: Path, text: str) -> None:
    (tmp_path / "partners.yml").write_text(text, encoding="utf-8")


def run(folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["run", str(folder)])
    out = capsys.readouterr()
    return code, out.out + out.err


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


def production(db: Warehouse, shop: str = "shop-1") -> list[tuple[object, ...]]:
    return query(db, "select external_id, last_name, email, load_id from prod_sms.customers where shop_id = %s"
                     " order by external_id", (shop,))


def status_of(db: Warehouse, load: str) -> str:
    partner, shop, load_id = load.split("/")
    [(status,)] = query(db, "select status from loader_registry.runs where partner_id = %s and shop_id = %s"
                            " and load_id = %s order by run_id desc limit 1", (partner, shop, load_id))
    return str(status)


def held_base(db: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """shop-1 has the ten BASE customers in production; load-2 changes three e-mails and adds two, and is held."""
    assert run(make_load(tmp_path, {"customers.csv": customers(BASE)}), capsys)[0] == 0
    write_partners(tmp_path, "partners:\n  acme:\n    thresholds: {max_update_pct: 20}\n")
    changed = [(c, last, f"new{c}@example.com" if c in ("C2", "C5", "C9") else email) for c, last, email in BASE]
    changed += [("C11", "Last11", "c11@example.com"), ("C12", "Last12", "c12@example.com")]
    folder = make_load(tmp_path, {"customers.csv": customers(changed)}, load_id="load-2")
    code, out = run(folder, capsys)
    assert code == 3, out
    assert "held for review: customers max_update_pct: 30.00% > 20%" in out
    return folder


def test_update_share_over_the_limit_holds_the_load_and_publishes_nothing(db: Warehouse, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    held_base(db, tmp_path, capsys)
    before = production(db)
    assert [r[3] for r in before] == ["load-1"] * 10
    assert status_of(db, "acme/shop-1/load-2") == "needs_review"
    code, out = cli(["report", "acme/shop-1/load-2", "--json"], capsys)
    body = json.loads(out)
    assert code == 0 and body["status"] == "needs_review"
    assert body["held_because"] == [{"threshold": "max_update_pct", "entity": "customers", "value": 30.0,
                                     "limit": 20.0}]
    counts = body["entities"]["customers"]
    assert (counts["landed_rows"], counts["inserted"], counts["updated"], counts["unchanged"]) == (12, 2, 3, 7)
    assert production(db) == before


def test_a_share_at_the_limit_is_not_held_and_shop_overrides_apply(db: Warehouse, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """30% updated: held by a limit of 29 (shop-a's override), not by 30 (the partner's); 10% rejected likewise."""
    write_partners(tmp_path, "partners:\n  acme:\n    thresholds: {max_update_pct: 30, max_reject_pct: 10}\n"
                             "    shops:\n      shop-a: {thresholds: {max_update_pct: 29}}\n"
                             "      shop-c: {thresholds: {max_reject_pct: 9.9}}\n")
    changed = [(c, last, f"x{email}" if c in ("C1", "C2", "C3") else email) for c, last, email in BASE]
    for shop in ("shop-a", "shop-b"):
        assert run(make_load(tmp_path, {"customers.csv": customers(BASE)}, shop=shop), capsys)[0] == 0
        code, out = run(make_load(tmp_path, {"customers.csv": customers(changed)}, shop=shop, load_id="load-2"),
                        capsys)
        assert code == (3 if shop == "shop-a" else 0), out
    assert status_of(db, "acme/shop-a/load-2") == "needs_review"
    assert status_of(db, "acme/shop-b/load-2") == "completed"
    assert query(db, "select count(*) from prod_sms.customers where shop_id = 'shop-a' and load_id = 'load-2'") == [
        (0,)]
    assert query(db, "select count(*) from prod_sms.customers where shop_id = 'shop-b' and load_id = 'load-2'") == [
        (3,)]
    one_bad = [(c, last, "not-an-email" if c == "C4" else email) for c, last, email in BASE]
    for shop, expected in (("shop-c", 3), ("shop-d", 0)):
        code, out = run(make_load(tmp_path, {"customers.csv": customers(one_bad)}, shop=shop), capsys)
        assert code == expected, out
    [(held,)] = query(db, "select held_because from loader_registry.runs where shop_id = 'shop-c'")
    assert held == [{"threshold": "max_reject_pct", "entity": "customers", "value": 10.0, "limit": 9.9}]
    assert query(db, "select count(*) from prod_sms.customers where shop_id = 'shop-c'") == [(0,)]
    assert query(db, "select count(*) from prod_sms.customers where shop_id = 'shop-d'") == [(9,)]


def test_diff_shows_each_change_and_approve_publishes_exactly_that(db: Warehouse, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    held_base(db, tmp_path, capsys)
    code, out = cli(["diff", "acme/shop-1/load-2"], capsys)
    assert code == 0, out
    assert "customers: 2 to insert, 3 to update, 7 unchanged" in out
    assert "3 customers change email, e.g. c2@example.com -> newc2@example.com" in out
    assert "~ C5 (row 5): email: c5@example.com -> newc5@example.com" in out
    assert "+ C11 (row 11): first_name=Ann, last_name=Last11, email=c11@example.com" in out
    code, out = cli(["diff", "acme/shop-1/load-2", "--json", "--limit", "1"], capsys)
    limited = json.loads(out)["entities"]["customers"]
    assert len(limited["updates"]) == 1 and len(limited["inserts"]) == 1 and limited["update"] == 3
    code, out = cli(["diff", "acme/shop-1/load-2", "--json", "--entity", "customers"], capsys)
    preview = json.loads(out)
    assert list(preview["entities"]) == ["customers"]
    shown = preview["entities"]["customers"]
    assert shown["columns"] == {"email": 3}
    assert shown["changed_since_plan"] == 0

    code, out = cli(["approve", "acme/shop-1/load-2", "--by", "maria"], capsys)
    assert code == 0, out
    assert f"customers: plan checksum {shown['checksum']}" in out
    after = {r[0]: r for r in production(db)}
    for update in shown["updates"]:
        assert after[update["external_id"]][2] == update["changes"]["email"]["after"]
        assert after[update["external_id"]][3] == "load-2"
    for insert in shown["inserts"]:
        assert after[insert["external_id"]][1:3] == (insert["values"]["last_name"], insert["values"]["email"])
    untouched = {c for c in after if c not in {u["external_id"] for u in shown["updates"]}
                 | {i["external_id"] for i in shown["inserts"]}}
    assert len(after) == 12 and {after[c][3] for c in untouched} == {"load-1"}
    code, out = cli(["show", "acme/shop-1/load-2", "--json"], capsys)
    body = json.loads(out)
    assert body["status"] == "completed" and body["held_because"] is not None
    assert [(h["status"], h["by"]) for h in body["history"]][-2:] == [("needs_review", None), ("completed", "maria")]
    assert "approved by maria" in body["history"][-1]["message"]
    code, out = cli(["report", "acme/shop-1/load-2", "--json"], capsys)
    assert json.loads(out)["entities"]["customers"]["updated"] == 3
    # Decided once: approving again, or rejecting now, is refused.
    assert cli(["approve", "acme/shop-1/load-2"], capsys)[0] == 1
    code, out = cli(["reject", "acme/shop-1/load-2"], capsys)
    assert code == 1 and "is completed, not held for review" in out
    assert query(db, "select count(*) from pg_tables where schemaname = 'loader_review'") == [(0,)]


@pytest.mark.parametrize("change", [
    "update prod_sms.customers set email = 'edited@example.com' where external_id = 'C7'",
    "update prod_sms.customers set last_name = 'Edited' where external_id = 'C2'",
    "delete from prod_sms.customers where external_id = 'C3'",
])
def test_approve_refuses_when_production_changed_underneath(db: Warehouse, tmp_path: Path, change: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    held_base(db, tmp_path, capsys)
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("set session_replication_role = replica")
        cur.execute(change)
    edited = production(db)
    code, out = cli(["diff", "acme/shop-1/load-2", "--json"], capsys)
    assert json.loads(out)["entities"]["customers"]["changed_since_plan"] == 1
    code, out = cli(["approve", "acme/shop-1/load-2", "--by", "maria"], capsys)
    assert code == 1
    assert "production changed since load acme/shop-1/load-2" in out and "customers: 1 row(s)" in out, out
    assert "Traceback" not in out
    assert production(db) == edited
    assert status_of(db, "acme/shop-1/load-2") == "needs_review"


def test_approve_refuses_a_plan_that_is_not_the_reviewed_one(db: Warehouse, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    held_base(db, tmp_path, capsys)
    before = production(db)
    [(run_id,)] = query(db, "select run_id from loader_registry.runs where load_id = 'load-2'")
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(f"update loader_review.run_{run_id}__customers set email = 'evil@example.com'"
                    " where external_id = 'C2'")
    code, out = cli(["approve", "acme/shop-1/load-2"], capsys)
    assert code == 1 and "is not the one that was reviewed" in out, out
    assert production(db) == before


def test_reject_leaves_production_unchanged(db: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    held_base(db, tmp_path, capsys)
    before = query(db, "select * from prod_sms.customers order by id")
    crosswalk = query(db, "select * from prod_sms.id_crosswalk order by internal_id")
    code, out = cli(["reject", "acme/shop-1/load-2", "--by", "maria", "--reason", "the e-mails look wrong"], capsys)
    assert code == 0, out
    assert query(db, "select * from prod_sms.customers order by id") == before
    assert query(db, "select * from prod_sms.id_crosswalk order by internal_id") == crosswalk
    code, out = cli(["show", "acme/shop-1/load-2", "--json"], capsys)
    last = json.loads(out)["history"][-1]
    assert (last["status"], last["by"], last["message"]) == ("rejected", "maria",
                                                             "rejected by maria: the e-mails look wrong")
    assert query(db, "select count(*) from pg_tables where schemaname = 'loader_review'") == [(0,)]
    code, out = cli(["diff", "acme/shop-1/load-2"], capsys)
    assert code == 1 and "is rejected, not held for review" in out


def test_a_held_load_holds_its_shop_but_not_other_shops(db: Warehouse, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    held_base(db, tmp_path, capsys)
    later = make_load(tmp_path, {"customers.csv": customers(BASE[:3])}, load_id="load-3")
    other = make_load(tmp_path, {"customers.csv": customers(BASE)}, shop="shop-2")
    env = {**os.environ}
    for folder in (later, other):
        proc = subprocess.run([str(LOADER), "submit", str(folder)], env=env, capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, proc.stderr
    worker = subprocess.run([str(LOADER), "worker", "--once", "--concurrency", "1"], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert status_of(db, "acme/shop-2/load-1") == "completed"
    assert status_of(db, "acme/shop-1/load-3") == "queued"
    # `loader run` of a load behind the held one says so instead of waiting for ever.
    code, out = run(make_load(tmp_path, {"customers.csv": customers(BASE[:2])}, load_id="load-4"), capsys)
    assert code == 3 and "queued behind load acme/shop-1/load-2" in out, out
    assert cli(["approve", "acme/shop-1/load-2"], capsys)[0] == 0
    worker = subprocess.run([str(LOADER), "worker", "--once", "--concurrency", "1"], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert status_of(db, "acme/shop-1/load-3") == "completed"
    assert status_of(db, "acme/shop-1/load-4") == "completed"
    started = query(db, "select r.load_id, min(h.history_id) from loader_registry.runs r"
                        " join loader_registry.run_status_history h using (run_id)"
                        " where r.shop_id = 'shop-1' and h.status = 'running' group by r.load_id order by 2")
    assert [r[0] for r in started] == ["load-1", "load-2", "load-3", "load-4"]


def test_rerun_of_a_held_load_plans_it_again(db: Warehouse, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    held_base(db, tmp_path, capsys)
    write_partners(tmp_path, "partners:\n  acme:\n    thresholds: {max_update_pct: 50}\n")
    code, out = cli(["rerun", "acme/shop-1/load-2"], capsys)
    assert code == 0, out
    assert query(db, "select held_because from loader_registry.runs where load_id = 'load-2'") == [(None,)]
    assert query(db, "select count(*) from prod_sms.customers where load_id = 'load-2'") == [(5,)]
    assert query(db, "select count(*) from pg_tables where schemaname = 'loader_review'") == [(0,)]


def test_the_change_preview_pages_through_every_change_and_held_runs_lists_the_load(
        db: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """held_base: load-2 inserts C11 and C12 and changes the e-mails of C2, C5 and C9 (rows 11, 12; 2, 5, 9)."""
    held_base(db, tmp_path, capsys)
    key = LoadKey.parse("acme/shop-1/load-2")
    whole = review.diff(db, key)
    assert len(whole.entities["customers"].updates) == 3
    for per_page in (1, 2):
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for offset in range(0, 4, per_page):
            page = review.diff(db, key, "customers", per_page, offset=offset).entities["customers"]
            assert (page.insert, page.update, page.unchanged) == (2, 3, 7)
            assert len(page.inserts) <= per_page and len(page.updates) <= per_page
            inserts += page.inserts
            updates += page.updates
        assert [(r["external_id"], r["row_number"]) for r in inserts] == [("C11", 11), ("C12", 12)]
        assert [(r["external_id"], r["row_number"]) for r in updates] == [("C2", 2), ("C5", 5), ("C9", 9)]
        assert updates == whole.entities["customers"].updates
        assert all(u["changes"]["email"]["after"] == f"new{u['external_id'].lower()}@example.com" for u in updates)
    counts_only = review.diff(db, key, None, 0).entities["customers"]
    assert counts_only.inserts == counts_only.updates == [] and counts_only.columns == {"email": 3}
    with pytest.raises(ValueError, match="offset must be 0 or more"):
        review.diff(db, key, offset=-1)

    with contextlib.closing(db.connect()) as conn:
        held = review.held_runs(conn, 10, 0)
        assert review.held_runs(conn, 10, 1) == []
    [(run_id,)] = query(db, "select run_id from loader_registry.runs where load_id = 'load-2'")
    assert [(r.run_id, r.load, r.status) for r in held] == [(run_id, "acme/shop-1/load-2", "needs_review")]
    assert held[0].held_because == [{"threshold": "max_update_pct", "entity": "customers", "value": 30.0,
                                     "limit": 20.0}]
