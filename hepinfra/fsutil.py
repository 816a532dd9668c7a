"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

Owns: the one way hepinfra writes a file, so nothing is ever half-written and no temp file
outlives a write. Must not: log file contents.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TMP_PREFIX = ".hepinfra-tmp-"


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically; parent directories are created (mode 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(directory: Path) -> int:
    """Remove temp files left by a process killed mid-write; returns how many."""
    count = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in directory.iterdir():
            if entry.name.startswith(TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    count += 1
    return count
