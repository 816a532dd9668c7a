"""Bounded calls to a remote state backend: a deadline on each, progress while one is slow, and
the end of a run whose backend stopped answering.

Owns: the settings (``HEPINFRA_STATE_TIMEOUT``, ``HEPINFRA_LOCK_REFRESH``,
``HEPINFRA_STATE_PROGRESS``) and the bound they give (``bound``: how long a run takes at most to
end once its backend stops answering); ``Deadlines`` (one per backend object: each call runs in a
daemon worker thread and is waited on for at most the request timeout, with a line on stderr
every few seconds while it is slow; a call with no answer raises ``NoAnswer`` naming the backend
and what it was doing, and every later call but the lock's release fails at once in the same
words, so a run that lost its backend spends one request timeout, not one per call);
``Heartbeat`` (a thread that refreshes or checks a held lock every refresh interval; one that
gets no answer ends the run through ``report_stall``, which the command runner listens to with
``on_stall``); ``release`` (a lock given back at the end of a run, saying plainly when it could
not be and the command that clears it).
Must not: know what a backend stores, or retry (the libraries' own retries run inside the deadline).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from hepinfra.errors import HepinfraError, StateError

if TYPE_CHECKING:
    from hepinfra.state.backend import Backend

R = TypeVar("R")
log = logging.getLogger("hepinfra.state")

DEFAULT_TIMEOUT_S = 20.0  # HEPINFRA_STATE_TIMEOUT: one call to the backend, its library's retries included
DEFAULT_REFRESH_S = 60.0  # HEPINFRA_LOCK_REFRESH: a held lock is refreshed (s3) or checked (postgres) this often
DEFAULT_PROGRESS_S = 5.0  # HEPINFRA_STATE_PROGRESS: a line on stderr this often while a call is slow


def _seconds(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    units = {"s": 1, "m": 60}
    scale = units.get(raw[-1], 1)
    try:
        value = float(raw[:-1] if raw[-1] in units else raw) * scale
    except ValueError:
        value = -1.0
    if not low <= value <= high:
        raise StateError(f"{name}: '{raw[:20]}' is not a duration between {low:g}s and {high:g}s (such as 20s)")
    return value


def request_timeout() -> float:
    """The deadline of each call to a state backend (seconds)."""
    return _seconds("HEPINFRA_STATE_TIMEOUT", DEFAULT_TIMEOUT_S, 0.5, 600)


def refresh_interval(lock_ttl: float | None = None) -> float:
    """How often a held lock is refreshed (s3: at most a fifth of its lock_ttl) or checked (postgres)."""
    every = _seconds("HEPINFRA_LOCK_REFRESH", DEFAULT_REFRESH_S, 0.5, 3600)
    return every if lock_ttl is None else max(0.5, min(every, lock_ttl / 5))


def progress_interval() -> float:
    return _seconds("HEPINFRA_STATE_PROGRESS", DEFAULT_PROGRESS_S, 0.2, 600)


def bound(lock_ttl: float | None = 600) -> float:
    """At most this many seconds pass between a backend's last answer and the end of the run:
    the lock's next refresh comes within one refresh interval and gets no answer within one
    request timeout; the release of the lock is given one more request timeout. (A call in
    flight meanwhile fails within its own timeout, and every later call at once.)"""
    return 2 * request_timeout() + refresh_interval(lock_ttl)


class NoAnswer(StateError):
    """A state backend gave no answer within the request timeout; names it and what was being done."""

    def __init__(self, message: str, *, place: str, doing: str) -> None:
        super().__init__(message)
        self.place, self.doing = place, doing

    def add(self, note: str) -> None:
        """Append ``note`` (what became of the lock) to the one line."""
        self.message = f"{self.message}; {note}"
        self.args = (self.message,)


_inside = threading.local()  # set in a worker: a bounded call made by a bounded call runs in place


class Deadlines:
    """The deadline of every call to one backend object, and whether that backend stopped answering."""

    def __init__(self, place: str) -> None:
        self.place = place
        self.timeout = request_timeout()
        self.progress = progress_interval()
        self.stalled: NoAnswer | None = None
        self._again: NoAnswer | None = None

    def call(
        self,
        doing: str,
        fn: Callable[[], R],
        *,
        place: str | None = None,
        abort: Callable[[], None] | None = None,
        after_stall: bool = False,
    ) -> R:
        """``fn()``, or NoAnswer after ``timeout`` seconds (then ``abort()``, e.g. to close a socket
        the worker waits on). Once a call got no answer, calls fail at once unless ``after_stall``."""
        where = place or self.place
        if getattr(_inside, "active", False):
            return fn()
        first = self.stalled
        if first is not None and (not after_stall or self._again is not None):
            raise NoAnswer(
                f"{where}: not {doing}: the backend gave no answer within {self.timeout:g} s while {first.doing}",
                place=where,
                doing=doing,
            )
        box: list[tuple[bool, object]] = []
        done = threading.Event()

        def work() -> None:
            _inside.active = True
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed to the caller's thread
                box.append((False, exc))
            finally:
                done.set()

        threading.Thread(target=work, name="hepinfra-state-call", daemon=True).start()
        started = time.monotonic()
        deadline = started + self.timeout
        while not done.wait(max(0.0, min(self.progress, deadline - time.monotonic()))):
            now = time.monotonic()
            if now >= deadline:
                break
            say(f"still waiting for {where}: {doing} ({now - started:.0f} s)")
        if not done.is_set():
            error = NoAnswer(f"{where}: no answer within {self.timeout:g} s while {doing}", place=where, doing=doing)
            if self.stalled is None:
                self.stalled = error
            elif after_stall:
                self._again = error  # one more try after a stall (the release), not one per lock
            if abort is not None:
                with contextlib.suppress(Exception):
                    abort()
            raise error
        ok, value = box[0]
        if ok:
            return value  # type: ignore[return-value]
        assert isinstance(value, BaseException)
        raise value


def say(line: str) -> None:
    """One progress line on stderr (through the redactor), on a TTY and in CI alike."""
    from hepinfra.safety.redact import redact

    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(redact(line) + "\n")
        sys.stderr.flush()


# --- a heartbeat's stall ends the run -------------------------------------------------------------

_stall_lock = threading.Lock()
_stalls: list[StateError] = []
_listeners: list[Callable[[StateError], None]] = []
_run = [0]  # the current run's number (``on_stall``): a heartbeat left by an earlier run never ends this one


def report_stall(error: StateError, run: int | None = None) -> None:
    """A held lock could not be refreshed or checked: record it (the first one counts) and tell the
    listeners (the command runner cancels the run, which then releases its locks). ``run``: the run
    whose heartbeat it was; a stall of an earlier run's lock (left alive in this process) is ignored."""
    with _stall_lock:
        if run is not None and run != _run[0]:
            return
        first = not _stalls
        if first:
            _stalls.append(error)
        listeners = list(_listeners)
    if first:
        for listener in listeners:
            with contextlib.suppress(Exception):
                listener(error)


def stalled() -> StateError | None:
    with _stall_lock:
        return _stalls[0] if _stalls else None


def on_stall(listener: Callable[[StateError], None]) -> Callable[[], None]:
    """Call ``listener`` (from the heartbeat's thread) on the first stall; returns the unsubscribe."""
    with _stall_lock:
        _stalls.clear()
        _run[0] += 1
        _listeners.append(listener)

    def unsubscribe() -> None:
        with _stall_lock, contextlib.suppress(ValueError):
            _listeners.remove(listener)

    return unsubscribe


class Heartbeat(threading.Thread):
    """Calls ``beat()`` every ``interval`` seconds until it returns False or ``stop()``. A beat that
    raises NoAnswer or LockError (no answer, or the lock's session gone) ends the run."""

    def __init__(self, name: str, interval: float, beat: Callable[[], bool]) -> None:
        super().__init__(daemon=True, name=name)
        self.interval, self._beat = interval, beat
        self._halt = threading.Event()
        with _stall_lock:
            self._run = _run[0]  # the run it belongs to

    def stop(self, wait: float) -> None:
        self._halt.set()
        if self.is_alive() and self is not threading.current_thread() and wait > 0:
            self.join(timeout=wait)

    def run(self) -> None:
        from hepinfra.errors import LockError

        while not self._halt.wait(self.interval):
            try:
                if not self._beat():
                    return
            except (NoAnswer, LockError) as exc:
                if not self._halt.is_set():
                    report_stall(exc, self._run)
                return
            except Exception as exc:  # a moment's failure: the next beat tries again
                log.debug("%s: %s", self.name, type(exc).__name__)


# --- the end of a run ---------------------------------------------------------------------------------


def release(backend: Backend, env: str, lock_id: str, failure: BaseException | None = None) -> None:
    """Release a lock (in a ``finally``): a failure never replaces the run's own result or error. When
    the run ends because its backend stopped answering (``failure``, or a heartbeat's stall), its
    one-line error says whether the lock was released, or the exact command that clears it."""
    ending = failure if isinstance(failure, NoAnswer) else stalled()
    clear = f"'hepinfra state unlock {lock_id} -e {env}'"
    try:
        backend.unlock(env, lock_id)
    except NoAnswer as exc:
        note = f"could not release the lock of environment '{env}' (no answer); clear it with {clear}"
        if isinstance(ending, NoAnswer) and ending is not exc:
            ending.add(note)
        else:
            log.warning("%s", note)
        return
    except HepinfraError as exc:
        _not_released(backend, env, lock_id, exc, clear)
        return
    if isinstance(ending, NoAnswer):
        how = getattr(backend, "release_note", "")
        ending.add(f"the lock of environment '{env}' was released{f' ({how})' if how else ''}")


def _not_released(backend: Backend, env: str, lock_id: str, exc: HepinfraError, clear: str) -> None:
    try:
        holder, known = backend.lock_holder(env), True
    except HepinfraError:
        holder, known = None, False
    if known and (holder is None or holder.id != lock_id):  # taken over or cleared meanwhile: nothing of ours is left
        log.warning(
            "the lock of environment '%s' was no longer this run's when it ended (taken over or cleared by "
            "another run); nothing to release",
            env,
        )
        return
    log.warning(
        "could not release the lock of environment '%s' (%s); if it is still there, clear it with %s",
        env,
        str(exc).removesuffix("."),
        clear,
    )
