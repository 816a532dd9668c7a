"""``rotate --revoke`` ending a role's open sessions, on a real PostgreSQL: what a kill can leave.

hep.gg's user makes itself a member of the role for the moment (pg_terminate_backend needs the
role's privileges) and drops the membership after. A kill in between leaves it a member; the
journal runs ``disable`` again, which must end the sessions and drop that leftover membership too.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg

from hepinfra.verify import roles
from tests.conftest import ISSUED


def test_a_membership_left_by_a_kill_is_dropped_by_the_rerun(postgres_server: Any) -> None:
    suffix = secrets.token_hex(4)
    manager, role, db = f"mgr_{suffix}", f"mgr_{suffix}_a", f"db_{suffix}"
    manager_pw, role_pw = "mgr-" + secrets.token_urlsafe(12), "role-" + secrets.token_urlsafe(12)
    ISSUED.update({manager_pw, role_pw})
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {manager} LOGIN CREATEROLE PASSWORD '{manager_pw}'")
        admin.execute(f"CREATE DATABASE {db} OWNER {manager}")
    at = urlsplit(postgres_server.url)
    url = f"postgresql://{manager}:{quote(manager_pw)}@{at.hostname}:{at.port}/{db}"
    m = roles.managing("postgres", url, "shop")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role_pw}'")
        conn.execute(f"GRANT {role} TO CURRENT_USER")  # what a kill between GRANT and REVOKE leaves
    role_url = f"postgresql://{role}:{quote(role_pw)}@{at.hostname}:{at.port}/{db}"
    held = psycopg.connect(role_url, autocommit=True)
    said = roles.disable(m, role, 10)
    assert said == "1 open session(s) ended"
    try:
        held.execute("SELECT 1")
        raise AssertionError("the revoked role's session is still open")
    except psycopg.OperationalError:
        pass
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,)).fetchone() == (False,)
    assert roles.disable(m, role, 10) == "no session was open as it"
    with psycopg.connect(url, autocommit=True) as conn:  # a kill left the membership, the sessions since gone
        conn.execute(f"GRANT {role} TO CURRENT_USER")
    assert roles.disable(m, role, 10) == "no session was open as it"
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,)).fetchone() == (False,)
