"""The local hep.gg's persistent world: accounts, keys, databases, uploads, in SQLite.

Owns: the schema, seeding, and every read and write the emulator's handlers make.
Must not: know about HTTP. All methods are synchronous and serialised by one lock, so a
handler's read-check-write (unique names, slot counts) is atomic.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,            -- 10 hex characters, used in dbName / dbUser
    status TEXT NOT NULL DEFAULT 'active',      -- active | suspended | not_allowed
    slots INTEGER NOT NULL,
    uploader TEXT NOT NULL DEFAULT 'allowed',   -- allowed | forbidden | revoked
    next_db INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS db_keys (
    key TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS id_keys (
    username TEXT PRIMARY KEY, token TEXT NOT NULL, account_id TEXT NOT NULL REFERENCES accounts(id),
    generations INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS upload_tokens (
    token TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS databases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    engine TEXT NOT NULL,
    db_name TEXT NOT NULL,
    db_user TEXT NOT NULL,
    password TEXT NOT NULL,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    size_refreshed_at TEXT,
    status TEXT NOT NULL DEFAULT 'active',
    created_at TEXT NOT NULL,
    rotations INTEGER NOT NULL DEFAULT 0,
    server TEXT,                    -- host:port of the real server holding it; NULL: simulated
    UNIQUE (account_id, name)
);
CREATE TABLE IF NOT EXISTS password_history (
    db_id TEXT NOT NULL, password TEXT NOT NULL, issued_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, account_id TEXT NOT NULL, filename TEXT NOT NULL, content_type TEXT NOT NULL,
    data BLOB NOT NULL, created_at TEXT NOT NULL
);
"""

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid() -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32 (the '01HV...' ids)."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def account_tag(seed: str) -> str:
    """A stable 10-hex account id derived from a seed (a key or a seed-file id)."""
    return hashlib.sha256(seed.encode()).hexdigest()[:10]


class DuplicateName(Exception):
    pass


class OutOfSlots(Exception):
    pass


@dataclass(frozen=True)
class Account:
    id: str
    status: str
    slots: int
    uploader: str


class Store:
    """SQLite-backed emulator state. ``path=None`` keeps everything in memory."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(self.path) if self.path is not None else ":memory:",
            check_same_thread=False,
            isolation_level=None,
        )
        self._db.row_factory = sqlite3.Row
        if self.path is not None:
            os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(databases)")}
        if "server" not in columns:  # a world made before databases could be real
            self._db.execute("ALTER TABLE databases ADD COLUMN server TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # --- seeding ---------------------------------------------------------------------------------

    def ensure_account(self, account_id: str, *, slots: int, status: str = "active", uploader: str = "allowed") -> str:
        with self._tx() as db:
            db.execute(
                "INSERT INTO accounts (id, slots, status, uploader) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET slots=excluded.slots, status=excluded.status, "
                "uploader=excluded.uploader",
                (account_id, slots, status, uploader),
            )
        return account_id

    def add_db_key(self, key: str, account_id: str, *, disabled: bool = False) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO db_keys (key, account_id, disabled) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET disabled=excluded.disabled",
                (key, account_id, int(disabled)),
            )

    def add_id_key(self, username: str, token: str, account_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO id_keys (username, token, account_id) VALUES (?, ?, ?) "
                "ON CONFLICT(username) DO UPDATE SET token=excluded.token",
                (username.lower(), token, account_id),
            )

    def add_upload_token(self, token: str, account_id: str, *, revoked: bool = False) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO upload_tokens (token, account_id, revoked) VALUES (?, ?, ?) "
                "ON CONFLICT(token) DO UPDATE SET revoked=excluded.revoked",
                (token, account_id, int(revoked)),
            )

    def account_of_db_key(self, key: str) -> str | None:
        row = self._one("SELECT account_id FROM db_keys WHERE key = ?", key)
        return row["account_id"] if row else None

    # --- lookups ---------------------------------------------------------------------------------

    def account(self, account_id: str) -> Account:
        row = self._one("SELECT * FROM accounts WHERE id = ?", account_id)
        if row is None:
            raise KeyError(account_id)
        return Account(row["id"], row["status"], row["slots"], row["uploader"])

    def db_key(self, key: str) -> tuple[Account, bool] | None:
        """The account of a database key and whether the key is disabled, or None."""
        row = self._one("SELECT account_id, disabled FROM db_keys WHERE key = ?", key)
        return (self.account(row["account_id"]), bool(row["disabled"])) if row else None

    def id_key(self, username: str) -> tuple[str, str] | None:
        row = self._one("SELECT token, account_id FROM id_keys WHERE username = ?", username.lower())
        return (row["token"], row["account_id"]) if row else None

    def count_generation(self, username: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE id_keys SET generations = generations + 1 WHERE username = ?", (username.lower(),))

    def upload_token(self, token: str) -> Account | None:
        row = self._one("SELECT account_id FROM upload_tokens WHERE token = ? AND revoked = 0", token)
        return self.account(row["account_id"]) if row else None

    # --- databases -------------------------------------------------------------------------------

    def list_databases(self, account_id: str) -> list[sqlite3.Row]:
        return self._all("SELECT * FROM databases WHERE account_id = ? ORDER BY seq", account_id)

    def get_database(self, account_id: str, db_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM databases WHERE id = ? AND account_id = ?", db_id, account_id)

    def create_database(
        self,
        account_id: str,
        name: str,
        engine: str,
        password: str,
        *,
        status: str = "active",
        size_bytes: int = 0,
        server: str | None = None,
        provision: Callable[[str, str], None] | None = None,
    ) -> sqlite3.Row:
        """A new database record. ``provision(db_name, db_user)``, when given, makes the real
        database before the record is committed; if it raises, nothing is recorded."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM databases WHERE account_id = ? AND name = ?", (account_id, name)).fetchone():
                raise DuplicateName(name)
            acct = db.execute("SELECT slots, next_db FROM accounts WHERE id = ?", (account_id,)).fetchone()
            used = db.execute("SELECT COUNT(*) FROM databases WHERE account_id = ?", (account_id,)).fetchone()[0]
            if used >= acct["slots"]:
                raise OutOfSlots(name)
            number = acct["next_db"]
            db.execute("UPDATE accounts SET next_db = next_db + 1 WHERE id = ?", (account_id,))
            db_id, now = ulid(), iso_now()
            db_name, db_user = f"um_{account_id}_{number}", f"dum_{account_id}_{number}"
            db.execute(
                "INSERT INTO databases (id, account_id, name, engine, db_name, db_user, password, size_bytes, "
                "size_refreshed_at, status, created_at, server) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    db_id,
                    account_id,
                    name,
                    engine,
                    db_name,
                    db_user,
                    password,
                    size_bytes,
                    now if size_bytes else None,
                    status,
                    now,
                    server,
                ),
            )
            db.execute("INSERT INTO password_history VALUES (?, ?, ?)", (db_id, password, now))
            if provision is not None:
                provision(db_name, db_user)
            row: sqlite3.Row = db.execute("SELECT * FROM databases WHERE id = ?", (db_id,)).fetchone()
            return row

    def rotate_password(
        self,
        account_id: str,
        db_id: str,
        password: str,
        *,
        apply: Callable[[sqlite3.Row], None] | None = None,
    ) -> sqlite3.Row | None:
        """The record with its new password, or None if there is no such database.
        ``apply(row)``, when given, sets the password on the real server before the record is
        committed; if it raises, the record is unchanged."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE databases SET password = ?, rotations = rotations + 1 WHERE id = ? AND account_id = ?",
                (password, db_id, account_id),
            )
            if cur.rowcount == 0:
                return None
            db.execute("INSERT INTO password_history VALUES (?, ?, ?)", (db_id, password, iso_now()))
            row: sqlite3.Row = db.execute("SELECT * FROM databases WHERE id = ?", (db_id,)).fetchone()
            if apply is not None:
                apply(row)
            return row

    def set_database(self, db_id: str, *, status: str | None = None, size_bytes: int | None = None) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT 1 FROM databases WHERE id = ?", (db_id,)).fetchone()
            if row is None:
                return False
            if status is not None:
                db.execute("UPDATE databases SET status = ? WHERE id = ?", (status, db_id))
            if size_bytes is not None:
                db.execute(
                    "UPDATE databases SET size_bytes = ?, size_refreshed_at = ? WHERE id = ?",
                    (size_bytes, iso_now(), db_id),
                )
            return True

    def check_password(self, db_user: str, password: str) -> bool:
        """Would a login as ``db_user`` with ``password`` succeed on the engine right now?"""
        row = self._one("SELECT password FROM databases WHERE db_user = ?", db_user)
        return row is not None and secrets.compare_digest(row["password"].encode(), password.encode())

    def issued_secrets(self) -> list[str]:
        """Every password ever issued, plus every key and token: for tests' secret scans."""
        values = [r[0] for r in self._all("SELECT password FROM password_history")]
        values += [r[0] for r in self._all("SELECT key FROM db_keys")]
        values += [r[0] for r in self._all("SELECT token FROM id_keys")]
        values += [r[0] for r in self._all("SELECT token FROM upload_tokens")]
        return values

    # --- uploads ---------------------------------------------------------------------------------

    def add_upload(self, account_id: str, filename: str, content_type: str, data: bytes) -> str:
        upload_id = secrets.token_urlsafe(8)
        with self._tx() as db:
            db.execute(
                "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
                (upload_id, account_id, filename, content_type, data, iso_now()),
            )
        return upload_id

    def get_upload(self, upload_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM uploads WHERE id = ?", upload_id)
