"""The narrow protocols a state backend implements, and the lock holder's description.

Owns: ``StateReader``, ``StateWriter``, ``Locker`` and ``Backend`` (all three), and
``LockInfo``. Remote backends (S3, HTTP, ...) implement the same three and pass
``hepinfra.state.conformance``.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from hepinfra.state.model import State


@dataclass(frozen=True)
class LockInfo:
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    user: str = field(default_factory=lambda: _user())
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    command: str = field(default_factory=lambda: " ".join(["hepinfra", *sys.argv[1:3]]))

    def describe(self) -> str:
        return f"{self.user}@{self.host} (pid {self.pid}, '{self.command}', since {self.created}), lock id {self.id}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


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
    """A full backend: read, write, lock."""
