"""Path containment: every path the manifest names is checked on its resolved real path.

Owns: the rules for output paths and template sources, applied at validate, plan and apply
time (and once more right before a write):
- no control characters (NUL, newline, ...) anywhere in the path;
- inside the manifest's directory, both as written and after resolving every symbolic link,
  unless the output sets ``allow_outside``;
- never inside ``.hepinfra/`` (state, locks, the local hep.gg's data and credentials), inside a
  Git directory, the manifest itself or a template source, or a special file system
  (``/proc``, ``/sys``, ``/dev``), even with ``allow_outside``;
- outputs are regular files or do not exist yet; template sources are regular files of at
  most ``SOURCE_LIMIT`` bytes, opened without blocking (a FIFO never hangs a run).
Must not: read a file's content for anything but a template source, or know about Git
(``safety.git``) or sinks.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

PSEUDO_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
# file systems whose "files" are the kernel's or a process's state: never a template, never an output
PSEUDO_FS = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "configfs",
        "bpf",
        "pstore",
        "efivarfs",
        "fusectl",
        "binfmt_misc",
        "hugetlbfs",
        "mqueue",
        "autofs",
        "rpc_pipefs",
    }
)
SOURCE_LIMIT = 1024 * 1024  # a template source larger than 1 MiB is refused
MANIFEST_LIMIT = 16 * 1024 * 1024
HEPINFRA_DIR = ".hepinfra"


class Refused(ValueError):
    """Why a path is refused; ``str()`` is the reason (the caller adds the path and location)."""


def has_control(text: str) -> bool:
    """Control, format (bidirectional overrides, zero-width) and line/paragraph separator characters."""
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in text)


def shown(text: str, limit: int = 80) -> str:
    """A path as it may appear in a message: control characters escaped, length capped."""
    visible = "".join(repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") else c for c in text)
    return visible if len(visible) <= limit else visible[: limit - 1] + "…"


def inside(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or below it (both absolute and normalised; compared as text: this runs for
    every output against every mount point)."""
    text, top = str(path), str(root)
    return text == top or text.startswith(top if top.endswith("/") else top + "/")


@functools.cache
def _mounts() -> tuple[tuple[Path, str], ...]:
    """(mount point, file system type) of every mount, longest mount point first."""
    found: list[tuple[Path, str]] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if " - " not in line or len(fields) < 5:
                    continue
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 is a space
                fstype = line.split(" - ", 1)[1].split()[0]
                found.append((Path(point), fstype))
    except OSError:
        return ()
    return tuple(sorted(found, key=lambda m: len(str(m[0])), reverse=True))


def _special(real: Path) -> bool:
    if any(inside(real, root) for root in PSEUDO_ROOTS):
        return True
    for point, fstype in _mounts():  # a proc or sysfs mounted anywhere else (mount -t proc proc ./p)
        if inside(real, point):
            return fstype in PSEUDO_FS
    return False


@functools.lru_cache(maxsize=16384)
def _is_git_dir(directory: str) -> bool:
    """A Git directory under any name: ``--separate-git-dir``, a bare repository, a worktree's gitdir."""
    join = os.path.join
    return (
        os.path.isfile(join(directory, "HEAD"))
        and os.path.isdir(join(directory, "objects"))
        and (os.path.isdir(join(directory, "refs")))
    )


def _in_git_dir(directory: str) -> bool:
    """``directory`` or one of its parents is a Git directory (under any name)."""
    while True:
        if _is_git_dir(directory):
            return True
        parent = os.path.dirname(directory)
        if parent == directory:
            return False
        directory = parent


@dataclass
class Boundary:
    """The containment rules of one project (the manifest's directory)."""

    project_dir: Path  # as given; made real in __post_init__
    protected: dict[Path, str] = field(default_factory=dict)  # real path -> what it is

    def __post_init__(self) -> None:
        self.project_dir = Path(os.path.realpath(self.project_dir))
        self.hepinfra_dir = self.project_dir / HEPINFRA_DIR
        self.real_hepinfra_dir = Path(os.path.realpath(self.hepinfra_dir))  # it may be a link
        self._real_dirs: dict[str, str] = {}
        self._dir_facts: dict[str, tuple[bool, bool]] = {}

    def protect(self, real: Path, what: str) -> None:
        self.protected.setdefault(real, what)

    def resolve(self, written: str, *, allow_outside: bool) -> Path:
        """The real path ``written`` (relative to the project, or absolute) names, or Refused."""
        if has_control(written):
            raise Refused("contains a control character")
        if not written.strip() or written.endswith(("/", "/.")):
            raise Refused("does not name a file")
        lexical = PurePosixPath(written)
        if not allow_outside and (lexical.is_absolute() or ".." in lexical.parts):
            raise Refused("leaves the manifest's directory; set allow_outside: true to allow it")
        real = self._realpath(self.project_dir / written)
        if not allow_outside and not inside(real, self.project_dir):
            raise Refused(
                f"resolves through a symbolic link to '{shown(str(real))}', outside the manifest's directory; "
                "set allow_outside: true to allow it"
            )
        special, git_dir = self._directory_facts(real.parent)
        if special:
            raise Refused(f"resolves to '{shown(str(real))}' on a special file system (/proc, /sys, /dev)")
        if HEPINFRA_DIR in lexical.parts or HEPINFRA_DIR in real.parts or inside(real, self.real_hepinfra_dir):
            raise Refused("is inside .hepinfra/, hepinfra's own state, locks and local hep.gg data")
        if ".git" in lexical.parts or ".git" in real.parts or git_dir:
            raise Refused("is inside a Git directory")
        return real

    def _realpath(self, path: Path) -> Path:
        """``os.path.realpath``, resolving each directory once per Boundary (thousands of outputs share a
        handful of directories): realpath(dir/name) is realpath(realpath(dir)/name)."""
        parent = str(path.parent)
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            real_parent = self._real_dirs[parent] = os.path.realpath(parent)
        candidate = os.path.join(real_parent, path.name)
        if path.name in ("", ".", "..") or os.path.islink(candidate):
            return Path(os.path.realpath(candidate))
        return Path(candidate)

    def _directory_facts(self, directory: Path) -> tuple[bool, bool]:
        """(on a special file system, inside a Git directory under any name), once per directory."""
        key = str(directory)
        facts = self._dir_facts.get(key)
        if facts is None:
            facts = self._dir_facts[key] = (_special(directory), _in_git_dir(key))
        return facts

    def check_output(self, written: str, *, allow_outside: bool) -> Path:
        """The real path an output writes; Refused if the rules forbid it."""
        return self.check_real(self.resolve(written, allow_outside=allow_outside))

    def check_real(self, real: Path) -> Path:
        """The checks on an already resolved output path: not protected, a regular file or absent."""
        what = self.protected.get(real)
        if what is not None:
            raise Refused(f"is {what}; an output must not overwrite it")
        try:
            info = os.stat(real)
        except FileNotFoundError:
            return real
        except OSError as exc:
            raise Refused(f"cannot be checked: {exc.strerror}") from None
        if stat.S_ISDIR(info.st_mode):
            raise Refused("is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise Refused("is not a regular file (a FIFO, device or socket)")
        return real

    def read_source(self, written: str, *, allow_outside: bool, limit: int = SOURCE_LIMIT) -> tuple[Path, bytes]:
        """Read a template source: a regular file within the rules, at most ``limit`` bytes."""
        real = self.resolve(written, allow_outside=allow_outside)
        return real, read_regular(real, limit)


def read_regular(real: Path, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes without ever blocking on a FIFO or device."""
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise Refused("not found") from None
    except OSError as exc:
        raise Refused(f"cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused("is not a regular file (a FIFO, device, socket or directory)")
        if info.st_size > limit:
            raise Refused(f"is larger than {limit // 1024} KiB")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise Refused(f"is larger than {limit // 1024} KiB")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def recheck(written: str, project_dir: Path, expected: Path, *, allow_outside: bool) -> Path:
    """Right before a write: the path must still resolve to the real path checked at load time."""
    boundary = Boundary(project_dir)
    real = boundary.check_output(written, allow_outside=allow_outside)
    if real != expected:
        raise Refused(f"now resolves to '{shown(str(real))}', not the '{shown(str(expected))}' checked before")
    return real
