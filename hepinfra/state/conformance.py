"""The one test suite every state backend must pass (like terraform's statemgr TestFull).

Usage from a test module::

    @pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check, tmp_path):
        check(lambda: LocalBackend(tmp_path / "state"))

``factory()`` must return a new backend object over the *same* storage each call, so two
objects (or two processes) contend as two hepinfra runs would.
Must not: depend on a backend's internals.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from datetime import UTC, datetime
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
    one = factory()
    held = one.lock("prod", LockInfo())
    ctx = multiprocessing.get_context("fork")
    releaser = ctx.Process(target=_release_later, args=(factory, held.id, 0.3))
    releaser.start()
    started = time.monotonic()
    got = factory().lock("prod", LockInfo(), timeout=10)
    waited = time.monotonic() - started
    releaser.join(10)
    assert 0.2 <= waited < 10
    factory().unlock("prod", got.id)


def _release_later(factory: Factory, lock_id: str, delay: float) -> None:
    time.sleep(delay)
    factory().unlock("prod", lock_id)


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
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_lock_and_die, args=(factory,))
    child.start()
    child.join(10)
    assert factory().lock_holder("prod") is not None  # the dead process left its lock
    got = factory().lock("prod", LockInfo(), timeout=0)  # ...which is broken, not waited on
    factory().unlock("prod", got.id)


def _lock_and_die(factory: Factory) -> None:
    import os

    factory().lock("prod", LockInfo())
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


CHECKS: list[Callable[[Factory], None]] = [
    check_read_missing_is_none,
    check_round_trip,
    check_serial_bumps_only_on_change,
    check_refuses_another_lineage,
    check_environments_are_independent,
    check_lock_excludes_and_names_holder,
    check_lock_waits_with_timeout,
    check_unlock_needs_the_right_id,
    check_dead_holder_on_this_host_is_broken,
    check_two_processes_racing_never_lose_an_update,
]
