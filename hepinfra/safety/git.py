"""What Git would do with a path: is it tracked, or would ``git add`` pick it up?

Owns: finding the repository that holds a real path (walking up to a ``.git`` entry, no
subprocess when there is none), and one ``git ls-files`` / ``git check-ignore`` call per
repository and run. Must not: change anything in a repository. Fails closed: a repository
Git cannot read is an error, not "untracked".
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path


class GitUnavailable(RuntimeError):
    """A path is inside a Git repository, but Git could not answer for it."""


# read-only queries: Git's environment variables (GIT_DIR, GIT_INDEX_FILE, ... set inside hooks) are
# dropped so that they cannot point the question at another index, and no repository config may run a
# program (fsmonitor) or refuse a checkout owned by another user (CI containers)
_SAFE = ["-c", "safe.directory=*", "-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false"]


def _run(top: Path, args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_OPTIONAL_LOCKS="0", LC_ALL="C", GIT_CONFIG_NOSYSTEM="1")
    try:
        return subprocess.run(
            ["git", *_SAFE, "-C", str(top), *args], input=stdin, capture_output=True, timeout=60, env=env
        )
    except FileNotFoundError:
        raise GitUnavailable(f"'{top}' is in a Git repository but the git command is not installed") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitUnavailable(f"git could not read the repository at '{top}': {type(exc).__name__}") from None


class _Repo:
    def __init__(self, top: Path) -> None:
        self.top = top
        self._tracked: frozenset[str] | None = None

    def relative(self, real: Path) -> str | None:
        try:
            return real.relative_to(self.top).as_posix()
        except ValueError:
            return None

    def tracked(self) -> frozenset[str]:
        if self._tracked is None:
            proc = _run(self.top, ["ls-files", "-z", "--full-name"])
            if proc.returncode != 0:
                raise GitUnavailable(f"git ls-files failed in '{self.top}' (exit {proc.returncode})")
            self._tracked = frozenset(p for p in proc.stdout.decode(errors="surrogateescape").split("\0") if p)
        return self._tracked

    def ignored(self, relatives: list[str]) -> set[str]:
        if not relatives:
            return set()
        proc = _run(self.top, ["check-ignore", "-z", "--stdin"], "\0".join(relatives).encode(errors="surrogateescape"))
        if proc.returncode not in (0, 1):
            raise GitUnavailable(f"git check-ignore failed in '{self.top}' (exit {proc.returncode})")
        return {p for p in proc.stdout.decode(errors="surrogateescape").split("\0") if p}


def _toplevel(directory: Path) -> Path | None:
    """The work tree Git itself finds from ``directory`` (an empty or broken ``.git`` falls through to an
    enclosing repository, as Git does); None for a bare or non-repository."""
    proc = _run(directory, ["rev-parse", "--show-toplevel"])
    if proc.returncode != 0:
        return None
    top = proc.stdout.decode(errors="surrogateescape").strip()
    return Path(os.path.realpath(top)) if top else None


class GitView:
    """Git's view of real paths: every enclosing repository is asked (a nested repository does not hide
    a file its parent tracks), one subprocess per repository and question."""

    def __init__(self) -> None:
        self._dirs: dict[Path, tuple[Path, ...]] = {}  # directory -> tops of the repositories enclosing it
        self._repos: dict[Path, _Repo] = {}

    def repos_of(self, real: Path) -> list[_Repo]:
        directory = real.parent
        if directory not in self._dirs:
            tops: list[Path] = []
            for candidate in (directory, *directory.parents):
                if os.path.lexists(candidate / ".git"):
                    top = _toplevel(candidate)
                    if top is not None and top not in tops:
                        tops.append(top)
            self._dirs[directory] = tuple(tops)
        return [self._repos.setdefault(top, _Repo(top)) for top in self._dirs[directory]]

    def is_tracked(self, real: Path) -> bool:
        return any(repo.relative(real) in repo.tracked() for repo in self.repos_of(real))

    def exposed(self, reals: Iterable[Path]) -> list[Path]:
        """Of ``reals``, those inside a repository (the nearest), not tracked and not ignored: ``git add``
        would take them."""
        by_repo: dict[Path, list[Path]] = {}
        for real in reals:
            repos = self.repos_of(real)
            if repos and not self.is_tracked(real):
                by_repo.setdefault(repos[0].top, []).append(real)
        out: list[Path] = []
        for top, files in by_repo.items():
            repo = self._repos[top]
            relatives = {f: repo.relative(f) for f in files}
            ignored = repo.ignored([r for r in relatives.values() if r is not None])
            out.extend(f for f, r in relatives.items() if r is not None and r not in ignored)
        return out
