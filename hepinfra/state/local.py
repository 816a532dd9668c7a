"""The local state backend: ``.hepinfra/state/<env>.json``, atomic, 0600, with backup and lock.

Owns: the files under one directory. The serial is bumped only when content changed; the
previous version is kept as ``<env>.json.backup``. The lock is ``<env>.lock`` created with
O_EXCL and holding its holder's LockInfo; a lock whose holder process is gone on this host
is broken automatically (the stuck-lock pain), anything else waits up to the timeout and
then fails naming the holder.
Must not: know what is inside a state beyond lineage and serial.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from hepinfra.errors import LockError, StateError
from hepinfra.fsutil import atomic_write, fsync_dir, remove_stale_temps
from hepinfra.state import codec
from hepinfra.state.backend import LockInfo
from hepinfra.state.model import State

POLL = 0.05
log = logging.getLogger("hepinfra.state")


class LocalBackend:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        # What this object last wrote per environment, and whether it already kept a backup. Valid
        # while it holds the lock (apply writes many times per run); read() drops it.
        self._written: dict[str, State] = {}
        self._backed_up: set[str] = set()

    def _file(self, env: str, suffix: str = ".json") -> Path:
        return self.directory / f"{env}{suffix}"

    def environments(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def read(self, env: str) -> State | None:
        self._written.pop(env, None)
        path = self._file(env)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"{path}: cannot read state: {exc.strerror}") from None
        state = codec.decode(data, str(path))
        if state.environment != env:
            raise StateError(f"{path}: holds the state of environment '{state.environment}', not '{env}'")
        return state

    def write(self, env: str, state: State) -> State:
        current = self._written.get(env) or self.read(env)
        if current is not None:
            if current.lineage != state.lineage:
                raise StateError(
                    f"{self._file(env)}: lineage {current.lineage} differs from the state being written "
                    f"({state.lineage}); refusing to overwrite another state"
                )
            if current.same_content(state):
                return current
            state = state.model_copy(update={"serial": max(current.serial, state.serial) + 1})
            if env not in self._backed_up:  # the version before this run's first change
                atomic_write(self._file(env, ".json.backup"), self._file(env).read_bytes())
                self._backed_up.add(env)
        else:
            state = state.model_copy(update={"serial": max(state.serial, 1)})
        atomic_write(self._file(env), codec.encode(state))
        self._written[env] = state
        return state

    def replace(self, env: str, state: State) -> State:
        """Overwrite with a state of another lineage (``state push --force``), keeping a backup."""
        if self._file(env).exists():
            atomic_write(self._file(env, ".json.backup"), self._file(env).read_bytes())
        current = self.read(env)
        state = state.model_copy(update={"serial": max(state.serial, current.serial if current else 0) + 1})
        atomic_write(self._file(env), codec.encode(state))
        self._written[env] = state
        self._backed_up.add(env)
        return state

    # --- locking -----------------------------------------------------------------------------------

    def lock_holder(self, env: str) -> LockInfo | None:
        try:
            raw = json.loads(self._file(env, ".lock").read_text())
            return LockInfo(**raw)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return LockInfo(id="unreadable", pid=0, host="?", user="?", created="?", command="?")

    def lock(self, env: str, info: LockInfo, timeout: float = 0.0) -> LockInfo:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._file(env, ".lock")
        deadline = time.monotonic() + max(0.0, timeout)
        payload = json.dumps(info.as_dict()).encode()
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                holder = self.lock_holder(env)
                if holder is not None and _is_dead(holder):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    log.warning(
                        "cleared the lock of environment '%s' left by a process that is gone: %s",
                        env,
                        holder.describe(),
                    )
                    continue
                if time.monotonic() >= deadline:
                    who = holder.describe() if holder else "another process"
                    raise LockError(
                        f"the state of environment '{env}' is locked by {who}",
                        hint="wait with --lock-timeout DURATION, or if that process is gone run "
                        f"'hepinfra state unlock {holder.id if holder else 'LOCK_ID'} -e {env}'",
                    ) from None
                time.sleep(POLL)
                continue
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(self.directory)
            for name in (".json", ".json.backup"):  # ours now: clear what a killed writer left
                remove_stale_temps(self._file(env, name))
            return info

    def unlock(self, env: str, lock_id: str) -> None:
        holder = self.lock_holder(env)
        if holder is None:
            raise LockError(f"the state of environment '{env}' is not locked")
        if holder.id != lock_id:
            raise LockError(f"lock id {lock_id} does not match the lock held by {holder.describe()}")
        with contextlib.suppress(FileNotFoundError):
            self._file(env, ".lock").unlink()


def _is_dead(holder: LockInfo) -> bool:
    """True only when the holder ran on this host and its process no longer exists."""
    if holder.host != socket.gethostname() or holder.pid <= 0:
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(holder.pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
