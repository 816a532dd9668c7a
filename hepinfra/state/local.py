"""The local state backend: ``.hepinfra/state/<env>.json``, atomic, 0600, with backup and lock.

Owns: the files under one directory. The serial is bumped only when content changed; the
previous version is kept as ``<env>.json.backup``.
The lock is ``<env>.lock``, holding its holder's LockInfo (written to a temp file and renamed
in, so a reader never sees half of one). The holder keeps an exclusive flock on that file for
the lock's life, so the kernel says whether it lives: the flock goes when the holder process
dies (pid reuse and zombies cannot fool it), or stays while a child it forked keeps the fd.
Every check-and-take, check-and-break and unlock runs holding a flock on ``<env>.lock.guard``
(never deleted), for a few syscalls only: of many processes finding one stale lock, exactly one
breaks it. A lock file whose flock is free is broken, with a warning naming the holder, when
its holder ran on this host (lock files of older versions, which kept no flock, only when their
pid is gone); anything else waits up to the timeout and then fails naming the holder.
``unlock`` with the right id works from any process (``hepinfra state unlock``).
Must not: know what is inside a state beyond lineage and serial; break a lock of another host;
create or remove ``<env>.lock`` without holding the guard.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import stat
import tempfile
from pathlib import Path

from hepinfra.errors import LockError, StateError
from hepinfra.fsutil import atomic_write, fsync_dir, remove_stale_temps, temp_prefix
from hepinfra.locking import Flock, flock_path, is_open_at, try_flock
from hepinfra.safety.paths import shown
from hepinfra.state import codec
from hepinfra.state.backend import (
    UNREADABLE,
    LockInfo,
    holder_from,
    holder_process_gone,
    identified,
    wait_for_lock,
)
from hepinfra.state.model import State

STATE_LIMIT = 256 * 2**20  # bytes: a state of 1,000 databases is about 1 MiB
POLL_FIRST = 0.002  # seconds between attempts while a live holder has the lock, doubling up to POLL
POLL = 0.02
GUARD_WAIT = 30.0  # the guard is held for a few syscalls; only a frozen process holds it longer
log = logging.getLogger("hepinfra.state")


class LocalBackend:
    where = "local (.hepinfra/state)"
    frees_dead_holders = True  # on this host: the holder's flock goes with its process

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        # What this object last wrote per environment, and whether it already kept a backup. Valid
        # while it holds the lock (apply writes many times per run); read() drops it.
        self._written: dict[str, State] = {}
        self._base: dict[str, int] = {}  # the serial this object last read or wrote per environment
        # the file this object last wrote per environment (each write makes a new inode)
        self._inode: dict[str, tuple[int, int, int] | None] = {}
        self._backed_up: set[str] = set()
        # The flock this object holds per environment on its lock file, with that lock's id.
        self._held: dict[str, tuple[str, Flock]] = {}

    def _file(self, env: str, suffix: str = ".json") -> Path:
        """A file of the state directory; refused when it or ``.hepinfra`` is a (committed) link."""
        for folder in (self.directory.parent, self.directory):
            if folder.is_symlink():
                raise StateError(
                    f"{folder}: is a symbolic link; the local state is kept only in a real directory of the project "
                    "(remove the link)"
                )
        return self.directory / f"{env}{suffix}"

    def environments(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def read(self, env: str) -> State | None:
        self._written.pop(env, None)
        state = self._read_file(env)
        self._base[env] = state.serial if state is not None else 0
        return state

    def _read_file(self, env: str) -> State | None:
        path = self._file(env)
        try:
            data = _bytes(path)
        except FileNotFoundError:
            return None
        state = codec.decode(data, str(path))
        if state.environment != env:
            raise StateError(f"{path}: holds the state of environment '{state.environment}', not '{env}'")
        return state

    def write(self, env: str, state: State) -> State:
        """Check and store as one step for every hepinfra process (under the guard flock), so even
        runs that skip the lock cannot lose each other's writes."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with flock_path(self._file(env, ".lock.guard"), timeout=GUARD_WAIT):
            return self._write_guarded(env, state)

    def _write_guarded(self, env: str, state: State) -> State:
        current = self._written.get(env)
        if current is not None and self._inode.get(env) != _inode(self._file(env)):
            current = None  # replaced since this object wrote it: judge by what is there now
        if current is None:
            current = self._read_file(env)
            base = self._base.get(env)
            if base is not None and base != (current.serial if current is not None else 0):
                raise StateError(
                    f"{self._file(env)}: the state changed since it was read (serial {base}, now "
                    f"{current.serial if current is not None else 'gone'}); another run wrote it without holding "
                    "the lock. Nothing was overwritten",
                    hint="run again: it reads the new state",
                )
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
                atomic_write(self._file(env, ".json.backup"), _bytes(self._file(env)))
                self._backed_up.add(env)
        else:
            state = state.model_copy(update={"serial": max(state.serial, 1)})
        atomic_write(self._file(env), codec.encode(state))
        self._written[env] = state
        self._base[env] = state.serial
        self._inode[env] = _inode(self._file(env))
        return state

    def replace(self, env: str, state: State) -> State:
        """Overwrite with a state of another lineage (``state push --force``), keeping a backup."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with flock_path(self._file(env, ".lock.guard"), timeout=GUARD_WAIT):
            return self._replace_guarded(env, state)

    def _replace_guarded(self, env: str, state: State) -> State:
        if self._file(env).exists():
            atomic_write(self._file(env, ".json.backup"), _bytes(self._file(env)))
        current = self.read(env)
        if current is not None and state.serial <= current.serial:  # kept when newer, else just past it
            state = state.model_copy(update={"serial": current.serial + 1})
        atomic_write(self._file(env), codec.encode(state))
        self._written[env] = state
        self._base[env] = state.serial
        self._inode[env] = _inode(self._file(env))
        self._backed_up.add(env)
        return state

    # --- locking -----------------------------------------------------------------------------------

    def lock_holder(self, env: str) -> LockInfo | None:
        try:
            return LockInfo.from_dict(json.loads(_bytes(self._file(env, ".lock"))))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, StateError):
            return UNREADABLE

    def lock(self, env: str, info: LockInfo, timeout: float = 0.0) -> LockInfo:
        mine = identified(info, "flock")
        wait_for_lock(
            lambda: self._take(env, mine),
            timeout,
            lambda holder: LockError(
                f"the state of environment '{env}' is locked by {holder.describe()}",
                hint="wait with --lock-timeout DURATION, or if that process is gone run "
                f"'hepinfra state unlock {shown(str(holder.id), 40)} -e {env}'",
            ),
            first=POLL_FIRST,
            cap=POLL,
        )
        fsync_dir(self.directory)
        for name in (".json", ".json.backup"):  # ours now: clear what a killed writer left
            remove_stale_temps(self._file(env, name))
        return mine

    def _take(self, env: str, mine: LockInfo) -> LockInfo | None:
        """One attempt under the guard: None when ``mine`` now holds the lock, else the holder.

        Everything that creates, breaks or removes ``<env>.lock`` does so holding the guard, so
        "is it free or stale?" and "take it" are one step for every other hepinfra process.
        """
        path = self._file(env, ".lock")
        with flock_path(self._file(env, ".lock.guard"), timeout=GUARD_WAIT):
            stale: LockInfo | None = None
            try:
                current = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                current = None
            except OSError:
                return self.lock_holder(env) or UNREADABLE
            if current is not None and not stat.S_ISREG(os.fstat(current).st_mode):  # a FIFO, a device
                os.close(current)
                return UNREADABLE
            try:
                if current is not None:
                    if not try_flock(current):
                        return _read_holder(current)  # its holder keeps the flock: alive
                    stale = _read_holder(current)
                    if not _holder_gone(stale):
                        return stale
                held = _publish(path, mine, replacing=current)
                if held is None:  # an older hepinfra (it takes no guard) changed the file meanwhile
                    return self.lock_holder(env) or UNREADABLE
            finally:
                if current is not None:
                    os.close(current)  # the flock on a stale lock's inode goes with it
            self._held[env] = (mine.id, held)
        if stale is not None:
            log.warning(
                "cleared the lock of environment '%s' left by a process that is gone: %s", env, stale.describe()
            )
        return None

    def holder_alive(self, env: str) -> bool:
        """True when the lock's holder provably runs: it keeps the flock on the lock file (and it is not
        this object). ``state unlock`` refuses to pull such a lock without ``--force``."""
        path = self._file(env, ".lock")
        if env in self._held:
            return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if try_flock(fd, shared=True):
                fcntl.flock(fd, fcntl.LOCK_UN)
                return False
            return True
        finally:
            os.close(fd)

    def close(self) -> None:
        """Nothing to close: a lock still held stays until ``unlock`` or this process ends."""

    def unlock(self, env: str, lock_id: str, *, force: bool = False) -> None:
        """Remove the lock if ``lock_id`` is its id, from any process (``state unlock``; ``force``
        changes nothing here: the caller already decided to pull a live holder's lock)."""
        try:
            if not self._file(env, ".lock").exists():
                raise LockError(f"the state of environment '{env}' is not locked")
            with flock_path(self._file(env, ".lock.guard"), timeout=GUARD_WAIT):
                holder = self.lock_holder(env)
                if holder is None:
                    raise LockError(f"the state of environment '{env}' is not locked")
                if holder.id != lock_id:
                    raise LockError(f"lock id {shown(lock_id, 40)} does not match the lock held by {holder.describe()}")
                with contextlib.suppress(FileNotFoundError):
                    self._file(env, ".lock").unlink()
        finally:
            ours = self._held.get(env)
            if ours is not None and ours[0] == lock_id:  # gone from the path either way: let go of it
                del self._held[env]
                ours[1].release()


def _inode(path: Path) -> tuple[int, int, int] | None:
    """Which file is at ``path`` (inode numbers are reused, so with its change time and size)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns, st.st_size


def _read_holder(fd: int) -> LockInfo:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return holder_from(b"".join(chunks))


def _holder_gone(holder: LockInfo) -> bool:
    """Judged with nobody holding the lock file's flock: is its holder gone?

    A holder on another host never is. A holder that kept the flock (this version) is gone
    once the flock is free; one from an older version (no flock) is tested by its pid.
    """
    if holder.host != socket.gethostname():
        return False
    if holder.liveness == "flock":
        return True
    return holder_process_gone(holder)


def _bytes(path: Path) -> bytes:
    """A state, backup or lock file: a regular file (never a link, FIFO or device), bounded."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if path.is_symlink():
            raise StateError(f"{path}: is a symbolic link; a state file is never read through one") from None
        raise StateError(f"{path}: cannot read state: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > STATE_LIMIT:
            raise StateError(f"{path}: not a regular file of at most {STATE_LIMIT // 2**20} MiB; not read")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(STATE_LIMIT + 1)
    finally:
        os.close(fd)


def _publish(path: Path, mine: LockInfo, *, replacing: int | None) -> Flock | None:
    """Write ``mine`` to a temp file, flock it, and put it at ``path`` (atomic for any reader).

    ``replacing``: the fd of the stale lock file to replace (None: there is none). Returns
    None when ``path`` is no longer what was judged.
    """
    remove_stale_temps(path)  # made only under the guard, as here: any left is a killed taker's
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=path.parent)
    held = Flock(fd, path)
    try:
        os.write(fd, json.dumps(mine.as_dict()).encode())
        os.fsync(fd)
        if not try_flock(fd):
            raise StateError(f"{path}: cannot lock a new file in {path.parent}")
        if replacing is not None:
            if not is_open_at(replacing, path):
                held.release()
                os.unlink(tmp)
                return None
            os.replace(tmp, path)  # the stale lock is never absent: no window for anyone
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                held.release()
                return None
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    except BaseException:
        held.release()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return held
