"""``write-back: pr``: after an apply in CI, the committed outputs it wrote (age files, ciphertext
only) go back to the repository as ONE pull request per apply, so the repository stays the source of
truth for a GitOps team.

* The commit holds only the declared outputs of committed kinds (never a dotenv or template file:
  those are plaintext), made with a temporary index from the pushed commit, so the runner's
  checkout and index are left as they are; it is pushed to ``hepinfra/write-back/<sha>``.
* The apply ran with ``--write-back``: state records the file each write replaced, so a plan of a
  checkout that still holds it (main until the pull request is merged) is not a change.
* The action knows its own write-back pull requests (``is_write_back``: its branch prefix, its
  marker in the body, and the token's identity as author) AND checks what they change
  (``write_back_comment``: only files of committed outputs, or it is planned like any other): such a
  pull request gets a comment with the fingerprint of an empty change set instead of a plan, so its
  merge applies nothing (and anything due by then is ``plan-changed``, as for any merge).
* A failed write-back (commit, push, pull request) makes state forget what the files replaced
  (``forget_pending``): the next plan sees the old files as a change, and the next apply writes
  them again and retries.

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


def committed_kinds() -> frozenset[str]:
    """File outputs that are not local (age): what is committed."""
    from hepinfra.outputs import SINKS, local_kinds

    return frozenset(SINKS) - local_kinds()


def committed_paths(manifest: Any, envs: Sequence[str], states: dict[str, Any] | None = None) -> list[Path]:
    """The real paths of the declared outputs of committed kinds in ``envs``, and of those that
    ``states`` (read before the apply) record: an output the apply retired is removed in the commit."""
    from hepinfra.outputs.base import resolve_path
    from hepinfra.safety.paths import Boundary, Refused

    kinds = committed_kinds()
    found: dict[Path, None] = {}
    for env in envs:
        for decl in manifest.declared.get(env, ()):
            for target in decl.outputs:
                if target.kind in kinds:
                    found[resolve_path(manifest.project_dir, target)] = None
    boundary = Boundary(manifest.project_dir)
    for state in (states or {}).values():
        for record in getattr(state, "outputs", {}).values() if state is not None else ():
            if record.kind not in kinds:
                continue
            try:  # a path from state (editable): only inside the project, as any retire
                found[boundary.check_real(boundary.resolve(record.path, allow_outside=False))] = None
            except (Refused, OSError, ValueError):
                continue
    return list(found)


def write_back_comment(job: Any, base: str, head: str, log: Callable[[str], None]) -> str | None:
    """The comment of a write-back pull request that changes only files of committed outputs (its
    fingerprint: an empty change set, planned at ``head``), or None: it changes anything else, and is
    planned like any other."""
    from hepinfra import runner

    project = runner.Project.open(job.manifest)
    envs = runner.select_environments(project.manifest, job.envs)
    cwd = project.manifest.project_dir
    top = Path(_git(["rev-parse", "--show-toplevel"], cwd=cwd, what="find the repository")).resolve()
    allowed = set()
    for path in committed_paths(project.manifest, envs):
        try:
            allowed.add(path.resolve().relative_to(top).as_posix())
        except ValueError:
            continue
    changed = [p for p in _git(["diff", "--name-only", "-z", base, "HEAD"], cwd=cwd, what="diff").split("\0") if p]
    others = [p for p in changed if p not in allowed]
    if others or not changed:
        from hepinfra.safety.paths import shown

        log(f"A write-back pull request that changes {shown(others[0]) if others else 'nothing'}: planned as any other")
        return None
    return no_plan_body(job.marker, job.manifest, head, len(changed))


def no_plan_body(marker: str, manifest: str, head: str, files: int) -> str:
    """The comment of a write-back pull request at ``head``: the fingerprint of an empty change set."""
    from hepinfra.changeset import NO_CHANGES

    return (
        f"{marker}\n<!-- hepinfra:fingerprint {NO_CHANGES} -->\n<!-- hepinfra:head {head} -->\n"
        f"### hepinfra: write-back of committed outputs, no plan needed\n\n"
        f"It changes only files that outputs of `{manifest}` write ({files}); merging it applies nothing "
        "(if anything else is due by then, nothing is applied and the merge says plan-changed).\n"
    )


def forget_pending(project: Any, envs: Sequence[str]) -> None:
    """After a failed write-back: state forgets what the committed outputs replaced, under each
    environment's lock, so the next plan sees the old files as a change and the next apply writes
    them again (and retries the write-back)."""
    from hepinfra import runner
    from hepinfra.apply.ledger import forget_replaced
    from hepinfra.cli.options import run_async
    from hepinfra.state.backend import LockInfo

    for env in sorted(envs):
        lock = project.backend.lock(env, LockInfo(), 60.0)
        try:
            states = project.states([env])
            state = states.get(env)
            pending = [(env, k) for k, r in (state.outputs.items() if state else ()) if r.write_back_from is not None]
            if pending:
                run_async(forget_replaced(project.backend, pending, states))
        finally:
            runner.release(project.backend, env, lock.id)


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
    gh: Any,
    manifest: Any,
    envs: Sequence[str],
    *,
    base: str,
    sha: str,
    log: Callable[[str], None],
    states: dict[str, Any] | None = None,
    marker: str = "",
    manifest_name: str = "",
) -> int | None:
    """Commit what the apply wrote to committed outputs, push it to ``hepinfra/write-back/<sha>`` and
    open (or find) its pull request into ``base``; its number, or None when nothing changed."""
    if not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", sha):
        raise UsageError("write-back: the pushed commit's SHA is unknown (GITHUB_SHA)")
    paths = committed_paths(manifest, envs, states)
    cwd = manifest.project_dir
    shown = ", ".join(sorted(p.name for p in paths))[:200]
    commit = commit_outputs(paths, cwd=cwd, message=f"hepinfra write-back: {shown}\n\nWritten by the apply of {sha}.")
    if commit is None:
        return None
    import secrets

    run = f"{os.environ.get('GITHUB_RUN_ID', '')}-{os.environ.get('GITHUB_RUN_ATTEMPT', '')}".strip("-")
    branch = f"{PREFIX}{sha[:12]}-{run if re.fullmatch(r'[0-9-]{1,40}', run) else secrets.token_hex(4)}"
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
    if marker and number:
        # a pull request opened with GITHUB_TOKEN starts no workflow, so no plan job ever comments on it:
        # the comment a plan would post for this very commit (only committed outputs, which this job wrote)
        files = len([p for p in paths if p.exists() or p.is_symlink()]) or len(paths)
        gh.upsert_comment(number, marker, no_plan_body(marker, manifest_name, commit, files), "update")
    log(f"Write-back: pull request #{number} ({branch})")
    return number
