"""The narrow protocols a state backend implements, and the lock holder's description.

Owns: ``StateReader``, ``StateWriter``, ``Locker`` and ``Backend`` (all three), ``LockInfo``,
the holder's identity (``identified``: host, boot id, PID namespace, pid and its start time) and
the pid test of a holder's liveness (``holder_process_gone``) any backend may use. Remote
backends (S3, HTTP, ...) implement the same three and pass ``hepinfra.state.conformance``.
Must not: touch storage, or judge a holder on another host gone.
"""

from __future__ import annotations

import functools
import getpass
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from hepinfra.errors import LockError
from hepinfra.state.model import State


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock. Read back from storage with ``from_dict`` (tolerates unknown fields).

    ``liveness`` says how a reader on the holder's host tells that the holder is gone:
    ``"pid"`` (no process ``pid``, a zombie, or one started at another ``start_time``) or
    ``"flock"`` (the local backend's holder keeps a kernel lock on the lock file for the lock's
    life; the kernel drops it when the holder dies). Lock files from before these two fields
    read as ``"pid"`` with no start time. A holder on another host is never judged gone.
    """

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    user: str = field(default_factory=lambda: _user())
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    command: str = field(default_factory=lambda: " ".join(["hepinfra", *sys.argv[1:3]]))
    start_time: int | None = None  # the holder's start, clock ticks after boot (/proc/PID/stat field 22)
    liveness: str = "pid"
    lease_s: int | None = None  # s3: the holder refreshes its lock within this many seconds (its lock_ttl)
    boot_id: str | None = None  # the holder's kernel boot (/proc/sys/kernel/random/boot_id)
    pid_ns: str | None = None  # the holder's PID namespace (readlink /proc/self/ns/pid): containers differ

    def describe(self) -> str:
        """The holder in one line; every field comes from a file anyone could write: escaped and capped."""
        from hepinfra.safety.paths import shown

        user, host, command = shown(str(self.user), 40), shown(str(self.host), 80), shown(str(self.command), 80)
        return (
            f"{user}@{host} (pid {self.pid}, '{command}', since {shown(str(self.created), 40)}), "
            f"lock id {shown(str(self.id), 40)}"
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: object) -> LockInfo:
        """The LockInfo stored as ``raw``; unknown fields are ignored, optional ones may be missing.

        ValueError when a required field (those of the first version) is missing or a field has
        the wrong type.
        """
        if not isinstance(raw, dict):
            raise ValueError("a lock must be a JSON object")
        missing = [name for name in _REQUIRED if name not in raw]
        if missing:
            raise ValueError(f"lock field '{missing[0]}' is missing")
        values = {name: raw[name] for name in _TYPES if name in raw}
        for name, value in values.items():
            if not isinstance(value, _TYPES[name]) or isinstance(value, bool):
                raise ValueError(f"lock field '{name}' has the wrong type")
        return cls(**values)


_REQUIRED = ("id", "pid", "host", "user", "created", "command")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "pid": int,
    "host": str,
    "user": str,
    "created": str,
    "command": str,
    "start_time": (int, type(None)),
    "liveness": str,
    "lease_s": (int, type(None)),
    "boot_id": (str, type(None)),
    "pid_ns": (str, type(None)),
}


UNREADABLE = LockInfo(id="unreadable", pid=0, host="?", user="?", created="?", command="?")


def holder_from(data: bytes) -> LockInfo:
    """A LockInfo read back from storage; one that cannot be read is named as such."""
    import json

    try:
        return LockInfo.from_dict(json.loads(data))
    except (ValueError, RecursionError, TypeError):
        return UNREADABLE


def wait_for_lock(
    take: Callable[[], LockInfo | None],
    timeout: float,
    refused: Callable[[LockInfo], LockError],
    *,
    first: float,
    cap: float,
) -> None:
    """The one lock wait every backend uses: ``take()`` until it returns None (taken), sleeping
    ``first`` seconds, doubling up to ``cap``; at the timeout, raise ``refused(holder)``."""
    deadline = time.monotonic() + max(0.0, timeout)
    delay = first
    while (holder := take()) is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise refused(holder)
        time.sleep(min(delay, left))
        delay = min(delay * 2, cap)


def identified(info: LockInfo, liveness: str) -> LockInfo:
    """``info`` as a holder records itself when it takes a lock: its process's start time, boot id
    and PID namespace, so that a reader can tell it from a process of another boot or container."""
    return replace(
        info,
        liveness=liveness,
        start_time=info.start_time if info.start_time is not None else process_start_time(info.pid),
        boot_id=info.boot_id if info.boot_id is not None else boot_id(),
        pid_ns=info.pid_ns if info.pid_ns is not None else pid_namespace(),
    )


def same_process_space(info: LockInfo, *, strict: bool = False) -> bool:
    """True when the holder's pid means a process of this host that this process can see: same
    hostname, and (when the lock records them) same boot id and PID namespace. ``strict``: the lock
    must record boot id, PID namespace and start time (remote locks: containers share hostnames)."""
    if info.host != socket.gethostname() or info.pid <= 0:
        return False
    for recorded, ours in ((info.boot_id, boot_id()), (info.pid_ns, pid_namespace())):
        if recorded is None and strict:
            return False
        if recorded is not None and recorded != ours:
            return False
    return not (strict and info.start_time is None)


def holder_process_alive(info: LockInfo) -> bool:
    """True only when the holder provably runs: in this process space (host, boot, PID namespace),
    its pid exists, is no zombie, and started when the lock says (a holder elsewhere is never judged)."""
    if not same_process_space(info) or info.start_time is None:
        return False
    return not holder_process_gone(info) and process_start_time(info.pid) == info.start_time


def holder_process_gone(info: LockInfo, *, strict: bool = False) -> bool:
    """The ``"pid"`` liveness test: True only when the holder ran in this process space (see
    ``same_process_space``) and its process no longer exists, is a zombie, or is another process
    that reused the pid."""
    if not same_process_space(info, strict=strict):
        return False
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, another user's
    if _is_zombie(info.pid):
        return True
    return info.start_time is not None and process_start_time(info.pid) not in (None, info.start_time)


@functools.cache
def boot_id() -> str | None:
    """This kernel's boot id (new at every boot; the host's, inside a container)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


@functools.cache
def pid_namespace() -> str | None:
    """This process's PID namespace, e.g. ``pid:[4026531836]`` (another in each container)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None if unknown or gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22; fields[0] is field 3 (the state)
    except (OSError, IndexError, ValueError):
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@runtime_checkable
class StateReader(Protocol):
    def read(self, env: str) -> State | None: ...

    def environments(self) -> list[str]: ...


@runtime_checkable
class StateWriter(Protocol):
    def write(self, env: str, state: State) -> State:
        """Store ``state``; bump the serial only when the content changed. Returns what is stored."""
        ...


@runtime_checkable
class Locker(Protocol):
    def lock(self, env: str, info: LockInfo, timeout: float = 0.0) -> LockInfo:
        """Take the env's lock, waiting up to ``timeout`` seconds; LockError names the holder."""
        ...

    def unlock(self, env: str, lock_id: str) -> None: ...

    def lock_holder(self, env: str) -> LockInfo | None: ...


class Backend(StateReader, StateWriter, Locker, Protocol):
    """A full backend: read, write, lock; plus what ``state`` commands and messages need."""

    @property
    def where(self) -> str:
        """The place, for messages: "local (.hepinfra/state)", "s3 (s3://bucket/prefix)", ..."""
        ...

    @property
    def frees_dead_holders(self) -> bool:
        """A holder that dies releases its lock by itself (the next run takes it at once)."""
        ...

    def replace(self, env: str, state: State) -> State:
        """Store a state of any lineage (on explicit request), keeping a backup."""
        ...

    def holder_alive(self, env: str) -> bool:
        """True when the lock's holder provably still runs (``state unlock`` then needs --force)."""
        ...

    def unlock(self, env: str, lock_id: str, *, force: bool = False) -> None: ...

    def close(self) -> None: ...
