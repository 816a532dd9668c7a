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


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically; parent directories are created (mode 0700).

    The rename is atomic for any reader and survives the process being killed at any line.
    ``sync_dir=False`` leaves the directory fsync (durability of the new name across a power
    loss) to the caller, who can do it once for many files (see ``fsync_dir``).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=path.parent)
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
    if sync_dir:
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


def temp_prefix(path: Path) -> str:
    return f"{TMP_PREFIX}{path.name}-"


def remove_stale_temps(path: Path) -> int:
    """Remove temp files a process killed mid-write left for ``path``; returns how many.

    Call it only while holding whatever serialises writers of ``path`` (its state lock), or
    another writer's temp file would be pulled from under it.
    """
    return remove_stale_temps_of([path])


def remove_stale_temps_of(paths: list[Path]) -> int:
    """``remove_stale_temps`` for many paths, reading each directory once."""
    by_dir: dict[Path, tuple[str, ...]] = {}
    for path in paths:
        by_dir[path.parent] = (*by_dir.get(path.parent, ()), temp_prefix(path))
    count = 0
    for directory, prefixes in by_dir.items():
        try:
            entries = list(directory.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.name.startswith(prefixes):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    count += 1
    return count


HEPINFRA_GITIGNORE = b"""\
# Written by hepinfra when it created this directory. The local hep.gg's credentials and data,
# locks and state backups never belong in Git. State files (state/*.json) hold no secret: commit
# them only if your team shares state through Git (a shared backend is better: see hepinfra's docs).
*
!state/
!state/*.json
"""


def refuse_links(directory: Path, project_dir: Path) -> None:
    """hepinfra's own directory (``.hepinfra`` and below) is used only as real directories and files:
    a link committed there (to a file anywhere the user can write, or a key of the committer's
    choosing) is refused, never followed."""
    from hepinfra.errors import UsageError

    here = directory
    while here != project_dir and project_dir in here.parents:
        if here.is_symlink():
            raise UsageError(f"{here}: is a symbolic link; hepinfra's own files are never used through one (remove it)")
        here = here.parent
    if directory.is_dir() and not directory.is_symlink():
        for entry in directory.iterdir():
            if entry.is_symlink():
                raise UsageError(
                    f"{entry}: is a symbolic link; hepinfra's own files are never used through one (remove it)"
                )


def ensure_hepinfra_dir(project_dir: Path) -> Path:
    """``<project>/.hepinfra`` (mode 0700), with a ``.gitignore`` written the first time, as ``.terraform``
    users expect: ``git add .`` never picks up the local credentials, locks or emulator data."""
    directory = project_dir / ".hepinfra"
    refuse_links(directory, project_dir)
    ignore = directory / ".gitignore"
    if not ignore.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(ignore, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return directory
        with os.fdopen(fd, "wb") as fh:
            fh.write(HEPINFRA_GITIGNORE)
    return directory
