"""``write-back: pr``: after an apply in CI, the committed outputs it wrote (age files, ciphertext
only) go back to the repository as ONE pull request per apply, so the repository stays the source of
truth for a GitOps team.

* The commit holds only the declared outputs of committed kinds (never a dotenv or template file:
  those are plaintext), made with a temporary index from the pushed commit, so the runner's
  checkout and index are left as they are; it is pushed to ``hepinfra/write-back/<sha>``.
* The apply ran with ``--write-back``: state records the file each write replaced, so a plan of a
  checkout that still holds it (main until the pull request is merged) is not a change.
* The action knows its own write-back pull requests (``is_write_back``: its branch prefix, its
  marker in the body, and the token's identity as author): their plan is not needed, and their
  merge applies only an empty change set.

Owns: which files, the git plumbing, the pull request. Must not: commit a file of a local kind, or
pass a path to git as a pattern.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hepinfra.errors import UsageError

PREFIX = "hepinfra/write-back/"
MARKER = "<!-- hepinfra:write-back -->"
BOT_NAME = "github-actions[bot]"
BOT_EMAIL = "41898282+github-actions[bot]@users.noreply.github.com"


def is_write_back(pull: dict[str, Any], me: str) -> bool:
    """A pull request this action opened to write outputs back (all three must hold: a branch name
    or a marker alone can be chosen by anyone)."""
    head = pull.get("head") if isinstance(pull.get("head"), dict) else {}
    user = pull.get("user") if isinstance(pull.get("user"), dict) else {}
    return (
        str((head or {}).get("ref") or "").startswith(PREFIX)
        and (user or {}).get("login") == me
        and MARKER in str(pull.get("body") or "")
    )


def committed_paths(manifest: Any, envs: Sequence[str]) -> list[Path]:
    """The real paths of the declared outputs of committed kinds (file outputs that are not local:
    age) in ``envs``."""
    from hepinfra.outputs import SINKS, local_kinds
    from hepinfra.outputs.base import resolve_path

    kinds = frozenset(SINKS) - local_kinds()
    found: dict[Path, None] = {}
    for env in envs:
        for decl in manifest.declared.get(env, ()):
            for target in decl.outputs:
                if target.kind in kinds:
                    found[resolve_path(manifest.project_dir, target)] = None
    return list(found)


def _git(args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, what: str) -> str:
    command = ["git", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        from hepinfra.safety.redact import redact

        last = next((ln for ln in reversed(done.stderr.splitlines()) if ln.strip()), "no message")
        raise UsageError(f"write-back: git could not {what}: {redact(last)[:300]}")
    return done.stdout.strip()


def commit_outputs(paths: Sequence[Path], *, cwd: Path, message: str) -> str | None:
    """A commit on top of HEAD holding ``paths`` as they are on disk (added, changed, or removed),
    made with a temporary index; None when they are as HEAD has them."""
    top = Path(_git(["rev-parse", "--show-toplevel"], cwd=cwd, what="find the repository")).resolve()
    relative = []
    for path in paths:
        try:
            relative.append(path.resolve().relative_to(top).as_posix())
        except ValueError:
            continue  # outside this repository: nothing to commit
    if not relative:
        return None
    with tempfile.TemporaryDirectory(prefix="hepinfra-write-back-") as tmp:
        env = {
            **os.environ,
            "GIT_INDEX_FILE": str(Path(tmp) / "index"),
            "GIT_LITERAL_PATHSPECS": "1",
            "GIT_AUTHOR_NAME": BOT_NAME,
            "GIT_AUTHOR_EMAIL": BOT_EMAIL,
            "GIT_COMMITTER_NAME": BOT_NAME,
            "GIT_COMMITTER_EMAIL": BOT_EMAIL,
        }
        _git(["read-tree", "HEAD"], cwd=top, env=env, what="read HEAD")
        _git(["update-index", "--add", "--remove", "--", *relative], cwd=top, env=env, what="stage the outputs")
        tree = _git(["write-tree"], cwd=top, env=env, what="write the tree")
        if tree == _git(["rev-parse", "HEAD^{tree}"], cwd=top, what="read HEAD"):
            return None
        return _git(["commit-tree", tree, "-p", "HEAD", "-m", message], cwd=top, env=env, what="commit")


def open_write_back(
    gh: Any, manifest: Any, envs: Sequence[str], *, base: str, sha: str, log: Callable[[str], None]
) -> int | None:
    """Commit what the apply wrote to committed outputs, push it to ``hepinfra/write-back/<sha>`` and
    open (or find) its pull request into ``base``; its number, or None when nothing changed."""
    if not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", sha):
        raise UsageError("write-back: the pushed commit's SHA is unknown (GITHUB_SHA)")
    paths = committed_paths(manifest, envs)
    cwd = manifest.project_dir
    shown = ", ".join(sorted(p.name for p in paths))[:200]
    commit = commit_outputs(paths, cwd=cwd, message=f"hepinfra write-back: {shown}\n\nWritten by the apply of {sha}.")
    if commit is None:
        return None
    branch = f"{PREFIX}{sha[:12]}"
    _git(["push", "--quiet", "origin", f"{commit}:refs/heads/{branch}"], cwd=cwd, what=f"push {branch}")
    owner = gh.repo.split("/", 1)[0]
    existing = gh.open_pulls(f"{owner}:{branch}")
    if existing and type(existing[0].get("number")) is int:
        number: int = existing[0]["number"]
    else:
        body = (
            f"{MARKER}\nThe apply of `{sha[:12]}` wrote these committed outputs (encrypted files); merging "
            "this pull request keeps the repository the source of truth. Until then, plans treat the files "
            "in the base branch as a pending write-back, not a change.\n\n"
            + "\n".join(f"- `{p.name}`" for p in sorted(paths))[:4000]
        )
        created = gh.create_pull(f"hepinfra write-back: {shown}", branch, base, body)
        number = int(created.get("number") or 0)
    log(f"Write-back: pull request #{number} ({branch})")
    return number
