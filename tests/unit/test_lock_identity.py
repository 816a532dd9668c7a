"""A lock holder is judged dead only in this process space: same host, boot id and PID namespace,
and its pid not running with the recorded start time (containers sharing a hostname never take
each other for dead)."""

from __future__ import annotations

import os
import subprocess

import pytest

from hepinfra.state.backend import (
    LockInfo,
    boot_id,
    holder_process_alive,
    holder_process_gone,
    identified,
    pid_namespace,
    process_start_time,
)


def gone_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_lock_records_boot_id_pid_namespace_pid_and_start_time() -> None:
    mine = identified(LockInfo(), "pid")
    assert mine.pid == os.getpid() and mine.start_time == process_start_time(os.getpid())
    assert mine.boot_id == boot_id() and mine.boot_id and len(mine.boot_id) == 36
    assert mine.pid_ns == pid_namespace() and mine.pid_ns and mine.pid_ns.startswith("pid:[")
    assert LockInfo.from_dict(mine.as_dict()) == mine
    old = {k: v for k, v in mine.as_dict().items() if k not in ("boot_id", "pid_ns")}
    assert LockInfo.from_dict(old).boot_id is None  # an older lock: never read as ours


def test_a_live_holder_is_alive_and_never_gone() -> None:
    mine = identified(LockInfo(), "pid")
    assert holder_process_alive(mine) and not holder_process_gone(mine, strict=True)


def test_a_dead_holder_of_this_process_space_is_gone() -> None:
    dead = identified(LockInfo(pid=gone_pid(), start_time=1), "pid")
    assert holder_process_gone(dead, strict=True) and not holder_process_alive(dead)


def test_a_reused_pid_is_gone() -> None:
    reused = identified(LockInfo(pid=os.getpid(), start_time=(process_start_time(os.getpid()) or 0) + 1), "pid")
    assert holder_process_gone(reused, strict=True)


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"pid_ns": "pid:[1]"},  # a container sharing our hostname
        {"boot_id": "00000000-0000-0000-0000-000000000000"},  # this host, before a reboot
        {"host": "another-runner"},
    ],
)
def test_a_holder_elsewhere_is_never_judged(elsewhere: dict[str, object]) -> None:
    info = identified(LockInfo(pid=gone_pid(), start_time=1), "pid")
    other = LockInfo.from_dict({**info.as_dict(), **elsewhere})
    assert not holder_process_gone(other) and not holder_process_gone(other, strict=True)
    assert not holder_process_alive(other)


def test_a_remote_lock_missing_its_identity_is_not_judged() -> None:
    """strict (s3, postgres): without boot id, PID namespace and start time, a dead pid proves nothing."""
    bare = LockInfo(pid=gone_pid(), start_time=1)
    assert holder_process_gone(bare) and not holder_process_gone(bare, strict=True)
    no_start = identified(LockInfo(pid=gone_pid()), "pid")  # its start time could not be read
    assert no_start.start_time is None and not holder_process_gone(no_start, strict=True)
