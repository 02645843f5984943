"""The dashboard in a real headless Chromium: `loader dashboard` and `loader worker` as a user runs them.

Chromium is Debian's (`apt-get install chromium`; LOADER_TEST_CHROMIUM names another binary), driven by
Playwright without `playwright install`. Screenshots of every page land in test-artifacts/ (not committed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dashboard_site import PASSWORDS, ROLES
from helpers import LOADER, empty_warehouse, point_loader_at, query
from playwright.sync_api import Browser, Page, expect, sync_playwright

from loader.access.users import add_user
from loader.database import Warehouse
from loader.runs.registry import ensure_registry
from loader.samples.sms_v1 import ExportSpec, write_export

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium() -> str:
    found = os.environ.get("LOADER_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("the browser tests need Chromium: apt-get install chromium (or set LOADER_TEST_CHROMIUM)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(url: str, process: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"loader dashboard exited with {process.returncode}: {process.communicate()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"the dashboard did not answer on {url} within {seconds} s")


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@dataclass(frozen=True)
class Served:
    warehouse: Warehouse
    url: str
    export: Path
    browser: Browser


@pytest.fixture(scope="module")
def served(warehouse: Warehouse, tmp_path_factory: pytest.TempPathFactory, dbt_state: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("browser-site")
    ARTIFACTS.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        point_loader_at(empty_warehouse(warehouse), root, dbt_state, patch)
        ensure_registry(warehouse)
        with contextlib.closing(warehouse.connect()) as conn:
            for name, password in PASSWORDS.items():
                add_user(conn, name, ROLES[name], password)
        export = write_export(root / "imports", ExportSpec(partner_id="web", shop_id="shop-w", load_id="up-1",
                                                           customers=25)).folder
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # A settings file named relative to where the command is typed, as a user would name it.
        (root / "drop").mkdir()
        (root / "connectors.yml").write_text(f"connectors:\n  - system_code: browser-drop\n    type: local\n"
                                             f"    path: {root / 'drop'}\n    schedule: {{every_minutes: 60}}\n",
                                             encoding="utf-8")
        patch.setenv("LOADER_CONNECTORS_FILE", "connectors.yml")
        dashboard = subprocess.Popen([str(LOADER), "dashboard", "--port", str(port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=root)
        worker = subprocess.Popen([str(LOADER), "worker", "--concurrency", "1"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, cwd=root)
        try:
            wait_until_serving(url, dashboard)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
                try:
                    yield Served(warehouse, url, export, browser)
                finally:
                    browser.close()
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=120)
            assert stop(dashboard) == 0, "loader dashboard ends with exit 0 on SIGTERM"


def log_in(served: Served, user: str) -> Page:
    page = served.browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(60_000)
    page.goto(served.url)
    page.get_by_label("Username", exact=True).fill(user)
    page.get_by_label("Password", exact=True).fill(PASSWORDS[user])
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    return page


def shot(page: Page, name: str) -> None:
    # Once the page has drawn: no placeholder left, and Streamlit's "running" indicator gone.
    expect(page.locator("[data-testid=stSkeleton]")).to_have_count(0)
    expect(page.locator("[data-testid=stStatusWidget]")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_an_operator_uploads_follows_the_run_and_downloads_the_partners_csv(served: Served) -> None:
    page = log_in(served, "otto")
    shot(page, "runs")
    page.get_by_role("link", name="Upload").click()
    expect(page.get_by_role("heading", name="Upload an export")).to_be_visible()
    page.locator("input[type=file]").set_input_files(sorted(str(p) for p in served.export.iterdir()))
    expect(page.get_by_role("button", name="Check the files")).to_be_enabled(timeout=60_000)
    for label, value in (("Partner", "web"), ("Shop", "shop-w"), ("Load", "up-1")):
        page.get_by_label(label, exact=True).fill(value)
        page.get_by_label(label, exact=True).press("Enter")
        expect(page.get_by_label(label, exact=True)).to_have_value(value)
    shot(page, "upload")
    page.get_by_role("button", name="Check the files").click()
    expect(page.get_by_text("is complete and intact")).to_be_visible()
    page.get_by_role("button", name="Queue the load").click()
    expect(page.get_by_text("completed").first).to_be_visible(timeout=300_000)
    page.get_by_role("link", name="Open the run").click()
    expect(page.get_by_text("web/shop-w/up-1", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Exceptions")).to_be_visible()
    shot(page, "run_detail")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the exceptions of every entity (CSV for the partner)").click()
    downloaded = Path(download.value.path()).read_bytes()
    cli = subprocess.run([str(LOADER), "exceptions", "web/shop-w/up-1", "--format", "csv"], capture_output=True,
                         check=True)
    assert downloaded == cli.stdout
    [(errors,)] = query(served.warehouse, "select count(*) from loader_registry.run_exceptions e join"
                                          " loader_registry.runs r using (run_id) where r.shop_id = 'shop-w'")
    assert downloaded.count(b"\r\n") == int(str(errors)) + 1 > 1
    for name in ("Trends", "Imported data", "Review"):
        page.get_by_role("link", name=name).click()
        expect(page.get_by_role("heading", name=name)).to_be_visible()
        shot(page, name.lower().replace(" ", "_"))


def test_a_viewer_sees_no_upload_or_approve_control(served: Served) -> None:
    page = log_in(served, "vera")
    expect(page.get_by_role("link", name="Runs")).to_be_visible()
    expect(page.get_by_role("link", name="Upload")).to_have_count(0)
    expect(page.get_by_role("link", name="Review")).to_have_count(0)
    expect(page.get_by_role("link", name="Users")).to_have_count(0)
    expect(page.get_by_role("button", name="Approve and publish")).to_have_count(0)
    expect(page.locator("input[type=file]")).to_have_count(0)
    shot(page, "viewer")


def test_a_reloaded_tab_stays_logged_in_until_log_out(served: Served) -> None:
    page = log_in(served, "vera")
    # The cookie is written by a script the page runs once it has drawn the signed-in sidebar.
    deadline = time.monotonic() + 60
    while not any(c["name"] == "loader_session" for c in page.context.cookies()):
        assert time.monotonic() < deadline, "no session cookie was set"
        page.wait_for_timeout(200)
    page.reload()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    expect(page.get_by_text("Signed in as vera")).to_be_visible()
    before = live_sessions(served, "vera")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    page.reload()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_role("heading", name="Runs")).to_have_count(0)
    assert live_sessions(served, "vera") == before - 1


def live_sessions(served: Served, user: str) -> int:
    [(count,)] = query(served.warehouse, "select count(*) from loader_registry.dashboard_sessions"
                                         " where user_name = %s and expires_at > now()", (user,))
    return int(str(count))


def test_the_dashboard_reads_the_settings_files_the_command_was_given(served: Served) -> None:
    page = log_in(served, "vera")
    page.get_by_role("link", name="Connectors").click()
    expect(page.get_by_role("heading", name="browser-drop: browser-drop")).to_be_visible()
    shot(page, "connectors")


def test_admin_sees_the_users_page(served: Served) -> None:
    page = log_in(served, "ada")
    page.get_by_role("link", name="Users").click()
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    expect(page.get_by_role("button", name="Add user")).to_be_visible()
    # The table is drawn on a canvas; its cells are also in the page, hidden, for screen readers.
    expect(page.locator("td[role=gridcell]", has_text="vera")).to_have_count(1)
    shot(page, "users")
