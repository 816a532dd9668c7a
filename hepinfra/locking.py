"""Kernel file locks (flock): the one flock implementation in hepinfra.

Owns: ``acquire`` / ``flock_path`` (hold a lock file exclusively or shared, blocking or with a
timeout), ``Flock`` (a held lock: released by ``release()``, or by the kernel when its fd is
closed, e.g. when the process dies), ``try_flock`` (one non-blocking attempt on an open fd),
``is_open_at`` (is that fd still the file at the path?), and the output locks: each real output
path maps to a sidecar ``lock_dir / (sha256(str(real_path))[:32] + ".lock")``, and
``output_locks`` takes several in one global order (sorted by real path) so two processes never
deadlock. Used by the state backend's guard (``hepinfra.state.local``) and the output writes.
Must not: delete a lock file (a waiter may hold an fd on it: deleting flock files races), follow
a symlink at a lock file, or know what the lock protects.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from hepinfra.errors import LockError

POLL_FIRST = 0.001  # seconds between non-blocking attempts, doubling up to POLL_MAX
POLL_MAX = 0.05


class Flock:
    """An open file description holding a flock on ``path``.

    ``release()`` unlocks and closes it. If this object is garbage collected, or the process
    dies, the fd is closed and the kernel drops the lock. A child forked while it is held shares
    the open file description, so the lock lives while such a child keeps the fd open; only the
    process that took the lock unlocks it explicitly (a forked child's ``release()`` just closes
    its copy).
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd: int | None = fd
        self.path = path
        self._owner = os.getpid()

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if os.getpid() == self._owner:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __del__(self) -> None:
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # never LOCK_UN here: this may be a forked child's copy

    def __enter__(self) -> Flock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_flock(fd: int, *, shared: bool = False) -> bool:
    """One non-blocking attempt: True when this open file description now holds the lock."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents, each mode 0700 (less the umask)."""
    missing: list[Path] = []
    current = Path(directory)
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)


def acquire(lock_file: Path, *, timeout: float | None = None, shared: bool = False) -> Flock:
    """Take a flock on ``lock_file`` (created 0600, parents 0700, if missing) and return it.

    ``timeout=None`` blocks; otherwise attempts are repeated until ``timeout`` seconds have
    passed (0: one attempt) and LockError names the file. The lock is on the inode at the path
    when it is granted: if the file was replaced or removed meanwhile, it is opened again.
    """
    path = Path(lock_file)
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    delay = POLL_FIRST
    while True:
        fd = _open(path)
        try:
            if deadline is None:
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                got = True
            else:
                got = try_flock(fd, shared=shared)
            if got and is_open_at(fd, path):
                return Flock(fd, path)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if got:  # the path now names another inode: lock that one
            continue
        assert deadline is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockError(
                f"timed out after {timeout:g}s waiting for the lock {path}",
                hint="another hepinfra process holds it; wait for it or raise the timeout",
            )
        time.sleep(min(delay, left))
        delay = min(delay * 2, POLL_MAX)


@contextlib.contextmanager
def flock_path(lock_file: Path, *, timeout: float | None = None, shared: bool = False) -> Iterator[Flock]:
    """Hold a flock on ``lock_file`` for the ``with`` block (see ``acquire``); the file stays."""
    held = acquire(lock_file, timeout=timeout, shared=shared)
    try:
        yield held
    finally:
        held.release()


def shared_lock_dir(fallback: Path) -> Path:
    """The per-user directory for output locks on this host, shared by every project (two manifests
    writing one file exclude each other too): ``<tmp>/hepinfra-locks-<uid>``, mode 0700. If it cannot
    be made, or is not a private directory of this user (a planted link or another user's), ``fallback``."""
    import stat
    import tempfile

    directory = Path(tempfile.gettempdir()) / f"hepinfra-locks-{os.getuid()}"
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return fallback
    try:
        info = os.lstat(directory)
    except OSError:
        return fallback
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return fallback
    return directory


def output_lock_file(lock_dir: Path, real_path: Path | str) -> Path:
    """The sidecar lock file of an output: ``lock_dir/<sha256 of its real path, 32 hex>.lock``."""
    real = os.path.realpath(real_path)
    return Path(lock_dir) / (hashlib.sha256(real.encode()).hexdigest()[:32] + ".lock")


@contextlib.contextmanager
def output_locks(
    lock_dir: Path, real_paths: Iterable[Path | str], *, timeout: float | None = None, shared: bool = False
) -> Iterator[list[Path]]:
    """Hold the sidecar locks of several outputs, taken in order of real path (no deadlock).

    Yields the lock files in the order taken. ``timeout`` bounds the wait for all of them;
    on a timeout the ones already taken are released.
    """
    reals = sorted({os.path.realpath(p) for p in real_paths})
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    with contextlib.ExitStack() as stack:
        files: list[Path] = []
        for real in reals:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            lock_file = output_lock_file(lock_dir, real)
            try:
                stack.enter_context(flock_path(lock_file, timeout=left, shared=shared))
            except LockError:
                raise LockError(
                    f"timed out after {timeout:g}s waiting for the lock of output {real} ({lock_file})",
                    hint="another hepinfra process is writing that file; wait for it or raise the timeout",
                ) from None
            files.append(lock_file)
        yield files


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        make_private_dirs(path.parent)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def is_open_at(fd: int, path: Path) -> bool:
    """True when ``path`` (not followed if a symlink) names the file open as ``fd``."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino)
