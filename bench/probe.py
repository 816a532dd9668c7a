"""The consumer probe: what a credential change costs the programs that use a database.

A consumer that opens a NEW connection every ``interval`` (10 ms) with the credential as it would
read it (``connect`` is called each time: re-read a ``.env``, or dial PgBouncer with its own stable
credential), runs ``SELECT 1`` on it and closes it; and ONE long-lived connection that runs
``SELECT 1`` every ``interval`` for as long as the probe runs (reopened if it drops, which is
counted). Every attempt is kept with its start and end time, so a report covers any window
(``mark()`` before a rotation, ``report(since=mark)`` after it).

    probe = Probe(connect=lambda: psycopg.connect(url, connect_timeout=5)).start()
    mark = probe.mark()
    ...                                  # rotate
    print(probe.report(since=mark))      # failed connections, ms of outage, drops of the held one
    probe.stop()

Outage: from the start of the first failed attempt to the start of the first successful attempt
after it (summed over the window when there are several runs of failures; a run still failing at
the end of the window counts up to its last failure). Errors are kept as their first line only.
Importable by tests (``from bench.probe import Probe``); needs only the driver a ``connect`` uses.

A consumer in another process (one that ``hepinfra run --watch`` restarts with new values):

    python bench/probe.py --env SHOP_URL --journal probe.jsonl     # the URL from its environment

appends every attempt to the journal as it ends (a line of JSON each, the same clock: perf_counter
is CLOCK_MONOTONIC, one for every process on the host), across restarts; ``JournalProbe(path)`` reads
it back with the same ``mark``/``wait``/``report``. A restart shows as a gap between two new
connections (``longest_gap_ms``) and as the end of the held connection (``restarts``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Attempt:
    started: float  # time.perf_counter()
    ended: float
    ok: bool
    error: str = ""


@dataclass
class Report:
    attempts: int = 0  # new connections opened (each runs SELECT 1)
    failures: int = 0  # of them, those that failed (to connect or to answer)
    outage_ms: float = 0.0  # first failure -> first success after it, summed over the window
    max_connect_ms: float = 0.0  # the slowest successful new connection (a held pooler shows here)
    held_queries: int = 0  # SELECT 1 on the long-lived connection
    held_failures: int = 0  # of them, those that failed
    held_drops: int = 0  # times the long-lived connection was lost (it is then reopened)
    held_max_ms: float = 0.0  # the slowest SELECT 1 on it
    longest_gap_ms: float = 0.0  # the longest time between two new connections' starts (a consumer down)
    restarts: int = 0  # a consumer in another process: how many times it started anew (JournalProbe)
    errors: dict[str, int] = field(default_factory=dict)  # first line of each error -> how many

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _select_1(conn: Any) -> None:
    cursor = conn.cursor()
    try:
        cursor.execute("SELECT 1")
        row = cursor.fetchone()
    finally:
        cursor.close()
    if row is None or row[0] != 1:
        raise RuntimeError(f"SELECT 1 answered {row!r}")


def _closed(conn: Any) -> bool:
    """Is this connection gone (psycopg: ``closed``/``broken``; PyMySQL: not ``open``)?"""
    if conn is None:
        return True
    if hasattr(conn, "broken"):
        return bool(conn.closed or conn.broken)
    try:
        conn.ping(reconnect=False)  # PyMySQL
        return False
    except Exception:
        return True


class Probe:
    """``connect()`` returns a DB-API connection (psycopg, PyMySQL). ``hold``: also keep one
    long-lived connection running ``SELECT 1`` (opened with ``connect`` at ``start``). ``workers``:
    new connections in flight at most (one starts every ``interval`` while fewer are). ``record``:
    called with ``("fresh" | "held" | "drop", Attempt)`` as each ends (a journal; under the lock)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        interval: float = 0.01,
        hold: bool = True,
        workers: int = 1,
        record: Callable[[str, Attempt], None] | None = None,
    ) -> None:
        self.connect, self.interval, self.hold, self.workers = connect, interval, hold, workers
        self.record = record
        self._lock = threading.Lock()
        self._fresh: list[Attempt] = []
        self._held: list[Attempt] = []
        self._drops: list[float] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._held_conn: Any = None
        self._last_mark = 0.0

    # --- driving ---------------------------------------------------------------------------------

    def start(self, *, held_now: bool = True) -> Probe:
        if self.hold and held_now:
            self._held_conn = self.connect()  # the test needs it: a failure here is raised
        self._threads = [threading.Thread(target=self._fresh_loop, daemon=True)]
        if self.hold:
            self._threads.append(threading.Thread(target=self._held_loop, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> Report:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        if self._held_conn is not None:
            with contextlib.suppress(Exception):
                self._held_conn.close()
        return self.report()

    def mark(self) -> float:
        """Now: pass it to ``report(since=...)``; ``wait`` then counts only attempts started since."""
        self._last_mark = time.perf_counter()
        return self._last_mark

    def wait(self, successes: int = 3, timeout: float = 30.0, since: float | None = None) -> None:
        """Until the last ``successes`` new connections have worked, each started at ``since`` or later
        (default: the last ``mark()``), so after a rotation it means recovered: attempts that began
        before it and were held through it (a paused pooler) do not count."""
        since = self._last_mark if since is None else since
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            self._load()
            with self._lock:
                tail = self._fresh[-successes:]
            if len(tail) == successes and all(a.ok and a.started >= since for a in tail):
                return
            time.sleep(self.interval)
        raise TimeoutError(f"the probe saw no {successes} working connections in a row within {timeout}s")

    def _load(self) -> None:
        """Attempts made elsewhere (JournalProbe): none for a probe in this process."""

    # --- the two consumers -----------------------------------------------------------------------

    def _fresh_loop(self) -> None:
        """Start an attempt every ``interval`` (each in its own thread: a login takes longer than 10 ms),
        at most ``workers`` at once (a tick with every worker busy is skipped: the server is slow)."""
        busy = threading.Semaphore(self.workers)
        next_at = time.perf_counter()
        while not self._stop.is_set():
            if busy.acquire(blocking=False):
                threading.Thread(target=self._attempt, args=(busy,), daemon=True).start()
            next_at = max(next_at + self.interval, time.perf_counter())
            self._stop.wait(max(0.0, next_at - time.perf_counter()))
        for _ in range(self.workers):  # every attempt in flight has ended
            busy.acquire(timeout=30)

    def _attempt(self, busy: threading.Semaphore) -> None:
        started = time.perf_counter()
        try:
            conn = self.connect()
            try:
                _select_1(conn)
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
            attempt = Attempt(started, time.perf_counter(), True)
        except Exception as exc:
            attempt = Attempt(started, time.perf_counter(), False, _first_line(exc))
        finally:
            busy.release()
        with self._lock:
            self._fresh.append(attempt)
            if self.record is not None:
                self.record("fresh", attempt)

    def _held_loop(self) -> None:
        next_at = time.perf_counter()
        while not self._stop.is_set():
            started = time.perf_counter()
            was_open = self._held_conn is not None
            try:
                if self._held_conn is None:
                    self._held_conn = self.connect()
                _select_1(self._held_conn)
                attempt = Attempt(started, time.perf_counter(), True)
            except Exception as exc:
                attempt = Attempt(started, time.perf_counter(), False, _first_line(exc))
                if was_open and _closed(self._held_conn):  # lost: reopened (a failed reopen is no new drop)
                    with self._lock:
                        self._drops.append(started)
                        if self.record is not None:
                            self.record("drop", Attempt(started, started, False))
                    with contextlib.suppress(Exception):
                        self._held_conn.close()
                    self._held_conn = None
            with self._lock:
                self._held.append(attempt)
                if self.record is not None:
                    self.record("held", attempt)
            next_at = max(next_at + self.interval, time.perf_counter())
            self._stop.wait(max(0.0, next_at - time.perf_counter()))

    # --- reporting -------------------------------------------------------------------------------

    def report(self, since: float = 0.0, until: float | None = None) -> Report:
        """Everything that started in [since, until)."""
        end = time.perf_counter() if until is None else until
        with self._lock:
            fresh = [a for a in self._fresh if since <= a.started < end]
            held = [a for a in self._held if since <= a.started < end]
            drops = [d for d in self._drops if since <= d < end]
        errors = Counter(a.error for a in [*fresh, *held] if not a.ok)
        starts = sorted(a.started for a in fresh)
        return Report(
            attempts=len(fresh),
            failures=sum(not a.ok for a in fresh),
            outage_ms=round(outage_ms(fresh), 2),
            max_connect_ms=round(max(((a.ended - a.started) * 1000 for a in fresh if a.ok), default=0.0), 2),
            held_queries=len(held),
            held_failures=sum(not a.ok for a in held),
            held_drops=len(drops),
            held_max_ms=round(max(((a.ended - a.started) * 1000 for a in held if a.ok), default=0.0), 2),
            longest_gap_ms=round(max(((b - a) * 1000 for a, b in itertools.pairwise(starts)), default=0.0), 2),
            restarts=self._restarts(since, end),
            errors=dict(errors),
        )

    def _restarts(self, since: float, end: float) -> int:
        return 0  # one process: it never restarts


def outage_ms(attempts: list[Attempt]) -> float:
    """First failure -> first success after it, summed over every run of failures."""
    total = 0.0
    first_failure: float | None = None
    last_failure = 0.0
    for attempt in sorted(attempts, key=lambda a: a.started):
        if not attempt.ok:
            if first_failure is None:
                first_failure = attempt.started
            last_failure = attempt.started
        elif first_failure is not None:
            total += attempt.started - first_failure
            first_failure = None
    if first_failure is not None:  # still failing at the end of the window
        total += last_failure - first_failure
    return total * 1000


# --- connect functions: how a consumer reads its credential ------------------------------------------


def connect_url(url: str, timeout: int = 5) -> Any:
    """A connection to ``url`` (postgresql:// with psycopg, mysql:// with PyMySQL), exactly as it says."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        import psycopg

        # no server-side prepared statements: through PgBouncer's transaction pooling (before 1.21) the
        # next statement may run on another server connection
        return psycopg.connect(url, connect_timeout=timeout, autocommit=True, prepare_threshold=None)
    import pymysql

    return pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=unquote(parts.path[1:]),
        connect_timeout=timeout,
        autocommit=True,
    )


def from_dotenv(path: Path, key: str) -> Callable[[], Any]:
    """A consumer that re-reads ``key`` from the dotenv file ``path`` before every connection."""
    from dotenv import dotenv_values

    def connect() -> Any:
        url = dotenv_values(path).get(key)
        if not url:
            raise RuntimeError(f"{key} is not in {path.name}")
        return connect_url(url)

    return connect


def from_url(url: str) -> Callable[[], Any]:
    """A consumer with one stable URL (PgBouncer's, with the consumer's own credential)."""
    return lambda: connect_url(url)


# --- a consumer in another process ---------------------------------------------------------------------


class JournalProbe(Probe):
    """The attempts of a probe in other processes (``python bench/probe.py --journal PATH``, restarted
    any number of times), read back from its journal: ``mark``, ``wait``, ``report`` as for a Probe."""

    def __init__(self, path: Path, *, interval: float = 0.01) -> None:
        super().__init__(lambda: None, interval=interval)
        self.path = path
        self._read = 0  # bytes of the journal read so far
        self._first: dict[int, float] = {}  # pid -> when its earliest attempt started

    def start(self, *, held_now: bool = True) -> JournalProbe:
        return self  # the process runs on its own

    def stop(self) -> Report:
        return self.report()

    def report(self, since: float = 0.0, until: float | None = None) -> Report:
        self._load()
        return super().report(since, until)

    def _restarts(self, since: float, end: float) -> int:
        starts = sorted(self._first.values())[1:]  # the first process is a start, not a restart
        return sum(since <= first < end for first in starts)

    def _load(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._read)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written is read next time
        self._read += len(complete)
        with self._lock:
            for line in complete.decode().splitlines():
                kind, pid, started, ended, ok, error = json.loads(line)
                attempt = Attempt(started, ended, ok, error)
                self._first[pid] = min(started, self._first.get(pid, started))  # lines come as attempts end
                {"fresh": self._fresh, "held": self._held}.get(kind, []).append(attempt)
                if kind == "drop":
                    self._drops.append(started)
            self._fresh.sort(key=lambda a: a.started)


def main() -> None:
    """A probe whose URL is in the variable ``--env`` (as ``hepinfra run`` gives it), journaling every
    attempt to ``--journal`` until it is stopped (SIGTERM: what a restart sends)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--env", required=True, help="the variable that holds the database URL")
    parser.add_argument("--journal", required=True, type=Path, help="append every attempt here (JSON lines)")
    args = parser.parse_args()
    url = os.environ.get(args.env)
    if not url:
        raise SystemExit(f"{args.env} is not set")
    journal = args.journal.open("a", buffering=1)  # a line per write: a SIGTERM loses nothing written
    pid = os.getpid()

    def record(kind: str, a: Attempt) -> None:
        journal.write(json.dumps([kind, pid, a.started, a.ended, a.ok, a.error]) + "\n")

    probe = Probe(from_url(url), record=record).start(held_now=False)  # the held one opens in its loop
    probe._stop.wait()  # until the signal ends the process


if __name__ == "__main__":
    main()
