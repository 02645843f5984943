"""The dashboard's entry point (`loader dashboard`): log in, then the pages the user's role may open."""

from __future__ import annotations

from pathlib import Path

import psycopg2.extensions
import streamlit as st

from loader.access.sessions import LoginRefused, Session, login, logout
from loader.access.users import role_allows
from shell import LOGGED_OUT, REMEMBER, TOKEN, Unavailable, connected, context, cookie_script, signed_in

PAGES = Path(__file__).parent / "pages"


def _login_form(conn: psycopg2.extensions.connection) -> None:
    if st.session_state.get(LOGGED_OUT):
        st.html(cookie_script(None), unsafe_allow_javascript=True)
    st.title("Partner loader")
    with st.form("login"):
        name = st.text_input("Username")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Log in")
    if not submitted:
        return
    settings, _ = context()
    try:
        session = login(conn, name.strip(), password, ttl_minutes=settings.dashboard_session_minutes)
    except LoginRefused as exc:
        st.error(str(exc))
        return
    st.session_state[TOKEN] = session.token
    st.session_state[REMEMBER] = True
    st.session_state.pop(LOGGED_OUT, None)
    st.rerun()


def _navigation(session: Session) -> None:
    pages = [
        st.Page(PAGES / "runs.py", title="Runs", icon=":material/list:", default=True),
        st.Page(PAGES / "run_detail.py", title="Run detail", icon=":material/receipt_long:"),
        st.Page(PAGES / "trends.py", title="Trends", icon=":material/monitoring:"),
        st.Page(PAGES / "imported.py", title="Imported data", icon=":material/table:"),
        st.Page(PAGES / "connectors.py", title="Connectors", icon=":material/cloud_download:"),
    ]
    if role_allows(session.role, "operator"):
        pages += [
            st.Page(PAGES / "upload.py", title="Upload", icon=":material/upload:"),
            st.Page(PAGES / "review.py", title="Review", icon=":material/rule:"),
        ]
    if role_allows(session.role, "admin"):
        pages.append(st.Page(PAGES / "users.py", title="Users", icon=":material/group:"))
    with st.sidebar:
        if st.session_state.pop(REMEMBER, False):
            st.html(cookie_script(session), unsafe_allow_javascript=True)
        st.caption(f"Signed in as **{session.user}** ({session.role})")
        if st.button("Log out"):
            token = st.session_state.pop(TOKEN, None)
            st.session_state[LOGGED_OUT] = True
            if token is not None:
                with connected() as conn:
                    logout(conn, token)
            st.rerun()
    st.navigation(pages).run()


def main() -> None:
    st.set_page_config(page_title="Partner loader", layout="wide")
    try:
        with connected() as conn:
            session = signed_in(conn)
            if session is None:
                st.session_state.pop(TOKEN, None)
                _login_form(conn)
                return
    except Unavailable as exc:
        st.error(f"The dashboard cannot reach its database: {exc}")
        return
    _navigation(session)


main()
