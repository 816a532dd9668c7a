"""The local state backend: the conformance suite, plus what is local-only (files, modes, backup)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hepinfra.errors import LockError, StateError
from hepinfra.fsutil import temp_prefix
from hepinfra.state import codec, conformance
from hepinfra.state.backend import LockInfo, process_start_time
from hepinfra.state.local import LocalBackend
from hepinfra.state.model import State


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
def test_local_backend_conformance(check: Callable[[conformance.Factory], None], tmp_path: Path) -> None:
    check(lambda: LocalBackend(tmp_path / "state"))


def test_files_are_0600_with_a_backup_and_no_temp_left(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s")
    first = backend.write("prod", State(environment="prod"))
    assert backend.write("prod", first.model_copy(update={"serial": 7})).serial == 1  # same content: kept
    second = backend.write("prod", first.model_copy(update={"databases": {"a": conformance._db("a")}}))
    assert second.serial == 2
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["prod.json", "prod.json.backup", "prod.lock.guard"]  # writes are checked under the guard
    for name in files:
        assert oct(os.stat(tmp_path / "s" / name).st_mode & 0o777) == "0o600"
    assert codec.decode((tmp_path / "s" / "prod.json.backup").read_bytes(), "b").serial == 1


@pytest.mark.parametrize(
    "content,message",
    [
        (b"{nope", "not valid JSON"),
        (b"[]", "must hold a JSON object"),
        (b'{"format_version": 9}', "format_version 9 is not supported"),
        (b'{"format_version": 1, "environment": "prod", "serial": "x"}', "serial: Input should be a valid integer"),
    ],
)
def test_corrupt_state_is_one_line_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "prod.json").write_bytes(content)
    with pytest.raises(StateError) as info:
        LocalBackend(tmp_path).read("prod")
    assert str(info.value).startswith(str(tmp_path / "prod.json")) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_state_of_another_environment_is_refused(tmp_path: Path) -> None:
    (tmp_path / "prod.json").write_bytes(codec.encode(State(environment="staging")))
    with pytest.raises(StateError, match="holds the state of environment 'staging'"):
        LocalBackend(tmp_path).read("prod")


# --- the lock: local specifics (the kernel flock, older lock files, hosts) ---------------------------


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _old_lock(directory: Path, **fields: object) -> None:
    """A lock file as the version before the flock wrote it (no start_time, no liveness)."""
    info = {"id": "0123456789abcdef", "pid": os.getpid(), "host": socket.gethostname(), "user": "ci"}
    info.update(created="2026-01-01T00:00:00+00:00", command="hepinfra apply", **fields)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prod.lock").write_text(json.dumps(info))


def test_the_lock_file_names_its_holder_and_its_liveness(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    held = backend.lock("prod", LockInfo(command="hepinfra apply"))
    raw = json.loads((tmp_path / "prod.lock").read_text())
    assert raw["id"] == held.id and raw["pid"] == os.getpid() and raw["liveness"] == "flock"
    assert raw["start_time"] == process_start_time(os.getpid()) is not None
    for name in ("prod.lock", "prod.lock.guard"):
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == "0o600"
    backend.unlock("prod", held.id)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prod.lock.guard"]  # the guard stays


def test_lock_files_of_older_versions_and_unknown_fields_are_read(tmp_path: Path) -> None:
    _old_lock(tmp_path, future_field=[1, 2])
    holder = LocalBackend(tmp_path).lock_holder("prod")
    assert holder is not None and holder.id == "0123456789abcdef" and holder.liveness == "pid"
    assert holder.start_time is None
    (tmp_path / "prod.lock").write_text('{"id": "x", "pid": "12"}')
    unreadable = LocalBackend(tmp_path).lock_holder("prod")
    assert unreadable is not None and unreadable.id == "unreadable"


def test_an_older_versions_lock_is_broken_only_when_its_pid_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _old_lock(tmp_path)  # alive: this process, and it keeps no flock
    with pytest.raises(LockError, match="locked by ci@"):
        LocalBackend(tmp_path).lock("prod", LockInfo(), timeout=0)
    dead = _dead_pid()
    _old_lock(tmp_path, pid=dead)
    with caplog.at_level(logging.WARNING, logger="hepinfra.state"):
        got = LocalBackend(tmp_path).lock("prod", LockInfo(), timeout=0)
    assert "cleared the lock of environment 'prod' left by a process that is gone: ci@" in caplog.text
    assert f"pid {dead}" in caplog.text
    LocalBackend(tmp_path).unlock("prod", got.id)


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path: Path) -> None:
    start = process_start_time(os.getpid())
    assert start is not None
    _old_lock(tmp_path, start_time=start + 1)  # "this pid", but a process that started at another time
    got = LocalBackend(tmp_path).lock("prod", LockInfo(), timeout=0)
    LocalBackend(tmp_path).unlock("prod", got.id)


def test_a_lock_of_another_host_is_never_broken(tmp_path: Path) -> None:
    for liveness in ("pid", "flock"):
        _old_lock(tmp_path, host="elsewhere.example", pid=_dead_pid(), liveness=liveness)
        with pytest.raises(LockError, match=r"locked by ci@elsewhere\.example"):
            LocalBackend(tmp_path).lock("prod", LockInfo(), timeout=0.05)


def test_a_flock_holder_is_alive_whatever_its_pid_says(tmp_path: Path) -> None:
    holder = LocalBackend(tmp_path)
    held = holder.lock("prod", LockInfo(pid=_dead_pid()))  # the kernel lock decides, not the pid
    with pytest.raises(LockError, match=held.id):
        LocalBackend(tmp_path).lock("prod", LockInfo(), timeout=0.05)
    holder.unlock("prod", held.id)


def test_a_holder_dropped_without_unlock_leaves_a_lock_that_is_broken(tmp_path: Path) -> None:
    LocalBackend(tmp_path).lock("prod", LockInfo())  # the object (and its fd) is gone at once
    got = LocalBackend(tmp_path).lock("prod", LockInfo(), timeout=0)
    LocalBackend(tmp_path).unlock("prod", got.id)


def _lock_fork_and_die(directory: Path, report: Path) -> None:
    backend = LocalBackend(directory)
    backend.lock("prod", LockInfo())
    pid = os.fork()
    if pid == 0:  # inherits the fd holding the flock, and lives on
        time.sleep(60)
        os._exit(0)
    report.write_text(str(pid))
    os._exit(0)


def test_a_child_that_inherited_the_fd_keeps_the_lock_until_it_ends(tmp_path: Path) -> None:
    child = os.fork()
    if child == 0:
        try:
            _lock_fork_and_die(tmp_path, tmp_path / "pid")
        finally:
            os._exit(1)
    os.waitpid(child, 0)  # (not multiprocessing: the grandchild would hold its sentinel pipe open)
    pid = int((tmp_path / "pid").read_text())
    try:
        with pytest.raises(LockError):  # the holder is gone, but a child still has its lock open
            LocalBackend(tmp_path).lock("prod", LockInfo(), timeout=0.05)
    finally:
        os.kill(pid, signal.SIGKILL)
    got = LocalBackend(tmp_path).lock("prod", LockInfo(), timeout=5)
    LocalBackend(tmp_path).unlock("prod", got.id)


def test_unlock_by_another_object_and_then_by_the_holder(tmp_path: Path) -> None:
    holder = LocalBackend(tmp_path)
    held = holder.lock("prod", LockInfo())
    LocalBackend(tmp_path).unlock("prod", held.id)  # `hepinfra state unlock ID -e prod`
    again = LocalBackend(tmp_path).lock("prod", LockInfo(), timeout=0)
    with pytest.raises(LockError, match="does not match"):
        holder.unlock("prod", held.id)
    assert not holder._held  # it let go of its fd on the old lock all the same
    LocalBackend(tmp_path).unlock("prod", again.id)
    with pytest.raises(LockError, match="is not locked"):
        LocalBackend(tmp_path).unlock("prod", again.id)


def test_a_killed_takers_temp_file_is_removed_by_the_next(tmp_path: Path) -> None:
    LocalBackend(tmp_path).write("prod", State(environment="prod"))
    (tmp_path / f"{temp_prefix(tmp_path / 'prod.lock')}abc").write_text("{}")
    got = LocalBackend(tmp_path).lock("prod", LockInfo(), timeout=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hepinfra-tmp-")]
    LocalBackend(tmp_path).unlock("prod", got.id)
