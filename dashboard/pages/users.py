"""Users (admin): add, remove, change role; and what operators did."""

from __future__ import annotations

import psycopg2.extensions
import streamlit as st

from loader.access.actions import recent_actions, record_action
from loader.access.sessions import Session
from loader.access.users import ROLES, AccessError, add_user, list_users, remove_user, set_role
from shell import authorize, page, rows_table, when


def _notice() -> None:
    notice = st.session_state.pop("users_notice", None)
    if notice:
        st.success(notice)


def render(conn: psycopg2.extensions.connection, session: Session) -> None:
    st.title("Users")
    _notice()
    users = list_users(conn)
    rows_table([{"name": u.name, "role": u.role, "created": when(u.created_at), "updated": when(u.updated_at)}
                for u in users])
    st.subheader("Add a user")
    with st.form("add_user", clear_on_submit=True):
        name = st.text_input("Name")
        role = st.selectbox("Role", ROLES)
        password = st.text_input("Password", type="password")
        added = st.form_submit_button("Add user")
    if added:
        acting = authorize(conn, "admin", "manage users")
        name = name.strip()
        if name in {u.name for u in users}:
            st.error(f"{name} exists already: change its role below, or set a password with `loader users add`.")
            return
        try:
            add_user(conn, name, role, password)
        except AccessError as exc:
            st.error(str(exc))
            return
        record_action(conn, acting, "users add", name, f"role {role}")
        st.session_state["users_notice"] = f"Added {name} ({role})."
        st.rerun()
    st.subheader("Change a role")
    with st.form("change_role"):
        changed = st.selectbox("User", [u.name for u in users], index=None, key="role_user")
        new_role = st.selectbox("New role", ROLES, key="role_role")
        change = st.form_submit_button("Change role")
    if change and changed:
        acting = authorize(conn, "admin", "manage users")
        set_role(conn, changed, new_role)
        record_action(conn, acting, "users role", changed, f"role {new_role}")
        st.session_state["users_notice"] = f"{changed} is now {new_role}."
        st.rerun()
    st.subheader("Remove a user")
    others = [u.name for u in users if u.name != session.user]
    with st.form("remove_user"):
        gone = st.selectbox("User", others, index=None)
        removed = st.form_submit_button("Remove user")
    if removed and gone:
        acting = authorize(conn, "admin", "manage users")
        remove_user(conn, gone)
        record_action(conn, acting, "users remove", gone)
        st.session_state["users_notice"] = f"Removed {gone}; their sessions ended."
        st.rerun()
    st.subheader("What operators did")
    rows_table([{"at": when(a.at), "user": a.user, "action": a.action, "target": a.target,
                 "detail": a.detail or ""} for a in recent_actions(conn, limit=100)])


page(render, needed="admin")
