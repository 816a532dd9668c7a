"""A real MariaDB (or MySQL) server behind the local hep.gg's mariadb databases (PyMySQL).

Owns: making a database and a login user granted ALL on it, as ``user@'%'`` and
``user@'localhost'`` (a loopback login may be matched as either), and setting that user's
password, through an admin login with CREATE USER and GRANT OPTION (root). Database names are
validated and backtick-quoted with backticks doubled (and ``_``/``%`` escaped where GRANT reads
them as wildcards); user names, hosts and passwords are bound as parameters, which PyMySQL
escapes for the session (it honours NO_BACKSLASH_ESCAPES). Connects anew for each change.
Must not: put a password in a message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hepinfra.emulator.engines.base import (
    CONNECT_TIMEOUT,
    STATEMENT_TIMEOUT,
    AdminUrl,
    EngineError,
    netloc,
    one_line,
)

HOSTS = ("%", "localhost")
MAX_DB_NAME = 64
MAX_USER = 80


def _driver() -> Any:
    from hepinfra.extras import MissingExtraError, require

    try:
        return require("pymysql", "real mariadb databases", "verify")
    except MissingExtraError as exc:
        raise EngineError(exc.message) from None


def quote_name(name: str, *, grant: bool = False) -> str:
    """``name`` as a backtick-quoted identifier, ready for a statement that PyMySQL then fills
    with parameters (so ``%`` is doubled). ``grant``: escape GRANT's wildcards ``_`` and ``%``."""
    if not name or len(name) > MAX_DB_NAME or "\x00" in name or "\\" in name or name != name.rstrip(" "):
        raise EngineError(
            f"mariadb database names must be 1 to {MAX_DB_NAME} characters without NUL, backslash or trailing space"
        )
    if grant:
        name = name.replace("_", "\\_").replace("%", "\\%")
    return "`" + name.replace("`", "``").replace("%", "%%") + "`"


def _check_user(user: str) -> None:
    if not user or len(user) > MAX_USER or "\x00" in user:
        raise EngineError(f"mariadb user names must be 1 to {MAX_USER} characters without NUL")


class MariaDBEngine:
    kind = "mariadb"

    def __init__(self, admin: AdminUrl) -> None:
        self.admin = admin
        self.host, self.port = admin.host, admin.port
        unknown = sorted({key for key, _ in admin.options} - {"unix_socket"})
        if unknown:
            raise EngineError(f"the mariadb admin URL takes no option {unknown[0]!r} (only unix_socket)")

    @property
    def address(self) -> str:
        return netloc(self.host, self.port)

    @contextmanager
    def _session(self, action: str, *secrets: str) -> Iterator[Any]:
        """A cursor on an autocommit admin connection; driver errors become one EngineError line."""
        pymysql = _driver()
        admin = self.admin
        try:
            conn = pymysql.connect(
                host=admin.host,
                port=admin.port,
                user=admin.user,
                password=admin.password or "",
                database=admin.database or None,
                unix_socket=dict(admin.options).get("unix_socket"),
                charset="utf8mb4",
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=STATEMENT_TIMEOUT,
                write_timeout=STATEMENT_TIMEOUT,
                init_command=f"SET SESSION lock_wait_timeout={STATEMENT_TIMEOUT}",
            )
            with conn, conn.cursor() as cursor:
                yield cursor
        except pymysql.MySQLError as exc:
            args = exc.args
            reason = f"{args[1]} ({args[0]})" if len(args) >= 2 else (str(exc) or type(exc).__name__)
            reason = one_line(reason, admin.password, *secrets)
            raise EngineError(f"mariadb server {self.address}: cannot {action}: {reason}") from None

    def ping(self) -> None:
        with self._session(f"log in as {self.admin.user}") as cursor:
            cursor.execute("SELECT 1", ())

    def create(self, db_name: str, user: str, password: str) -> None:
        name, grant_name = quote_name(db_name), quote_name(db_name, grant=True)
        _check_user(user)
        accounts = ", ".join(["%s@%s IDENTIFIED BY %s"] * len(HOSTS))
        credentials = tuple(value for host in HOSTS for value in (user, host, password))
        with self._session(f"create database {db_name}", password) as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS {name} CHARACTER SET utf8mb4", ())
            cursor.execute(f"CREATE USER IF NOT EXISTS {accounts}", credentials)
            cursor.execute(f"ALTER USER {accounts}", credentials)  # a half-finished create left another one
            for host in HOSTS:
                cursor.execute(f"GRANT ALL PRIVILEGES ON {grant_name}.* TO %s@%s", (user, host))

    def set_password(self, user: str, password: str) -> None:
        _check_user(user)
        accounts = ", ".join(["%s@%s IDENTIFIED BY %s"] * len(HOSTS))
        with self._session(f"set the password of user {user}", password) as cursor:
            cursor.execute(f"ALTER USER {accounts}", tuple(v for host in HOSTS for v in (user, host, password)))

    def set_role_privilege(self, db_name: str, user: str, granted: bool) -> None:
        grant_name = quote_name(db_name, grant=True)
        _check_user(user)
        with self._session(f"{'grant' if granted else 'revoke'} CREATE USER of user {user}") as cursor:
            for host in HOSTS:
                if granted:
                    cursor.execute("GRANT CREATE USER ON *.* TO %s@%s", (user, host))
                    cursor.execute(f"GRANT ALL PRIVILEGES ON {grant_name}.* TO %s@%s WITH GRANT OPTION", (user, host))
                else:  # a global privilege not held revokes silently; the database grant exists (create made it)
                    cursor.execute("REVOKE CREATE USER ON *.* FROM %s@%s", (user, host))
                    cursor.execute(f"REVOKE GRANT OPTION ON {grant_name}.* FROM %s@%s", (user, host))
