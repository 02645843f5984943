"""Every dashboard page, for every role, through Streamlit's AppTest against a real warehouse with real loads.

Tests that act (approve, reject, rerun, users) come after the ones that only read, and each acts on a load or a
user no later test relies on.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from dashboard_site import APP, PASSWORDS, Site, signed_in
from helpers import LOADER, make_load, query
from streamlit.testing.v1 import AppTest

from loader.samples.sms_v1 import ExportSpec, write_export

VIEWER_PAGES = ["pages/runs.py", "pages/run_detail.py", "pages/trends.py", "pages/imported.py", "pages/connectors.py"]
OPERATOR_PAGES = ["pages/upload.py", "pages/review.py"]
ADMIN_PAGES = ["pages/users.py"]


def texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text] + [m.value for m in at.markdown] + [c.value for c in at.caption]


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def button(at: AppTest, label: str) -> Any:
    found = [b for b in at.button if b.label == label]
    assert found, f"no {label!r} button; buttons: {[b.label for b in at.button]}"
    return found[0]


def labelled(widgets: Any, label: str) -> Any:
    found = [w for w in widgets if w.label == label]
    assert found, f"no {label!r}; have {[w.label for w in widgets]}"
    return found[0]


def table(at: AppTest, *columns: str) -> Any:
    """The first table that has these columns, as a pandas DataFrame."""
    for frame in at.dataframe:
        if set(columns) <= set(frame.value.columns):
            return frame.value
    raise AssertionError(f"no table with columns {columns}; have {[list(f.value.columns) for f in at.dataframe]}")


def choose(box: Any, part: str) -> Any:
    """Select the option of a selectbox whose shown text contains `part`."""
    return box.select_index(next(i for i, o in enumerate(box.options) if part in o))


def run_status(site: Site, load: str) -> str:
    partner, shop, load_id = load.split("/")
    [(status,)] = query(site.warehouse, "select status from loader_registry.runs where partner_id = %s and shop_id = %s"
                                        " and load_id = %s order by run_id desc limit 1", (partner, shop, load_id))
    return str(status)


def run_id_of(site: Site, load: str) -> int:
    partner, shop, load_id = load.split("/")
    [(run_id,)] = query(site.warehouse, "select max(run_id) from loader_registry.runs where partner_id = %s and"
                                        " shop_id = %s and load_id = %s", (partner, shop, load_id))
    return int(str(run_id))


def test_the_login_form_refuses_a_wrong_password_and_lets_the_right_one_in(site: Site) -> None:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert [t.label for t in at.text_input] == ["Username", "Password"]
    assert not [t.value for t in at.title if t.value == "Runs"]
    labelled(at.text_input, "Username").input("vera")
    labelled(at.text_input, "Password").input("not her password")
    button(at, "Log in").click().run()
    assert errors(at) == ["wrong username or password"]
    labelled(at.text_input, "Password").input(PASSWORDS["vera"])
    button(at, "Log in").click().run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Runs"]


def test_a_forged_token_is_not_a_login(site: Site) -> None:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["loader_session_token"] = "made-up"
    at.run()
    assert [t.label for t in at.text_input] == ["Username", "Password"]


@pytest.mark.parametrize(("user", "pages"), [
    ("vera", VIEWER_PAGES),
    ("otto", VIEWER_PAGES + OPERATOR_PAGES),
    ("ada", VIEWER_PAGES + OPERATOR_PAGES + ADMIN_PAGES),
])
def test_each_role_opens_its_pages(site: Site, user: str, pages: list[str]) -> None:
    for page in pages:
        at = signed_in(site, user, page)
        assert not at.exception, (page, at.exception)
        assert not errors(at), (page, errors(at))
        assert at.title, page


@pytest.mark.parametrize(("user", "page", "needed"), [
    ("vera", "pages/upload.py", "operator"), ("vera", "pages/review.py", "operator"),
    ("vera", "pages/users.py", "admin"), ("otto", "pages/users.py", "admin"),
])
def test_a_page_above_the_role_is_not_offered_and_refuses_when_run_anyway(site: Site, user: str, page: str,
                                                                           needed: str) -> None:
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        signed_in(site, user, page)
    # The page's own script, run for this user as a crafted request would run it: it checks the role itself.
    at = signed_in(site, user)
    direct = AppTest.from_file(str(APP.parent / page), default_timeout=120)
    direct.session_state["loader_session_token"] = at.session_state["loader_session_token"]
    direct.run()
    assert not direct.exception
    assert any(f"{needed} role needed to open this page" in e for e in errors(direct)), errors(direct)
    assert not direct.button and not direct.get("file_uploader") and not direct.dataframe


def test_the_runs_page_lists_every_run_and_filters_by_status(site: Site) -> None:
    at = signed_in(site, "vera")
    [(total,)] = query(site.warehouse, "select count(*) from loader_registry.runs")
    assert f"{total:,} run(s)" in texts(at)
    shown = texts(at)
    for load in (site.sample, site.held, site.held_rejects):
        assert load in shown
    labelled(at.multiselect, "Status").select("needs_review").run()
    shown = texts(at)
    assert "2 run(s)" in shown
    assert site.held in shown and site.held_rejects in shown and site.sample not in shown


def test_run_detail_shows_the_load_key_the_reconciled_ledger_and_the_exceptions(site: Site) -> None:
    run_id = run_id_of(site, site.sample)
    at = signed_in(site, "vera", "pages/run_detail.py", run=str(run_id))
    assert not at.exception and not errors(at)
    assert site.sample in [t.value for t in at.text]
    ledger = table(at, "entity", "reconciles")
    rows = query(site.warehouse, "select entity, manifest_rows, rejected_rows from loader_registry.run_ledger"
                                 " where run_id = %s", (run_id,))
    assert sorted(zip(ledger["entity"], ledger["manifest_rows"], ledger["rejected_rows"], strict=True)) == sorted(
        (str(e), int(str(m)), int(str(r))) for e, m, r in rows)
    assert set(ledger["reconciles"]) == {"✔"}
    groups = table(at, "entity", "rule", "severity", "rows")
    expected = query(site.warehouse, "select entity, rule, severity, count(*) from loader_registry.run_exceptions"
                                     " where run_id = %s group by 1, 2, 3", (run_id,))
    assert expected, "the sample has planted errors"
    assert sorted(zip(groups["entity"], groups["rule"], groups["severity"], groups["rows"], strict=True)) == sorted(
        (str(e), str(r), str(s), int(str(n))) for e, r, s, n in expected)
    [(count,)] = query(site.warehouse, "select count(*) from loader_registry.run_exceptions where run_id = %s",
                       (run_id,))
    assert len(table(at, "row_number", "line_number")) == min(int(str(count)), 100)
    assert [b.label for b in at.get("download_button")] == [
        "Download the ledger (CSV)", "Download the exceptions of every entity (CSV for the partner)"]


def test_run_detail_filters_exceptions_by_entity(site: Site) -> None:
    run_id = run_id_of(site, site.sample)
    at = signed_in(site, "vera", "pages/run_detail.py", run=str(run_id))
    entity = str(table(at, "entity", "rule", "rows")["entity"][0])
    labelled(at.selectbox, "Entity").select(entity).run()
    [(count,)] = query(site.warehouse, "select count(*) from loader_registry.run_exceptions where run_id = %s"
                                       " and entity = %s", (run_id, entity))
    shown = table(at, "row_number", "line_number")
    assert set(shown["entity"]) == {entity} and len(shown) == min(int(str(count)), 100)


def test_a_viewer_has_no_rerun_button_and_an_operator_has(site: Site) -> None:
    run_id = run_id_of(site, site.held)
    viewer = signed_in(site, "vera", "pages/run_detail.py", run=str(run_id))
    assert "Rerun from the kept files" not in [b.label for b in viewer.button]
    operator = signed_in(site, "otto", "pages/run_detail.py", run=str(run_id))
    button(operator, "Rerun from the kept files")


def test_review_shows_why_a_load_is_held_and_its_changes(site: Site) -> None:
    at = signed_in(site, "otto", "pages/review.py")
    assert not at.exception and not errors(at)
    choose(labelled(at.selectbox, "Load to review"), site.held).run()
    assert "**Held because:** customers max_update_pct: 30.00% > 20%" in texts(at)
    preview = table(at, "action", "external_id", "now", "after")
    changed = {(str(r["external_id"]), str(r["now"]), str(r["after"])) for _, r in preview.iterrows()
               if r["action"] == "update"}
    # Staging lowercases e-mail addresses: the plan holds them as production will.
    assert changed == {(c, f"{c.lower()}@example.com", f"new{c.lower()}@example.com") for c in ("C2", "C5", "C9")}


def test_a_demoted_operators_approve_is_refused_by_the_server(site: Site) -> None:
    at = signed_in(site, "otto", "pages/review.py")
    choose(labelled(at.selectbox, "Load to review"), site.held).run()
    approve = button(at, "Approve and publish")
    # The page was drawn for an operator; the role changes before the click arrives, as a forged event would.
    query(site.warehouse, "update loader_registry.dashboard_users set role = 'viewer' where name = 'otto'")
    try:
        approve.click().run()
        assert any("operator role needed" in e for e in errors(at)), errors(at)
        assert run_status(site, site.held) == "needs_review"
    finally:
        query(site.warehouse, "update loader_registry.dashboard_users set role = 'operator' where name = 'otto'")


def test_an_operator_approves_a_held_load_and_it_is_recorded(site: Site) -> None:
    at = signed_in(site, "otto", "pages/review.py")
    choose(labelled(at.selectbox, "Load to review"), site.held_rejects).run()
    labelled(at.text_input, "Reason (recorded with your name)").input("checked with the partner").run()
    button(at, "Approve and publish").click().run()
    assert not errors(at), errors(at)
    assert run_status(site, site.held_rejects) == "completed"
    [notice] = [s.value for s in at.success]
    assert notice.startswith(f"Published {site.held_rejects} (run ")
    assert not any(site.held_rejects in option for option in labelled(at.selectbox, "Load to review").options)
    run_id = run_id_of(site, site.held_rejects)
    assert query(site.warehouse, "select changed_by from loader_registry.run_status_history where run_id = %s"
                                 " order by history_id desc limit 1", (run_id,)) == [("dashboard:otto",)]
    assert query(site.warehouse, "select user_name, action, target, detail from loader_registry.dashboard_actions"
                                 " where action = 'approve'") == [("otto", "approve", site.held_rejects,
                                                                   "checked with the partner")]


def test_an_operator_reruns_a_held_load(site: Site) -> None:
    run_id = run_id_of(site, site.held)
    at = signed_in(site, "otto", "pages/run_detail.py", run=str(run_id))
    button(at, "Rerun from the kept files").click().run()
    assert not errors(at), errors(at)
    assert run_status(site, site.held) == "queued"
    assert query(site.warehouse, "select detail from loader_registry.run_status_history where run_id = %s"
                                 " order by history_id desc limit 1", (run_id,)) == [("rerun by dashboard:otto",)]


def test_an_admin_adds_changes_and_removes_a_user(site: Site) -> None:
    at = signed_in(site, "ada", "pages/users.py")
    labelled(at.text_input, "Name").input("newbie")
    labelled(at.text_input, "Password").input("a long password")
    labelled(at.selectbox, "Role").select("viewer")
    button(at, "Add user").click().run()
    assert not errors(at), errors(at)
    assert query(site.warehouse, "select role from loader_registry.dashboard_users where name = 'newbie'") == [
        ("viewer",)]
    labelled(at.selectbox, "User").select("newbie")
    labelled(at.selectbox, "New role").select("operator")
    button(at, "Change role").click().run()
    assert query(site.warehouse, "select role from loader_registry.dashboard_users where name = 'newbie'") == [
        ("operator",)]
    remover = [s for s in at.selectbox if s.label == "User"][-1]
    remover.select("newbie")
    button(at, "Remove user").click().run()
    assert query(site.warehouse, "select count(*) from loader_registry.dashboard_users where name = 'newbie'") == [
        (0,)]
    assert [a for (a,) in query(site.warehouse, "select action from loader_registry.dashboard_actions"
                                                " where target = 'newbie' order by action_id")] == [
        "users add", "users role", "users remove"]


def upload_form(site: Site, files: dict[str, bytes], *, partner: str, shop: str, load_id: str,
                draft: bool) -> AppTest:
    at = signed_in(site, "otto", "pages/upload.py")
    labelled(at.text_input, "Partner").input(partner)
    labelled(at.text_input, "Shop").input(shop)
    labelled(at.text_input, "Load").input(load_id)
    uploader = at.get("file_uploader")[0]
    for name, data in files.items():
        uploader.upload(name, data)
    if draft:
        labelled(at.checkbox, "Write the manifest for me (rows and digests computed from these files)").check()
    at.run()
    button(at, "Check the files").click().run()
    return at


def test_an_operator_uploads_an_export_with_a_drafted_manifest_and_it_is_queued(site: Site, tmp_path: Path) -> None:
    export = write_export(tmp_path, ExportSpec(partner_id="upl", shop_id="shop-u", load_id="first", customers=15))
    files = {p.name: p.read_bytes() for p in sorted(export.folder.iterdir()) if p.suffix == ".csv"}
    at = upload_form(site, files, partner="upl", shop="shop-u", load_id="first", draft=True)
    assert not errors(at), errors(at)
    drafted = json.loads(at.code[0].value)
    written = json.loads((export.folder / "manifest.json").read_text(encoding="utf-8"))
    assert {f["name"]: (f["rows"], f["sha256"]) for f in drafted["files"]} == {
        f["name"]: (f["rows"], f["sha256"]) for f in written["files"]}
    button(at, "The manifest is right: use it").click().run()
    assert any("is complete and intact" in s.value for s in at.success), [s.value for s in at.success]
    button(at, "Queue the load").click().run()
    assert not errors(at), errors(at)
    assert query(site.warehouse, "select status, triggered_by from loader_registry.runs where partner_id = 'upl'") == [
        ("queued", "dashboard:otto")]
    assert query(site.warehouse, "select user_name, target from loader_registry.dashboard_actions"
                                 " where action = 'upload'") == [("otto", "upl/shop-u/first")]
    assert any(link.label == "Open the run" for link in at.get("page_link"))


def test_a_tampered_upload_is_refused_with_the_command_lines_words(site: Site, tmp_path: Path) -> None:
    export = write_export(tmp_path, ExportSpec(partner_id="upl", shop_id="shop-t", load_id="bad", customers=15))
    customers_csv = export.folder / "customers.csv"
    customers_csv.write_bytes(customers_csv.read_bytes() + b"C999,Extra,Row,extra@example.com\r\n")
    files = {p.name: p.read_bytes() for p in sorted(export.folder.iterdir())}
    at = upload_form(site, files, partner="upl", shop="shop-t", load_id="bad", draft=False)
    env = {**os.environ, "LOADER_INBOX": str(tmp_path / "inbox")}
    cli = subprocess.run([str(LOADER), "run", str(export.folder)], capture_output=True, text=True, env=env,
                         check=False)
    assert cli.returncode == 2, cli.stdout + cli.stderr
    refused = [line.strip() for line in cli.stdout.splitlines() if "] customers.csv:" in line]
    assert len(refused) == 2, cli.stdout
    [shown] = errors(at)
    for line in refused:
        assert line in shown, (line, shown)
    # The command line's run was refused and recorded; the dashboard queued nothing.
    assert query(site.warehouse, "select triggered_by, status from loader_registry.runs where shop_id = 'shop-t'"
                 ) == [("cli", "rejected")]


def test_the_connectors_page_shows_each_connector_and_an_operator_polls_now(site: Site, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    drop = tmp_path / "drop"
    make_load(drop, partner="conn", shop="s1", load_id="first")
    connectors = tmp_path / "connectors.yml"
    connectors.write_text(f"connectors:\n  - system_code: drop-test\n    name: Test drop\n    type: local\n"
                          f"    path: {drop}\n    schedule: {{every_minutes: 60}}\n", encoding="utf-8")
    monkeypatch.setenv("LOADER_CONNECTORS_FILE", str(connectors))
    viewer = signed_in(site, "vera", "pages/connectors.py")
    assert not viewer.exception and not errors(viewer)
    assert [h.value for h in viewer.subheader] == ["drop-test: Test drop"]
    assert "Not polled yet." in texts(viewer)
    assert "Poll now" not in [b.label for b in viewer.button]
    operator = signed_in(site, "otto", "pages/connectors.py")
    button(operator, "Poll now").click().run()
    assert not errors(operator), errors(operator)
    assert [s.value for s in operator.success] == ["Found 1, took 1: conn/s1/first (run "
                                                   f"{run_id_of(site, 'conn/s1/first')})"]
    assert query(site.warehouse, "select triggered_by, status from loader_registry.runs where partner_id = 'conn'"
                 ) == [("connector:drop-test", "queued")]
    assert query(site.warehouse, "select user_name, target from loader_registry.dashboard_actions"
                                 " where action = 'poll'") == [("otto", "drop-test")]
    again = signed_in(site, "vera", "pages/connectors.py")
    table_rows = table(again, "partner", "shop", "load")
    assert list(zip(table_rows["partner"], table_rows["shop"], table_rows["load"], strict=True)) == [
        ("conn", "s1", "first")]
