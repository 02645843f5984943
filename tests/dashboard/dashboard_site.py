"""A dashboard site for a module's tests: real loads in a real warehouse, and one user of each role.

Loads cost seconds each, so a module builds its site once (the `site` fixture in conftest.py); its tests only
read it, or act on loads of their own.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from streamlit.testing.v1 import AppTest

from loader.access.sessions import login
from loader.database import Warehouse

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
TOKEN = "loader_session_token"
PASSWORDS = {"vera": "viewer pass 1", "otto": "operator pass 2", "ada": "admin pass 3"}
ROLES = {"vera": "viewer", "otto": "operator", "ada": "admin"}


def customers(rows: list[tuple[str, str, str]]) -> bytes:
    """customers.csv of (id, last name, email) rows."""
    body = "".join(f"{cid},Ann,{last},{email}\r\n" for cid, last, email in rows)
    return ("external_customer_id,first_name,last_name,email\r\n" + body).encode()


@dataclass(frozen=True)
class Site:
    warehouse: Warehouse
    root: Path
    sample: str  # a completed load with planted errors
    held: str  # a load held for review (its customers' updates cross max_update_pct)
    held_rejects: str  # a first load held for review (30% of its customers rejected)


def signed_in(site: Site, user: str, page: str | None = None, **query: str) -> AppTest:
    """The app as `user` sees it, on `page` (a path under dashboard/, e.g. "pages/runs.py")."""
    with contextlib.closing(site.warehouse.connect()) as conn:
        session = login(conn, user, PASSWORDS[user])
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state[TOKEN] = session.token
    for name, value in query.items():
        at.query_params[name] = value
    at.run()
    if page is not None:
        at.switch_page(page).run()
    return at
