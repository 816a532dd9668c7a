"""PgBouncer's admin console, as the pgbouncer output drives it through a rotation.

Owns: connecting to the console (psycopg, autocommit, simple queries only: the URL comes from the
variable the output names, its password registered with the redactor, never shown), and the three
moves of a cut-over:

- ``hold`` (before hep.gg's rotate): ``PAUSE db`` takes effect at once: PgBouncer hands no client a
  server connection and opens none for it (it closes its idle ones), while connections already
  linked to a client (session pooling: a long-lived client) keep running; waiting for PAUSE's answer
  is not needed (in session pooling it never comes while a client holds its server), only for no
  server login to be in flight (``SHOW POOLS`` sv_login 0). Bounded by the output's ``timeout``; on
  failure the database is resumed and the rotation not started. A database PgBouncer does not
  serve yet needs no hold.
- ``cut_over`` (after the file holds the new credentials): ``RELOAD``, check that PgBouncer serves
  the database as written (host, port, dbname, user: its %include reached the file), ``RECONNECT
  db`` (server connections opened with the old password retire as they are released; a long-lived
  session keeps its own until it ends), then ``RESUME db`` if it is paused: waiting clients log in
  with the new password, and no server login ever used the old one after the rotation.
- ``release`` (nothing was written: the rotation did not happen, or the file could not be written):
  ``RESUME db`` if paused, nothing else.
Every error is one line of fixed words, PgBouncer's own message (redacted) at most.
Must not: show the admin URL or any password; leave a database paused on any error it can act on.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from hepinfra.crashpoints import kill_point
from hepinfra.errors import OutputError
from hepinfra.safety.redact import redact, register

CONNECT_TIMEOUT = 5


def _params(url_env: str) -> tuple[dict[str, Any], str]:
    """libpq parameters from the URL in ``url_env`` (its password registered), and HOST:PORT."""
    url = os.environ.get(url_env, "")
    if not url:
        raise OutputError(
            f"{url_env} is not set: it must hold the libpq URL of PgBouncer's admin console "
            "(postgresql://USER:PASSWORD@HOST:PORT/pgbouncer, USER in admin_users)"
        )
    register(url)
    try:
        parts = urlsplit(url)
        port = parts.port or 6432
        register(parts.password, unquote(parts.password or ""))
    except ValueError:
        raise OutputError(f"{url_env} is not a postgresql:// URL") from None
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise OutputError(f"{url_env} is not a postgresql://USER:PASSWORD@HOST:PORT/pgbouncer URL")
    params: dict[str, Any] = dict(parse_qsl(parts.query))  # sslmode and the like: the user's own libpq options
    params.update(
        host=parts.hostname,
        port=str(port),
        hostaddr="",  # set (empty), so a PGHOSTADDR in the environment cannot route it elsewhere
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        dbname=unquote(parts.path[1:]) or "pgbouncer",
        connect_timeout=CONNECT_TIMEOUT,
    )
    return params, f"{parts.hostname}:{port}"


class Console:
    """One admin-console connection."""

    def __init__(self, url_env: str) -> None:
        self.params, self.where = _params(url_env)
        self.conn: Any = None

    def __enter__(self) -> Console:
        from hepinfra.extras import MissingExtraError, require

        try:
            require("psycopg", "the pgbouncer output", "postgres")
        except MissingExtraError as exc:
            raise OutputError(exc.message) from None
        import psycopg

        try:
            self.conn = psycopg.connect(autocommit=True, prepare_threshold=None, **self.params)
        except Exception as exc:  # libpq's text may quote the URL: only its first line, redacted
            raise OutputError(f"cannot reach PgBouncer's admin console at {self.where}: {_reason(exc)}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def run(self, command: str) -> list[dict[str, Any]]:
        """One admin command (a simple query); its rows as dicts."""
        try:
            cursor = self.conn.execute(command)
            names = [d.name for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()] if names else []
        except Exception as exc:
            raise OutputError(f"PgBouncer at {self.where} refused {command.split()[0]}: {_reason(exc)}") from None

    def database(self, name: str) -> dict[str, Any] | None:
        return next((row for row in self.run("SHOW DATABASES") if row["name"] == name), None)

    def logging_in(self, name: str) -> int:
        return sum(int(row["sv_login"]) for row in self.run("SHOW POOLS") if row["database"] == name)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0][:200]) if text else type(exc).__name__


def ident(name: str) -> str:
    """A database name as the admin console's grammar reads it: double-quoted."""
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def _resumed_on_error(console: Console, database: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            row = console.database(database)
            if row is not None and row["paused"]:
                console.run(f"RESUME {ident(database)}")
        raise


def hold(url_env: str, database: str, timeout: float) -> bool:
    """PAUSE ``database`` until no server login is in flight; False if PgBouncer does not serve it."""
    with Console(url_env) as pausing:
        if pausing.database(database) is None:
            return False
        with Console(url_env) as watching, _resumed_on_error(watching, database):
            pausing.conn.pgconn.send_query(f"PAUSE {ident(database)}".encode())  # answered once drained
            deadline = time.monotonic() + timeout
            while True:
                _refused(pausing)
                row = watching.database(database)
                if row is None:
                    raise OutputError(f"PgBouncer at {watching.where} stopped serving {database} during PAUSE")
                if row["paused"] and not watching.logging_in(database):
                    return True
                if time.monotonic() > deadline:
                    raise OutputError(
                        f"PgBouncer at {watching.where} still had server logins in flight for {database} "
                        f"{timeout:g}s after PAUSE; resumed, the rotation was not started"
                    )
                time.sleep(0.005)


def _refused(pausing: Console) -> None:
    """PAUSE's answer, if it came and is an error (another pause or suspend in effect)."""
    pg = pausing.conn.pgconn
    pg.consume_input()
    while not pg.is_busy():
        result = pg.get_result()
        if result is None:
            return
        if result.error_message:
            message = result.error_message.decode(errors="replace").strip().splitlines()
            raise OutputError(f"PgBouncer at {pausing.where} refused PAUSE: {redact(message[0][:200])}")


def cut_over(url_env: str, database: str, expected: dict[str, Any]) -> None:
    """RELOAD, check the database is served as ``expected`` (host, port, database, force_user),
    RECONNECT, RESUME (if paused)."""
    with Console(url_env) as console, _resumed_on_error(console, database):
        kill_point("reload")
        console.run("RELOAD")
        row = console.database(database)
        seen = {k: row.get(k) for k in expected} if row is not None else None
        if seen != expected:
            what = "does not serve it" if row is None else "serves it with another host, port, dbname or user"
            raise OutputError(
                f"after RELOAD, PgBouncer at {console.where} {what}: its pgbouncer.ini must %include the file "
                "hepinfra writes, which PgBouncer's user must be able to read",
                hint="see docs/pgbouncer.md",
            )
        console.run(f"RECONNECT {ident(database)}")
        kill_point("resume")
        if row is not None and row["paused"]:
            console.run(f"RESUME {ident(database)}")


def release(url_env: str, database: str) -> None:
    """RESUME ``database`` if it is paused; nothing else."""
    with Console(url_env) as console:
        row = console.database(database)
        if row is not None and row["paused"]:
            console.run(f"RESUME {ident(database)}")
