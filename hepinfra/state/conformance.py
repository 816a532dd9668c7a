"""The one test suite every state backend must pass (like terraform's statemgr TestFull).

Usage from a test module::

    @pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check, tmp_path):
        check(lambda: LocalBackend(tmp_path / "state"))

``factory()`` must return a new backend object over the *same* storage each call, so two
objects (or two processes) contend as two hepinfra runs would. A lock is held by the object that
took it, for as long as it lives (a postgres session ends with its object): checks keep it.

Mutual exclusion is proven by an external ``Observer``, never by a flag the backend keeps: each
holder appends ``enter``/``exit`` records (pid, ``time.monotonic_ns()``) to one O_APPEND file
while it holds the lock, and the parent checks that no two hold intervals overlap.
Must not: depend on a backend's internals; take more than a few seconds per check.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hepinfra.errors import LockError, StateError
from hepinfra.state.backend import Backend, LockInfo
from hepinfra.state.model import ManagedDatabase, State

Factory = Callable[[], Backend]


def _db(key: str, name: str | None = None) -> ManagedDatabase:
    return ManagedDatabase(
        key=key,
        name=name or f"{key}-env",
        id=f"ID{key.upper()}",
        engine="postgres",
        managed_since=datetime(2026, 1, 1, tzinfo=UTC),
    )


def check_read_missing_is_none(factory: Factory) -> None:
    assert factory().read("nowhere") is None


def check_round_trip(factory: Factory) -> None:
    backend = factory()
    state = State(environment="prod", databases={"shop": _db("shop")})
    stored = backend.write("prod", state)
    assert stored.serial == 1 and stored.lineage == state.lineage
    again = factory().read("prod")
    assert again == stored
    assert "prod" in factory().environments()


def check_serial_bumps_only_on_change(factory: Factory) -> None:
    backend = factory()
    first = backend.write("prod", State(environment="prod"))
    same = backend.write("prod", first)
    assert same.serial == first.serial
    changed = backend.write("prod", first.model_copy(update={"databases": {"a": _db("a")}}))
    assert changed.serial == first.serial + 1
    assert factory().read("prod") == changed


def check_refuses_another_lineage(factory: Factory) -> None:
    backend = factory()
    backend.write("prod", State(environment="prod"))
    try:
        backend.write("prod", State(environment="prod", databases={"x": _db("x")}))
    except StateError as exc:
        assert "lineage" in str(exc)
    else:
        raise AssertionError("a state of another lineage overwrote the stored one")


def check_environments_are_independent(factory: Factory) -> None:
    backend = factory()
    a = backend.write("a", State(environment="a", databases={"x": _db("x")}))
    b = backend.write("b", State(environment="b"))
    assert a.lineage != b.lineage
    assert factory().read("a") == a and factory().read("b") == b


def check_lock_excludes_and_names_holder(factory: Factory) -> None:
    one, two = factory(), factory()
    held = one.lock("prod", LockInfo(command="hepinfra apply"))
    try:
        two.lock("prod", LockInfo(), timeout=0)
    except LockError as exc:
        text = str(exc)
        assert held.id in text and str(held.pid) in text and held.user in text and "hepinfra apply" in text
    else:
        raise AssertionError("a second lock was granted while the first was held")
    holder = two.lock_holder("prod")
    assert holder is not None and holder.id == held.id
    one.unlock("prod", held.id)
    assert two.lock_holder("prod") is None
    two.unlock("prod", two.lock("prod", LockInfo()).id)


def check_lock_waits_with_timeout(factory: Factory) -> None:
    """A second run waits for the first to release (``--lock-timeout``) instead of failing."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_then_release, args=(factory, ready, 0.3))
    holder.start()
    assert ready.wait(10), "the holder never took the lock"
    started = time.monotonic()
    waiter = factory()
    got = waiter.lock("prod", LockInfo(), timeout=10)
    waited = time.monotonic() - started
    holder.join(10)
    assert 0.15 <= waited < 10, waited
    waiter.unlock("prod", got.id)


def _release_later(factory: Factory, lock_id: str, delay: float) -> None:
    time.sleep(delay)
    factory().unlock("prod", lock_id)


def _hold_then_release(factory: Factory, ready: Any, hold: float) -> None:
    backend = factory()
    held = backend.lock("prod", LockInfo())
    ready.set()
    time.sleep(hold)
    backend.unlock("prod", held.id)


def check_write_refuses_a_raced_update(factory: Factory) -> None:
    """Two runs read the same state; the second to write (ignoring the lock) is refused, not lost."""
    factory().write("prod", State(environment="prod"))
    a, b = factory(), factory()
    seen_a, seen_b = a.read("prod"), b.read("prod")
    assert seen_a is not None and seen_b is not None
    a.write("prod", seen_a.model_copy(update={"databases": {"a": _db("a")}}))
    try:
        b.write("prod", seen_b.model_copy(update={"databases": {"b": _db("b")}}))
    except StateError as exc:
        assert "changed since it was read" in str(exc)
    else:
        raise AssertionError("a write based on a stale read overwrote a newer state")
    try:  # ...and so is every later write of that run, until it reads the state again
        b.write("prod", seen_b.model_copy(update={"databases": {"b": _db("b"), "c": _db("c")}}))
    except StateError:
        pass
    else:
        raise AssertionError("after a refused write, the next write of the same run overwrote a newer state")
    final = factory().read("prod")
    assert final is not None and set(final.databases) == {"a"} and final.serial == 2
    fresh = b.read("prod")
    assert fresh is not None
    assert b.write("prod", fresh.model_copy(update={"databases": {**fresh.databases, "b": _db("b")}})).serial == 3


def check_writers_skipping_the_lock_never_lose_an_update(factory: Factory) -> None:
    """Two processes read, add a database and write, 12 times each, without the lock, reading again
    after every refusal: all 24 databases survive (each write is conditional on what was read)."""
    factory().write("free", State(environment="free"))
    ctx = multiprocessing.get_context("fork")
    errors: Any = ctx.Queue()
    workers = [ctx.Process(target=_unlocked_adder, args=(factory, f"u{i}", 12, errors)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert all(w.exitcode == 0 for w in workers), [errors.get() for _ in range(errors.qsize())]
    final = factory().read("free")
    assert final is not None and len(final.databases) == 24, sorted(final.databases) if final else None


def _unlocked_adder(factory: Factory, prefix: str, count: int, errors: Any) -> None:
    try:
        backend = factory()
        for i in range(count):
            key = f"{prefix}-{i}"
            for _ in range(200):
                state = backend.read("free")
                assert state is not None
                try:
                    backend.write("free", state.model_copy(update={"databases": {**state.databases, key: _db(key)}}))
                    break
                except StateError:
                    continue  # another write landed in between: read again
            else:
                raise AssertionError(f"{key} never landed")
    except BaseException as exc:
        errors.put(repr(exc))
        raise


def check_replace_keeps_a_newer_serial(factory: Factory) -> None:
    """``replace`` (push/migrate --force) stores another lineage, its serial kept if newer."""
    backend = factory()
    first = backend.write("prod", State(environment="prod"))
    other = State(environment="prod", serial=7, databases={"x": _db("x")})
    stored = backend.replace("prod", other)
    assert stored.lineage == other.lineage and stored.serial == 7
    older = State(environment="prod", serial=1)
    assert factory().replace("prod", older).serial == 8
    assert first.lineage != factory().read("prod").lineage  # type: ignore[union-attr]


def check_unlock_needs_the_right_id(factory: Factory) -> None:
    backend = factory()
    held = backend.lock("prod", LockInfo())
    try:
        backend.unlock("prod", "not-the-id")
    except LockError:
        pass
    else:
        raise AssertionError("unlock with a wrong id succeeded")
    backend.unlock("prod", held.id)
    try:
        backend.unlock("prod", held.id)
    except LockError:
        pass
    else:
        raise AssertionError("unlocking an unlocked state succeeded")


def check_dead_holder_on_this_host_is_broken(factory: Factory) -> None:
    """A run that died holding the lock: a backend that frees dead holders lets the next run in at
    once; any other names the holder, and ``unlock`` with its id clears it."""
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_lock_and_die, args=(factory,))
    child.start()
    child.join(10)
    _next_run_after_a_dead_holder(factory)


def _next_run_after_a_dead_holder(factory: Factory) -> None:
    left = factory().lock_holder("prod")
    backend = factory()
    if backend.frees_dead_holders:
        got = backend.lock("prod", LockInfo(), timeout=5)  # ...broken or released, not waited on
        backend.unlock("prod", got.id)
        return
    assert left is not None, "the dead holder's lock is gone, yet this backend does not free dead holders"
    try:
        backend.lock("prod", LockInfo(), timeout=0)
    except LockError as exc:
        assert left.id in str(exc) and str(left.pid) in str(exc) and f"state unlock {left.id}" in str(exc)
    else:
        raise AssertionError("a dead holder's lock was taken over without an unlock")
    factory().unlock("prod", left.id)
    got = backend.lock("prod", LockInfo(), timeout=0)
    backend.unlock("prod", got.id)


def _lock_and_die(factory: Factory) -> None:
    import os

    backend = factory()  # kept: a backend dropped may release its lock (a postgres session ends)
    backend.lock("prod", LockInfo())
    os._exit(0)


def check_two_processes_racing_never_lose_an_update(factory: Factory) -> None:
    """Two processes each add 15 databases under the lock; all 30 and 30 serial steps survive."""
    factory().write("race", State(environment="race"))
    ctx = multiprocessing.get_context("fork")
    errors: Any = ctx.Queue()
    workers = [ctx.Process(target=_racer, args=(factory, f"w{i}", 15, errors)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers), [errors.get() for _ in range(errors.qsize())]
    final = factory().read("race")
    assert final is not None and len(final.databases) == 30
    assert final.serial == 31


def _racer(factory: Factory, prefix: str, count: int, errors: Any) -> None:
    try:
        backend = factory()
        for i in range(count):
            lock = backend.lock("race", LockInfo(), timeout=30)
            try:
                state = backend.read("race")
                assert state is not None
                key = f"{prefix}-{i}"
                backend.write("race", state.model_copy(update={"databases": {**state.databases, key: _db(key)}}))
            finally:
                backend.unlock("race", lock.id)
    except BaseException as exc:
        errors.put(repr(exc))
        raise


# --- an external observer of who holds a lock, and when --------------------------------------------


class Observer:
    """Holders append ``EVENT PID MONOTONIC_NS [DETAIL]`` lines to one O_APPEND file.

    ``record("enter")`` right after ``lock()`` returns and ``record("exit")`` right before
    ``unlock()``; under mutual exclusion the file then alternates enter/exit of one pid at a time
    and the intervals are disjoint. ``error`` records fail the verification.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def record(self, event: str, detail: str = "") -> None:
        line = f"{event} {os.getpid()} {time.monotonic_ns()} {' '.join(detail.split())}".rstrip() + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def events(self) -> list[tuple[str, int, int, str]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            event, pid, ns, *detail = line.split(" ", 3)
            out.append((event, int(pid), int(ns), detail[0] if detail else ""))
        return out

    def holds(self) -> list[tuple[int, int, int]]:
        """``(enter_ns, exit_ns, pid)`` of every hold; AssertionError on an overlap or an error record."""
        holds: list[tuple[int, int, int]] = []
        holder: tuple[int, int] | None = None  # (pid, enter_ns) of who holds now, in file order
        for event, pid, ns, _ in self.events():
            if event == "enter":
                assert holder is None, f"pid {pid} entered while pid {holder[0]} held the lock"
                holder = (pid, ns)
            elif event == "exit":
                assert holder is not None and holder[0] == pid, f"pid {pid} left a lock it did not hold"
                holds.append((holder[1], ns, pid))
                holder = None
        holds.sort()
        for (_, end, pid), (start, _, other) in itertools.pairwise(holds):
            assert end < start, f"pid {other} held the lock before pid {pid} released it"
        errors = [f"pid {pid}: {detail}" for event, pid, _, detail in self.events() if event == "error"]
        assert not errors, f"holders failed: {errors[:3]}"
        assert holder is None, f"pid {holder[0]} never left the lock"
        return holds

    def count(self, event: str) -> int:
        return sum(1 for e, *_ in self.events() if e == event)


def _hold(factory: Factory, env: str, observer: Observer, rounds: int, hold: float, start: Any) -> None:
    """Take ``env``'s lock ``rounds`` times, recording each hold; any failure is an ``error`` record."""
    try:
        backend = factory()
        if start is not None:
            start.wait(10)
        for _ in range(rounds):
            lock = backend.lock(env, LockInfo(command="hepinfra stress"), timeout=20)
            observer.record("enter")
            time.sleep(hold)
            observer.record("exit")
            backend.unlock(env, lock.id)
    except BaseException as exc:
        observer.record("error", repr(exc))
        raise


def race(factory: Factory, env: str, observer: Observer, workers: int, rounds: int, hold: float) -> None:
    """``workers`` processes released at once by a barrier, each holding the lock ``rounds`` times."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(workers)
    procs = [ctx.Process(target=_hold, args=(factory, env, observer, rounds, hold, start)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
    holds = observer.holds()
    assert len(holds) == workers * rounds, f"{len(holds)} holds recorded, {workers * rounds} expected"
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]


def _hold_forever(factory: Factory, env: str, ready: Any) -> None:
    backend = factory()  # kept until the kill
    backend.lock(env, LockInfo(command="hepinfra apply"))
    ready.set()
    time.sleep(60)


def kill_a_holder(factory: Factory, env: str, *, reap: bool = True) -> Any:
    """A process takes ``env``'s lock and is SIGKILLed while holding it; returns that process."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_forever, args=(factory, env, ready))
    holder.start()
    assert ready.wait(10), "the holder never took the lock"
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    if reap:
        holder.join(10)
    return holder


def check_lock_excludes_across_processes(factory: Factory) -> None:
    """Six processes take the lock eight times each; the observer sees 48 disjoint holds."""
    with tempfile.TemporaryDirectory() as tmp:
        race(factory, "prod", Observer(Path(tmp) / "observer"), workers=6, rounds=8, hold=0.002)
    assert factory().lock_holder("prod") is None


def check_killed_holder_is_released(factory: Factory) -> None:
    """A holder SIGKILLed while holding (not yet reaped: a zombie): freed at once by a backend that
    frees dead holders, else named by the next run and cleared by ``unlock``."""
    holder = kill_a_holder(factory, "prod", reap=False)
    try:
        _next_run_after_a_dead_holder(factory)
    finally:
        holder.join(10)


def check_racers_breaking_a_stale_lock_exclude_each_other(factory: Factory) -> None:
    """Six processes find the same dead holder's lock at once: one breaks it, all hold it in turn.
    (A backend that never breaks a lock: the six wait while one ``unlock`` clears it.)"""
    with tempfile.TemporaryDirectory() as tmp:
        for trial in range(4):
            kill_a_holder(factory, "prod")
            left = factory().lock_holder("prod")
            if not factory().frees_dead_holders:
                assert left is not None
                ctx = multiprocessing.get_context("fork")
                clearer = ctx.Process(target=_release_later, args=(factory, left.id, 0.2))
                clearer.start()
            race(factory, "prod", Observer(Path(tmp) / f"observer-{trial}"), workers=6, rounds=1, hold=0.005)
            assert factory().lock_holder("prod") is None
            if not factory().frees_dead_holders:
                clearer.join(10)


CHECKS: list[Callable[[Factory], None]] = [
    check_read_missing_is_none,
    check_round_trip,
    check_serial_bumps_only_on_change,
    check_refuses_another_lineage,
    check_environments_are_independent,
    check_lock_excludes_and_names_holder,
    check_lock_waits_with_timeout,
    check_write_refuses_a_raced_update,
    check_writers_skipping_the_lock_never_lose_an_update,
    check_replace_keeps_a_newer_serial,
    check_unlock_needs_the_right_id,
    check_dead_holder_on_this_host_is_broken,
    check_two_processes_racing_never_lose_an_update,
    check_lock_excludes_across_processes,
    check_killed_holder_is_released,
    check_racers_breaking_a_stale_lock_exclude_each_other,
]

# Every check applies to every backend: those about a dead holder ask the backend whether it
# frees dead holders (local: the holder's flock on this host; postgres: its session) or leaves
# the lock named until ``state unlock`` (s3).
