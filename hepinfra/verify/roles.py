"""The SQL of ``rotation: alternating``, run as the managing credential (hep.gg's user for the database).

Owns: checking the privilege the strategy needs with a real login (PostgreSQL: CREATEROLE;
MariaDB: CREATE USER and GRANT OPTION on the database), making the two login roles (and, in
PostgreSQL, the group that owns the objects: each login role's sessions run as the group, so
what either creates the other can use, and what the hep.gg user owns is granted to the group),
setting an idle role's password, and disabling a role and ending its open sessions where the
server allows it (``rotate --revoke``). Every statement is
idempotent: a killed run runs it again with the same password. It dials only the host and port
of hep.gg's connection string (as ``verify`` does); identifiers are quoted by the drivers' tools,
passwords bound or escaped as literals.
Must not: put a password in a message (a server's message is shown redacted, on one line).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from hepinfra.errors import HepinfraError
from hepinfra.safety.redact import redact, register
from hepinfra.verify import Target, _classify, target

HOSTS = ("%", "localhost")  # a mariadb login is matched by host: both, as hep.gg's own user has
PRIVILEGE = {"postgres": "CREATEROLE", "mariadb": "CREATE USER"}
DOCS = "docs/rotation-strategies.md"


class RoleError(HepinfraError):
    """A statement of the alternating strategy failed. One line, never a password."""


class PrivilegeMissing(RoleError):
    """The managing credential lacks the privilege to make roles: nothing was made."""


@dataclass(frozen=True)
class Managing:
    """The managing credential: hep.gg's user of the database, at hep.gg's host and port."""

    engine: str
    at: Target
    user: str
    password: str = field(repr=False)
    dbname: str
    name: str  # the platform name, for messages


def managing(engine: str, connection_string: str, name: str) -> Managing:
    parts = urlsplit(connection_string)
    password = unquote(parts.password or "")
    register(password)
    user = unquote(parts.username or "")
    return Managing(engine, target(engine, connection_string), user, password, unquote(parts.path[1:]) or user, name)


def _line(exc: BaseException, *secrets: str) -> str:
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    if primary is None and exc.args and len(exc.args) >= 2 and isinstance(exc.args[0], int):
        primary = f"{exc.args[1]} ({exc.args[0]})"  # PyMySQL: (code, message)
    text = " ".join(str(primary or type(exc).__name__).split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return redact(text)


@contextmanager
def _session(m: Managing, action: str, timeout: int, *secrets: str) -> Iterator[Any]:
    """An autocommit connection as the managing credential (postgres: the connection; mariadb: a
    cursor). A failed login is a fixed cause; a failed statement the server's message, redacted."""
    if m.engine == "postgres":
        import psycopg

        errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        params: dict[str, Any] = {
            "host": m.at.host, "port": str(m.at.port), "hostaddr": "", "options": "", "user": m.user,
            "password": m.password, "dbname": m.dbname, "connect_timeout": timeout, "sslmode": "prefer",
            "gssencmode": "disable", "application_name": "hepinfra-roles",
        }  # fmt: skip
        connect: Any = lambda: psycopg.connect(autocommit=True, **params)  # noqa: E731
    else:
        import pymysql

        errors = (pymysql.MySQLError,)
        connect = lambda: pymysql.connect(  # noqa: E731
            host=m.at.host, port=m.at.port, user=m.user, password=m.password, database=m.dbname,
            connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout, autocommit=True,
            charset="utf8mb4", local_infile=False,
        )  # fmt: skip
    try:
        conn = connect()
    except errors as exc:
        cause = _classify(m.engine, exc, m.at, timeout)
        raise RoleError(f"could not log in as hep.gg's user of '{m.name}' at {m.at.where}: {cause}") from None
    try:
        with conn:
            if m.engine == "postgres":
                yield conn
            else:
                with conn.cursor() as cursor:
                    yield cursor
    except errors as exc:
        raise RoleError(
            f"alternating roles of '{m.name}': cannot {action}: {_line(exc, m.password, *secrets)}"
        ) from None


def _missing(m: Managing, also: str = "") -> PrivilegeMissing:
    return PrivilegeMissing(
        f"rotation: alternating needs the {PRIVILEGE[m.engine]} privilege{also}, which hep.gg's user of "
        f"'{m.name}' lacks on its server; nothing was created: the database stays on its single-user credential",
        hint=f"ask for the privilege, or keep rotation: single (see {DOCS})",
    )


def check_privilege(m: Managing, timeout: int) -> None:
    """Log in as the managing credential and check it may make roles; PrivilegeMissing if not."""
    with _session(m, "read its privileges", timeout) as db:
        if m.engine == "postgres":
            row = db.execute("SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
            if not (row and row[0]):
                raise _missing(m)
            return
        db.execute("SELECT PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.USER_PRIVILEGES", ())
        global_privileges = {(str(p), str(g)) for p, g in db.fetchall()}
        # a grant's database name is a pattern (``_`` escaped): matched with LIKE
        db.execute(
            "SELECT IS_GRANTABLE FROM information_schema.SCHEMA_PRIVILEGES WHERE %s LIKE TABLE_SCHEMA", (m.dbname,)
        )
        grantable = any(str(g) == "YES" for (g,) in db.fetchall()) or any(g == "YES" for _, g in global_privileges)
        if not any(p == "CREATE USER" for p, _ in global_privileges):
            raise _missing(m)
        if not grantable:
            raise _missing(m, f" and GRANT OPTION on `{m.dbname}`.*")


def setup(m: Managing, logins: tuple[str, str], group: str | None, password: str, timeout: int) -> None:
    """Make (or bring back) the roles: the first login role with ``password`` and LOGIN, the second
    without a login until its first rotation, both granted everything on the database; in PostgreSQL
    both are members of ``group``, their sessions run as it (``ALTER ROLE ... SET role``), and what
    the hep.gg user owns, or creates later, is granted to it."""
    register(password)
    if m.engine == "postgres":
        assert group is not None
        _setup_postgres(m, logins, group, password, timeout)
    else:
        _setup_mariadb(m, logins, password, timeout)


def _setup_postgres(m: Managing, logins: tuple[str, str], group: str, password: str, timeout: int) -> None:
    from psycopg import sql

    g = sql.Identifier(group)
    with _session(m, "make its roles", timeout, password) as conn:

        def exists(role: str) -> bool:
            return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None

        if not exists(group):
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(g))
        first, second = (sql.Identifier(r) for r in logins)
        if exists(logins[0]):
            conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(first, sql.Literal(password)))
        else:
            conn.execute(sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(first, sql.Literal(password)))
        if not exists(logins[1]):
            conn.execute(sql.SQL("CREATE ROLE {} WITH NOLOGIN").format(second))
        for role in (first, second):
            conn.execute(sql.SQL("GRANT {} TO {}").format(g, role))
            # objects either role creates are owned by the group: usable by the other
            conn.execute(sql.SQL("ALTER ROLE {} SET role = {}").format(role, sql.Literal(group)))
        db = sql.Identifier(m.dbname)
        conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY, CREATE ON DATABASE {} TO {}").format(db, g))
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%%' AND nspname <> 'information_schema' "
            "AND pg_has_role(current_user, nspowner, 'USAGE') ORDER BY nspname"
        ).fetchall()
        for (schema,) in schemas:  # what the hep.gg user owns, and creates later, stays usable by both roles
            s = sql.Identifier(schema)
            conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(s, g))
            for what in ("TABLES", "SEQUENCES"):
                conn.execute(
                    sql.SQL(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {{}} GRANT ALL ON {what} TO {{}}").format(s, g)
                )
        # only what it owns: a GRANT on an object it has no right on at all (the group's, made by a role
        # since an earlier setup) is an error, not a no-op
        owned = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind = 'S' FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_roles r ON r.oid = c.relowner "
            "WHERE r.rolname = current_user AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') "
            "AND n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema' ORDER BY 1, 2"
        ).fetchall()
        for schema, name, sequence in owned:
            kind = "SEQUENCE" if sequence else "TABLE"
            conn.execute(sql.SQL(f"GRANT ALL ON {kind} {{}} TO {{}}").format(sql.Identifier(schema, name), g))
        for (schema,) in schemas:  # a function others own that PUBLIC may run: a warning, never an error
            conn.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {} TO {}").format(sql.Identifier(schema), g))


def _quote_db(name: str) -> str:
    """A database name as GRANT reads it: backticks doubled, ``_`` and ``%`` escaped, ``%`` doubled
    for PyMySQL's parameter formatting."""
    return "`" + name.replace("`", "``").replace("_", "\\_").replace("%", "\\%").replace("%", "%%") + "`"


def _setup_mariadb(m: Managing, logins: tuple[str, str], password: str, timeout: int) -> None:
    import secrets

    throwaway = secrets.token_urlsafe(24)  # the second role's until its first rotation: never kept, locked
    register(throwaway)
    with _session(m, "make its users", timeout, password, throwaway) as cursor:
        for host in HOSTS:
            cursor.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (logins[0], host, password))
            cursor.execute("ALTER USER %s@%s IDENTIFIED BY %s ACCOUNT UNLOCK", (logins[0], host, password))
            cursor.execute(
                "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s ACCOUNT LOCK", (logins[1], host, throwaway)
            )
            for login in logins:
                cursor.execute(f"GRANT ALL PRIVILEGES ON {_quote_db(m.dbname)}.* TO %s@%s", (login, host))


def set_password(m: Managing, role: str, password: str, timeout: int) -> None:
    """Give the idle ``role`` ``password`` and let it log in (the same password again is harmless)."""
    register(password)
    with _session(m, f"set the password of {role}", timeout, password) as db:
        if m.engine == "postgres":
            from psycopg import sql

            db.execute(
                sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
            )
            return
        for host in HOSTS:
            db.execute("ALTER USER %s@%s IDENTIFIED BY %s ACCOUNT UNLOCK", (role, host, password))


def disable(m: Managing, role: str, timeout: int) -> str:
    """``rotate --revoke``: ``role`` can no longer log in, and the sessions already open as it are
    ended where the server lets the managing credential end them. Returns what became of those
    sessions, for the run's line (a leaked password's sessions left open must be said)."""
    with _session(m, f"disable {role}", timeout) as db:
        if m.engine == "postgres":
            from psycopg import sql

            db.execute(sql.SQL("ALTER ROLE {} WITH NOLOGIN").format(sql.Identifier(role)))
            return _end_postgres_sessions(db, role)
        for host in HOSTS:
            db.execute("ALTER USER %s@%s ACCOUNT LOCK", (role, host))
        return _end_mariadb_sessions(db, role)


def _sessions_said(ended: int, left: int, why: str) -> str:
    if not ended and not left:
        return "no session was open as it"
    said = [f"{ended} open session(s) ended"] if ended else []
    if left:
        said.append(f"{left} open session(s) NOT ended ({why}): end them yourself")
    return "; ".join(said)


def _end_postgres_sessions(db: Any, role: str) -> str:
    """pg_terminate_backend needs the privileges of the role whose sessions it ends: the managing
    credential, which made the role (CREATEROLE), makes itself a member for the moment and drops
    the membership after; a membership it granted itself and a kill left behind is dropped by the
    rerun. A session that ended by itself meanwhile counts as ended."""
    import psycopg
    from psycopg import sql

    def open_pids() -> list[int]:
        return [r[0] for r in db.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()", (role,)
        ).fetchall()]  # fmt: skip

    pids = open_pids()
    ident = sql.Identifier(role)
    member, self_granted = db.execute(
        "SELECT pg_has_role(current_user, %(r)s, 'USAGE'), EXISTS (SELECT 1 FROM pg_auth_members m "
        "JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member "
        "WHERE r.rolname = %(r)s AND u.rolname = current_user AND m.grantor = u.oid)",
        {"r": role},
    ).fetchone()
    if not pids:
        if self_granted:  # left by a kill between GRANT and REVOKE, the sessions since gone
            with contextlib.suppress(psycopg.Error):
                db.execute(sql.SQL("REVOKE {} FROM CURRENT_USER").format(ident))
        return _sessions_said(0, 0, "")
    why = "the server refused to end them"
    try:
        if not member:
            db.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
        for pid in pids:
            db.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    except psycopg.Error as exc:
        why = f"the server refused: {_line(exc)}"
    finally:
        if not member or self_granted:
            with contextlib.suppress(psycopg.Error):
                db.execute(sql.SQL("REVOKE {} FROM CURRENT_USER").format(ident))
    left = len(set(pids) & set(open_pids()))
    return _sessions_said(len(pids) - left, left, why)


def _end_mariadb_sessions(cursor: Any, role: str) -> str:
    """Seeing other users' connections needs PROCESS, ending them CONNECTION ADMIN (or SUPER),
    granted to hep.gg's user or to a role it has enabled (SHOW GRANTS lists both). A hep.gg user
    rarely has them, and then the sessions cannot even be counted: said so."""
    import re

    import pymysql

    cursor.execute("SHOW GRANTS")
    held: set[str] = set()  # global privileges, one statement at a time (never across two)
    for (statement,) in cursor.fetchall():
        found = re.match(r"GRANT (.+?) ON \*\.\* TO ", str(statement).upper())
        if found:
            held |= {p.strip() for p in found.group(1).split(",")}
    may = "ALL PRIVILEGES" in held or ("PROCESS" in held and bool(held & {"CONNECTION ADMIN", "SUPER"}))
    if not may:
        return (
            "sessions already open as it are not ended: that needs the PROCESS and CONNECTION ADMIN "
            "privileges, which hep.gg's user lacks; end them yourself"
        )
    cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (role,))
    ids = [int(r[0]) for r in cursor.fetchall()]
    ended, why = 0, "the server refused to end them"
    for thread in ids:
        try:
            cursor.execute("KILL CONNECTION %s", (thread,))
            ended += 1
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] == 1094:  # unknown thread: it ended by itself meanwhile
                ended += 1
            else:
                why = f"the server refused: {_line(exc)}"
    return _sessions_said(ended, len(ids) - ended, why)
