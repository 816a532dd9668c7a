"""A real PostgreSQL server behind the local hep.gg's postgres databases (psycopg 3).

Owns: making a database owned by a new login role, and setting a role's password, through an
admin login (a superuser, or a role with CREATEROLE and CREATEDB). Identifiers are quoted with
``psycopg.sql.Identifier`` and passwords are ``sql.Literal`` values escaped by libpq (utility
statements such as ALTER ROLE take no bind parameters). Connects anew for each change.
Must not: put a password in a message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hepinfra.emulator.engines.base import (
    CONNECT_TIMEOUT,
    STATEMENT_TIMEOUT,
    AdminUrl,
    EngineError,
    netloc,
    one_line,
)

if TYPE_CHECKING:
    import psycopg

MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: longer names would be silently truncated by the server


def _driver() -> Any:
    from hepinfra.extras import MissingExtraError, require

    try:
        return require("psycopg", "real postgres databases", "verify")
    except MissingExtraError as exc:
        raise EngineError(exc.message) from None


def _check_name(what: str, name: str) -> None:
    if not name or "\x00" in name or len(name.encode()) > MAX_NAME_BYTES:
        raise EngineError(f"postgres {what} must be 1 to {MAX_NAME_BYTES} bytes without NUL")


class PostgresEngine:
    kind = "postgres"

    def __init__(self, admin: AdminUrl) -> None:
        self.admin = admin
        self.host, self.port = admin.host, admin.port

    @property
    def address(self) -> str:
        return netloc(self.host, self.port)

    @contextmanager
    def _session(self, action: str, *secrets: str) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit admin connection; any driver error becomes one EngineError line."""
        psycopg = _driver()
        admin = self.admin
        params: dict[str, Any] = {
            "host": admin.host,
            "port": admin.port,
            "user": admin.user,
            "dbname": admin.database,
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "hepinfra-emulator",
            # a statement waiting on a lock (another session holding the role) must not hold the
            # emulator's store, and every client with it, for longer than this
            "options": f"-c lock_timeout={STATEMENT_TIMEOUT * 1000} -c statement_timeout={STATEMENT_TIMEOUT * 1000}",
            **dict(admin.options),
        }
        if admin.password is not None:
            params["password"] = admin.password
        try:
            with psycopg.connect(autocommit=True, **params) as conn:
                yield conn
        except psycopg.Error as exc:
            reason = getattr(exc.diag, "message_primary", None) or str(exc).split("\n")[0] or type(exc).__name__
            reason = one_line(reason, admin.password, *secrets)
            raise EngineError(f"postgres server {self.address}: cannot {action}: {reason}") from None

    def ping(self) -> None:
        with self._session(f"log in as {self.admin.user}") as conn:
            conn.execute("SELECT 1")

    def create(self, db_name: str, user: str, password: str) -> None:
        from psycopg import sql

        _check_name("database names", db_name)
        _check_name("role names", user)
        db, role, secret = sql.Identifier(db_name), sql.Identifier(user), sql.Literal(password)
        with self._session(f"create database {db_name}", password) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone():
                conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(role, secret))
            else:
                conn.execute(sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(role, secret))
            superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
            if not (superuser and superuser[0]):  # CREATE DATABASE ... OWNER needs membership in the owner
                conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db_name,)).fetchone():
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, role))
            else:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
            # the owner keeps every right; other tenants' roles may not even connect
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))

    def set_password(self, user: str, password: str) -> None:
        from psycopg import sql

        _check_name("role names", user)
        with self._session(f"set the password of role {user}", password) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(sql.Identifier(user), sql.Literal(password)))

    def set_role_privilege(self, db_name: str, user: str, granted: bool) -> None:
        from psycopg import sql

        _check_name("role names", user)
        attribute = "CREATEROLE" if granted else "NOCREATEROLE"
        with self._session(f"set {attribute} on role {user}") as conn:
            conn.execute(sql.SQL(f"ALTER ROLE {{}} WITH {attribute}").format(sql.Identifier(user)))
