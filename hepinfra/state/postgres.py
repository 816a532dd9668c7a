"""The PostgreSQL state backend: rows of ``<schema>.states`` and ``<schema>.locks``.

Owns: one connection per backend object (autocommit), the tables (created if missing, under a
transaction-level advisory lock so that racing first runs do not collide), and turning
psycopg's failures into one line naming the schema and server, never the password.
- A state row holds env, lineage, serial, the canonical JSON body, the previous body (backup)
  and updated_at. A write is one ``UPDATE ... WHERE lineage = read AND serial = read``: a write
  that raced another changes no row and is refused, never lost.
- The lock is a session-level ``pg_try_advisory_lock`` held for the whole run, plus a row in
  ``locks`` naming the holder. A holder that dies (or whose connection drops) releases the
  advisory lock at once, so its row no longer counts: nothing is ever stuck. A session the server
  still keeps for a holder whose process is gone from this host (same host, boot id and PID
  namespace; its pid with its start time no longer runs) is ended (pg_terminate_backend).
- Every statement has a deadline (``bounded.Deadlines``): with no answer in time the session's
  socket is shut (the server drops the lock as soon as it runs again). The holder checks its
  session every refresh interval; a check with no answer, or a session gone, ends the run.
The libpq URL comes from the variable the manifest's ``url_env`` names, so PGPASSWORD,
~/.pgpass and sslmode work as usual.
Must not: import psycopg before it is used, or put the URL or its password in any message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Mapping
from typing import Any

from hepinfra.errors import LockError, StateError
from hepinfra.safety.paths import shown
from hepinfra.state.backend import LockInfo, holder_from, holder_process_gone
from hepinfra.state.bounded import Deadlines, Heartbeat, NoAnswer, refresh_interval
from hepinfra.state.model import State
from hepinfra.state.spec import PostgresState
from hepinfra.state.stored import Conflict, StoredBackend

CONNECT_TIMEOUT_S = 10
SESSION_CLOSED = "its database session was closed; the server frees it as soon as it runs again"
log = logging.getLogger("hepinfra.state")


class PostgresBackend(StoredBackend):
    frees_dead_holders = True  # the advisory lock dies with its session

    def __init__(self, spec: PostgresState, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.where = spec.where()
        self._environ = os.environ if environ is None else environ
        self._conn: Any = None
        self._mine: dict[str, LockInfo] = {}
        self._server = ""
        self.deadlines = Deadlines(self._place())
        self._beat: Heartbeat | None = None
        self.release_note = ""  # how the last unlock released the lock, when that needs saying

    def source(self, env: str) -> str:
        return f"postgres {self.spec.schema_}.states[{env}]"

    # --- the connection ---------------------------------------------------------------------------------

    def _place(self) -> str:
        return f"state backend postgres (schema {self.spec.schema_}{' at ' + self._server if self._server else ''})"

    def _connect(self) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._mine:  # the session that held our advisory locks is gone, and the locks with it
            envs = ", ".join(sorted(self._mine))
            raise LockError(
                f"{self._place()}: the database session holding the lock of {envs} ended (the server closed "
                "it, or the network dropped); another run may hold the lock now, so this run stops here",
                hint="run again; an interrupted step is finished from the journal",
            )
        from hepinfra.extras import require

        psycopg = require("psycopg", self._place(), "postgres")
        url = self._environ.get(self.spec.url_env, "")
        self._server = _server_of(url, self.spec.url_env, self._environ.get("PGPASSWORD", ""), self._place())
        try:
            timeout = max(2, min(CONNECT_TIMEOUT_S, math.ceil(self.deadlines.timeout)))
            conn = psycopg.connect(url, autocommit=True, connect_timeout=timeout, application_name="hepinfra")
        except psycopg.Error as exc:
            raise StateError(f"{self._place()}: cannot connect: {_first_line(exc)}") from None
        except ValueError:  # a URL libpq parses but psycopg cannot decode (bytes that are not UTF-8)
            raise StateError(f"{self._place()}: {self.spec.url_env} is not a libpq URL or key=value string") from None
        self._conn = conn
        try:
            _prepare(conn, self.spec.schema_, self._place())
        except psycopg.Error as exc:
            self.close()
            raise StateError(f"{self._place()}: cannot prepare the tables: {_first_line(exc)}") from None
        except StateError:
            self.close()
            raise
        return conn

    def _sql(self, query: str, params: tuple[Any, ...] = (), doing: str = "querying") -> Any:
        """Run one statement (``{s}`` is the schema) within the request timeout; every failure is one
        StateError line."""
        return self.deadlines.call(doing, lambda: self._sql_now(query, params), place=self._place(), abort=self._abort)

    def _abort(self) -> None:
        """No answer: shut the session's socket (the server drops its locks as soon as it runs again)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            _shut(conn)

    def _session_gone(self) -> bool:
        conn = self._conn
        return conn is None or bool(conn.closed) or bool(conn.broken)

    def _check_session(self) -> bool:
        """The heartbeat: the session holding our advisory locks still answers (False: nothing held)."""
        if not self._mine:
            return False
        self._sql("SELECT 1", doing="checking the database session that holds the lock")
        return True

    def _sql_now(self, query: str, params: tuple[Any, ...]) -> Any:
        conn = self._connect()  # first: it says so when psycopg is not installed
        import psycopg
        from psycopg import sql

        try:
            return conn.execute(sql.SQL(query).format(s=sql.Identifier(self.spec.schema_)), params)
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                self._conn = None  # the next call says the session (and any lock it held) is gone
                if self._mine:
                    return self._connect()  # raises: the lock went with the session
            raise StateError(f"{self._place()}: {_first_line(exc)}") from None

    def close(self) -> None:
        if self._beat is not None:
            self._beat.stop(wait=0)
            self._beat = None
        if self._conn is not None:
            self._conn.close()  # any advisory lock still held goes with the session
        self._conn = None
        self._held.clear()
        self._mine.clear()

    # --- StoredBackend primitives -----------------------------------------------------------------------

    def _load(self, env: str) -> tuple[bytes, str] | None:
        row = self._sql(
            "SELECT body, lineage, serial FROM {s}.states WHERE env = %s", (env,), doing="reading state"
        ).fetchone()
        if row is None:
            return None
        return str(row[0]).encode(), f"{row[1]}:{row[2]}"

    def _store(self, env: str, data: bytes, state: State, expect: str | None) -> str:
        body = data.decode()
        if expect is None:
            cur = self._sql(
                "INSERT INTO {s}.states (env, lineage, serial, body) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (env) DO NOTHING",
                (env, state.lineage, state.serial, body),
                doing="writing state",
            )
        else:
            lineage, _, serial = expect.rpartition(":")
            cur = self._sql(
                "UPDATE {s}.states SET lineage = %s, serial = %s, body = %s, updated_at = now() "
                "WHERE env = %s AND lineage = %s AND serial = %s",
                (state.lineage, state.serial, body, env, lineage, int(serial)),
                doing="writing state",
            )
        if cur.rowcount != 1:
            raise Conflict
        return f"{state.lineage}:{state.serial}"

    def _backup(self, env: str, data: bytes) -> None:
        self._sql("UPDATE {s}.states SET backup = %s WHERE env = %s", (data.decode(), env), "writing the state backup")

    def _names(self) -> list[str]:
        return [str(row[0]) for row in self._sql("SELECT env FROM {s}.states", (), "listing environments").fetchall()]

    def _try_lock(self, env: str, mine: LockInfo) -> LockInfo | None:
        if env in self._mine:  # session locks nest: refuse a second hold as any other holder would be
            return self._mine[env]
        key = _advisory_key(self.spec.schema_, env)
        row = self._sql("SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (key,), "taking the lock").fetchone()
        if row is not None and row[0]:
            self._sql(
                "INSERT INTO {s}.locks (env, lock_id, holder, session_pid) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (env) DO UPDATE SET lock_id = EXCLUDED.lock_id, holder = EXCLUDED.holder, "
                "session_pid = EXCLUDED.session_pid, taken_at = now()",
                (env, mine.id, json.dumps(mine.as_dict()), row[1]),
                "taking the lock",
            )
            self._mine[env] = mine
            if self._beat is None:
                self._beat = Heartbeat("hepinfra-pg-session", refresh_interval(), self._check_session)
                self._beat.start()
            return None
        for _ in range(50):  # the holder takes the advisory lock, then writes its row
            holder = self._live_holder(env)
            if holder is not None:
                if holder_process_gone(holder[0], strict=True) and self._end_session_of_dead(env, *holder):
                    return self._try_lock(env, mine)
                return holder[0]
            time.sleep(0.01)
        return LockInfo(id="?", pid=0, host="?", user="?", created="?", command="(taking the lock)")

    def _end_session_of_dead(self, env: str, holder: LockInfo, session: int) -> bool:
        """The holder's process is gone from this host, yet the server keeps its session (it has not
        noticed the connection is dead): end that session, as the holder's death would have."""
        self._sql("SELECT pg_terminate_backend(%s)", (session,), "ending the session of a dead holder")
        deadline = time.monotonic() + self.deadlines.timeout
        while self._live_holder(env) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        why = f"its process (pid {holder.pid} on this host) is gone"
        log.warning("took over the lock of environment '%s' from %s: %s", env, holder.describe(), why)
        return True

    # --- Locker ---------------------------------------------------------------------------------------

    def _live_holder(self, env: str) -> tuple[LockInfo, int] | None:
        """The holder row whose session holds the advisory lock now, with that session's pid."""
        unsigned = _advisory_key(self.spec.schema_, env) & 0xFFFFFFFFFFFFFFFF
        row = self._sql(
            "SELECT l.holder::text, l.session_pid FROM {s}.locks l WHERE l.env = %s AND EXISTS ("
            " SELECT 1 FROM pg_locks p WHERE p.locktype = 'advisory' AND p.granted AND p.pid = l.session_pid"
            " AND p.classid = %s::bigint::oid AND p.objid = %s::bigint::oid AND p.objsubid = 1"
            " AND p.database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            (env, unsigned >> 32, unsigned & 0xFFFFFFFF),
            "reading the lock",
        ).fetchone()
        return (holder_from(str(row[0]).encode()), int(row[1])) if row is not None else None

    def _release_now(self, env: str, lock_id: str) -> None:
        self._sql("DELETE FROM {s}.locks WHERE env = %s AND lock_id = %s", (env, lock_id))
        self._sql("SELECT pg_advisory_unlock(%s)", (_advisory_key(self.spec.schema_, env),))

    def lock_holder(self, env: str) -> LockInfo | None:
        live = self._live_holder(env)
        return live[0] if live is not None else None

    def holder_alive(self, env: str) -> bool:
        live = self._live_holder(env)
        return live is not None and self._mine.get(env, None) is None

    def unlock(self, env: str, lock_id: str, *, force: bool = False) -> None:
        mine = self._mine.get(env)
        if mine is not None and mine.id == lock_id:
            try:
                if self._session_gone():  # the advisory lock went with the session
                    self.release_note = SESSION_CLOSED
                else:
                    self.deadlines.call(
                        "releasing the lock", lambda: self._release_now(env, lock_id), place=self._place(),
                        abort=self._abort, after_stall=True,
                    )  # fmt: skip
            except NoAnswer:  # _abort shut the session
                self.release_note = SESSION_CLOSED
            finally:
                del self._mine[env]
                self._held.pop(env, None)
                if not self._mine and self._beat is not None:
                    self._beat.stop(wait=0)
                    self._beat = None
            return
        live = self._live_holder(env)
        if live is None:
            self._sql("DELETE FROM {s}.locks WHERE env = %s AND lock_id = %s", (env, lock_id))  # a dead row
            raise LockError(f"the state of environment '{env}' in {self.where} is not locked")
        holder, session = live
        if holder.id != lock_id:
            raise LockError(f"lock id {shown(lock_id, 40)} does not match the lock held by {holder.describe()}")
        if not force:
            raise LockError(
                f"the lock of environment '{env}' is held by a live database session (server pid {session}) "
                f"of {holder.describe()}",
                hint="it is released the moment that run ends; --force ends that session",
            )
        self._sql("SELECT pg_terminate_backend(%s)", (session,))
        deadline = time.monotonic() + 10
        while self._live_holder(env) is not None:
            if time.monotonic() > deadline:
                raise LockError(f"the session holding the lock of environment '{env}' did not end")
            time.sleep(0.05)
        self._sql("DELETE FROM {s}.locks WHERE env = %s AND lock_id = %s", (env, lock_id))


_SHAPE = {
    ("states", "env", "text"),
    ("states", "lineage", "text"),
    ("states", "serial", "bigint"),
    ("states", "body", "text"),
    ("states", "backup", "text"),
    ("locks", "env", "text"),
    ("locks", "lock_id", "text"),
    ("locks", "holder", "jsonb"),
    ("locks", "session_pid", "integer"),
}


def _prepare(conn: Any, schema_name: str, place: str) -> None:
    """Check hepinfra's two tables, or make them (under a transaction-level advisory lock)."""
    from psycopg import sql

    schema = sql.Identifier(schema_name)
    conn.execute("SET statement_timeout = '30s'")
    found = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
        (f'"{schema_name}".states', f'"{schema_name}".locks'),
    ).fetchone()
    if found and found[0]:
        _check_shape(conn, schema_name, place)
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_advisory_key("", "schema"),))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.states ("
                " env text PRIMARY KEY, lineage text NOT NULL, serial bigint NOT NULL,"
                " body text NOT NULL, backup text, updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(schema)
        )
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.locks ("
                " env text PRIMARY KEY, lock_id text NOT NULL, holder jsonb NOT NULL,"
                " session_pid integer NOT NULL, taken_at timestamptz NOT NULL DEFAULT now())"
            ).format(schema)
        )


def _server_of(url: str, url_env: str, pgpassword: str, place: str) -> str:
    """``user@host:port/db`` of a libpq URL, for messages (its password registered with the redactor);
    StateError when the URL is missing or cannot be trusted to name one server."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from hepinfra.safety.redact import register

    if not url.strip():
        raise StateError(
            f"{place}: {url_env} is not set",
            hint=f"export {url_env}=postgresql://USER@HOST:PORT/DBNAME (the password from "
            "PGPASSWORD or ~/.pgpass, not the manifest)",
        )
    register(url, pgpassword)
    try:
        parts = conninfo_to_dict(url)
    except (psycopg.Error, ValueError):
        raise StateError(f"{place}: {url_env} is not a libpq URL or key=value string") from None
    register(str(parts.get("password") or ""))
    host, port = str(parts.get("host") or "localhost"), str(parts.get("port") or "5432")
    db, user = str(parts.get("dbname") or ""), str(parts.get("user") or "")
    if not re.fullmatch(r"[0-9,]+", port) or "@" in host + db or "/" in db:
        # a password with an unescaped '/', '@' or ':' makes libpq read parts of it as host, port or
        # database: nothing of this parse may be shown, and connecting would send it elsewhere
        raise StateError(
            f"{place}: {url_env} is not a valid libpq URL (its port, host or database name is malformed)",
            hint="percent-encode '/', '@', ':' and '%' in the password (or put it in PGPASSWORD)",
        )
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


def _shut(conn: Any) -> None:
    """Shut a connection's socket under it: a statement waiting on it wakes up and fails."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _advisory_key(schema: str, env: str) -> int:
    digest = hashlib.sha256(f"hepinfra\0{schema}\0{env}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _first_line(exc: BaseException) -> str:
    from hepinfra.safety.redact import redact

    text = str(exc).strip().splitlines()
    return redact(" ".join(text[0].split()))[:300] if text else type(exc).__name__


def _check_shape(conn: Any, schema: str, place: str) -> None:
    """Tables of these names that are not hepinfra's are refused, not misread."""
    rows = conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name IN ('states', 'locks')",
        (schema,),
    ).fetchall()
    have = {(str(t), str(c), str(d)) for t, c, d in rows}
    missing = sorted(f"{t}.{c}" for t, c, d in _SHAPE if (t, c, d) not in have)
    if missing:
        raise StateError(
            f"{place}: the tables states and locks there are not hepinfra's ({missing[0]} is missing or "
            "of another type)",
            hint="name another schema: in the state: block",
        )
