"""hepinfra.locking: flock_path and the output locks (sidecar files, one global order)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from hepinfra.errors import LockError
from hepinfra.fsutil import atomic_write
from hepinfra.locking import Flock, acquire, flock_path, output_lock_file, output_locks, try_flock

CTX = multiprocessing.get_context("fork")


def _is_free(path: Path) -> bool:
    try:
        with flock_path(path, timeout=0):
            return True
    except LockError:
        return False


def test_creates_the_file_0600_in_0700_directories_and_keeps_it(tmp_path: Path) -> None:
    lock_file = tmp_path / "a" / "b" / "x.lock"
    with flock_path(lock_file) as held:
        assert held.held and not _is_free(lock_file)
    assert not held.held and _is_free(lock_file)
    assert lock_file.exists()  # never deleted
    assert oct(lock_file.stat().st_mode & 0o777) == "0o600"
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert oct(directory.stat().st_mode & 0o777) == "0o700"


def test_a_timeout_names_the_file_and_zero_is_one_attempt(tmp_path: Path) -> None:
    lock_file = tmp_path / "x.lock"
    with flock_path(lock_file):
        started = time.monotonic()
        with pytest.raises(LockError, match=r"timed out after 0\.2s waiting for the lock .*x\.lock"):
            acquire(lock_file, timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 2
        with pytest.raises(LockError):
            acquire(lock_file, timeout=0)


def test_a_waiter_gets_the_lock_when_it_is_released(tmp_path: Path) -> None:
    lock_file = tmp_path / "x.lock"
    held = acquire(lock_file)
    threading.Timer(0.3, held.release).start()
    started = time.monotonic()
    with flock_path(lock_file, timeout=10):
        assert 0.2 <= time.monotonic() - started < 10
    with flock_path(lock_file):  # blocking form
        pass


def test_shared_locks_coexist_and_exclude_an_exclusive_one(tmp_path: Path) -> None:
    lock_file = tmp_path / "x.lock"
    with flock_path(lock_file, shared=True), flock_path(lock_file, shared=True, timeout=0), pytest.raises(LockError):
        acquire(lock_file, timeout=0)
    with flock_path(lock_file), pytest.raises(LockError):
        acquire(lock_file, shared=True, timeout=0)


def _hold_and_report(lock_file: Path, ready: object) -> None:
    held = acquire(lock_file)
    ready.set()  # type: ignore[attr-defined]
    time.sleep(60)
    held.release()


def test_the_kernel_releases_the_lock_of_a_killed_process(tmp_path: Path) -> None:
    lock_file = tmp_path / "x.lock"
    ready = CTX.Event()
    holder = CTX.Process(target=_hold_and_report, args=(lock_file, ready))
    holder.start()
    assert ready.wait(10)
    assert not _is_free(lock_file)
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    with flock_path(lock_file, timeout=5):  # not yet reaped: a zombie holds no lock
        pass
    holder.join(10)


def test_a_forked_child_releasing_its_copy_does_not_release_the_parents_lock(tmp_path: Path) -> None:
    lock_file = tmp_path / "x.lock"
    held = acquire(lock_file)
    pid = os.fork()
    if pid == 0:
        held.release()
        os._exit(0)
    os.waitpid(pid, 0)
    assert not _is_free(lock_file)
    held.release()
    assert _is_free(lock_file)


def test_a_lock_file_replaced_while_waiting_is_opened_again(tmp_path: Path) -> None:
    lock_file = tmp_path / "x.lock"
    first = acquire(lock_file)
    got: list[Flock] = []
    waiter = threading.Thread(target=lambda: got.append(acquire(lock_file, timeout=10)))
    waiter.start()
    time.sleep(0.1)
    lock_file.unlink()  # someone removes the file and another process holds the new one
    second = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    assert try_flock(second)
    first.release()  # the waiter may now lock the old inode: it must notice and move on
    time.sleep(0.2)
    assert not got
    os.close(second)
    waiter.join(10)
    assert got and got[0].fd is not None and os.fstat(got[0].fd).st_ino == lock_file.stat().st_ino
    got[0].release()


def test_a_symlink_at_the_lock_file_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "x.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        acquire(tmp_path / "x.lock", timeout=0)
    assert not (tmp_path / "elsewhere").exists()


def test_an_output_maps_to_a_sidecar_named_by_its_real_path(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    real = os.path.realpath(tmp_path / "real" / ".env")
    expected = tmp_path / "locks" / (hashlib.sha256(real.encode()).hexdigest()[:32] + ".lock")
    assert output_lock_file(tmp_path / "locks", tmp_path / "real" / ".env") == expected
    assert output_lock_file(tmp_path / "locks", tmp_path / "link" / ".env") == expected


def test_output_locks_take_each_file_once_in_real_path_order(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    b, a = tmp_path / "b.env", tmp_path / "a.env"
    with output_locks(locks, [b, a, b]) as files:
        assert files == [output_lock_file(locks, a), output_lock_file(locks, b)]
        assert not _is_free(files[0]) and not _is_free(files[1])
    assert _is_free(files[0]) and _is_free(files[1])
    assert sorted(p.name for p in locks.iterdir()) == sorted(p.name for p in files)  # kept


def test_an_output_lock_timeout_names_the_output_and_releases_the_others(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    a, b = tmp_path / "a.env", tmp_path / "b.env"
    with flock_path(output_lock_file(locks, b)):
        with (
            pytest.raises(LockError, match=r"waiting for the lock of output .*b\.env"),
            output_locks(locks, [a, b], timeout=0.1),
        ):
            raise AssertionError("granted while held")
        assert _is_free(output_lock_file(locks, a))


def _bump(locks: Path, target: Path, order: list[Path], prefix: str, count: int) -> None:
    """Read-modify-write of a dotenv-like file (replaced by rename each time) under the output locks."""
    for i in range(count):
        with output_locks(locks, order, timeout=20):
            lines = target.read_text().splitlines() if target.exists() else []
            atomic_write(target, ("\n".join([*lines, f"{prefix}_{i}=x"]) + "\n").encode())


def test_processes_writing_one_file_under_output_locks_lose_no_key(tmp_path: Path) -> None:
    """Four processes (two naming the paths in the other order: no deadlock) add 20 keys each."""
    locks, target, other = tmp_path / "locks", tmp_path / "out" / ".env", tmp_path / "out" / "other.env"
    orders = [[target, other], [other, target]]
    workers = [CTX.Process(target=_bump, args=(locks, target, orders[i % 2], f"W{i}", 20)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    keys = [line.split("=")[0] for line in target.read_text().splitlines()]
    assert sorted(keys) == sorted(f"W{w}_{i}" for w in range(4) for i in range(20))
