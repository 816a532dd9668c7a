"""The GitHub Action as GitHub runs it (tests/github/harness.py reads action.yml and runs its steps),
against a fake GitHub REST API on loopback that records every request (tests/github/fake_api.py)
and a local hep.gg: one comment per pull request, edited; comments within GitHub's limit; apply on
merge of the reviewed change set only; drift issues; plans on fresh runners."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from hepinfra.changeset import NO_CHANGES
from tests.conftest import ENV, Server
from tests.conftest import run as conftest_run
from tests.github.conftest import TOKEN
from tests.github.fake_api import LIMIT, FakeGitHub
from tests.github.harness import REPO, run_action

MANIFEST = """
version: 1
environments: {prod: {}}
databases:
  shop:
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
"""
# an exec output (a secret store through a CLI) that can be read back: .stored stands for the store
EXEC_MANIFEST = MANIFEST.replace("      - dotenv: .env", "      - exec: [python3, sink.py]").replace(
    "keys: {SHOP_URL", "read: [python3, read.py]\n        keys: {SHOP_URL"
)
EXEC_SINK = "import sys, pathlib; pathlib.Path('.stored').write_text(sys.stdin.read())\n"
EXEC_READ = "import pathlib; print(pathlib.Path('.stored').read_text())\n"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def repo(root: Path, manifest: str, files: dict[str, str] | None = None) -> tuple[Path, str]:
    """A repository on ``main`` with the manifest committed: (work tree, commit)."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    commit(root, manifest, files, "base")
    return root, git(root, "rev-parse", "HEAD")


def commit(root: Path, manifest: str, files: dict[str, str] | None, message: str) -> str:
    (root / "hepinfra.yaml").write_text(textwrap.dedent(manifest))
    (root / ".gitignore").write_text(".hepinfra/\n.env\n")
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


def job_env(server: Server, gh: FakeGitHub, state_dir: Path) -> dict[str, str]:
    return {
        **ENV,
        "HEPGG_URL": server.url,
        "HEPGG_ID_URL": server.url,
        "GITHUB_REPOSITORY": "acme/infra",
        "GITHUB_API_URL": gh.url,
        "GITHUB_TOKEN_FOR_ACTION": TOKEN,
    }


def pr_event(number: int, base: str, head: str) -> dict[str, Any]:
    return {"pull_request": {"number": number, "base": {"sha": base, "ref": "main"}, "head": {"sha": head}}}


def run(
    command: str, root: Path, server: Server, gh: FakeGitHub, runner_temp: Path, event_name: str, event: dict[str, Any],
    sha: str = "", **inputs: str,
) -> Any:  # fmt: skip
    return run_action(
        inputs={"command": command, **inputs},
        event_name=event_name,
        event=event,
        workspace=root,
        runner_temp=runner_temp,
        env=job_env(server, gh, root),
        sha=sha,
    )


def plan_comments(gh: FakeGitHub, number: int) -> list[dict[str, Any]]:
    return [c for c in gh.comments.get(number, []) if "hepinfra:plan" in c["body"]]


def fingerprint_in(body: str) -> str:
    found = re.search(r"<!-- hepinfra:fingerprint (sha256:[0-9a-f]{64}) -->", body)
    assert found, body[:500]
    return found.group(1)


# --- the action file itself ------------------------------------------------------------------------


def test_inputs_reach_the_scripts_only_through_env() -> None:
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    for step in action["runs"]["steps"]:
        assert "${{" not in step["run"], step["run"]
        assert step["shell"] == "bash"
    install = (REPO / "ci" / "action-install.sh").read_text()
    assert "--require-hashes" in install and "-I" in install
    lock = (REPO / "ci" / "action-requirements.txt").read_text()
    pins = [line for line in lock.splitlines() if re.match(r"^[a-z0-9]", line)]
    assert pins and all("==" in p for p in pins)
    assert lock.count("--hash=sha256:") >= len(pins)


# --- pull requests -----------------------------------------------------------------------------------


def test_two_pushes_leave_one_comment_edited_and_never_touch_anothers(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    root, base = repo(tmp_path / "ws", MANIFEST)
    gh.add_comment(7, "<!-- hepinfra:plan hepinfra.yaml --> quoted by a human", "mallory")
    head = commit(root, MANIFEST + "  orders: {}\n", None, "add orders")
    first = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(7, base, head))
    assert first.code == 0, first.logs
    assert first.outputs["changes"] == "true"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.outputs["fingerprint"])
    mine = plan_comments(gh, 7)
    assert len(mine) == 2 and mine[0]["user"]["login"] == "mallory"
    assert "prod/databases.orders" in mine[1]["body"]
    assert fingerprint_in(mine[1]["body"]) == first.outputs["fingerprint"]

    head = commit(root, MANIFEST + "  orders: {}\n  users: {}\n", None, "add users")
    second = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(7, base, head))
    assert second.code == 0, second.logs
    after = plan_comments(gh, 7)
    assert len(after) == 2  # the same comment, edited; mallory's untouched
    assert after[0]["body"].endswith("quoted by a human")
    assert "prod/databases.users" in after[1]["body"]
    assert fingerprint_in(after[1]["body"]) == second.outputs["fingerprint"] != first.outputs["fingerprint"]
    assert [r["method"] for r in gh.requests if "/comments" in r["path"]].count("POST") == 1
    assert "prod/databases.users" in second.summaries


def test_an_error_is_written_to_the_same_comment(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    root, base = repo(tmp_path / "ws", MANIFEST)
    head = commit(root, MANIFEST + "  orders: {}\n", None, "add orders")
    ok = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(8, base, head))
    assert ok.code == 0, ok.logs
    head = commit(root, MANIFEST + "  orders: {engine: oracle}\n", None, "broken")
    bad = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(8, base, head))
    assert bad.code == 1
    assert bad.outputs["failure-reason"] == "error"
    comments = plan_comments(gh, 8)
    assert len(comments) == 1 and "hepinfra plan failed" in comments[0]["body"]
    assert "hepinfra.yaml" in comments[0]["body"]


@pytest.mark.parametrize("count", [300, 700])
def test_a_big_plan_fits_one_comment_with_its_fingerprint(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path, count: int
) -> None:
    root, base = repo(tmp_path / "ws", MANIFEST)
    many = MANIFEST + "".join(
        f"  service-with-a-long-name-{i:03d}:\n    name: a-rather-long-platform-name-for-service-{i:03d}\n"
        for i in range(count)
    )
    head = commit(root, many, None, f"{count} databases")
    result = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(9, base, head))
    assert result.code == 0, result.logs[-3000:]
    (comment,) = plan_comments(gh, 9)
    body = comment["body"]
    assert len(body) <= LIMIT
    assert fingerprint_in(body) == result.outputs["fingerprint"]
    assert "service-with-a-long-name-000" in body
    rows = [line for line in body.splitlines() if line.startswith("| `")]
    assert all(line.endswith("|") for line in rows)  # whole rows only: cut at a resource boundary
    if count == 700:  # past GitHub's limit: cut, with a notice saying how many are not shown
        assert f"**{count + 1 - len(rows)} more change(s) are not shown here**" in body
        assert 0 < len(rows) < count
    else:
        assert len(rows) == count + 1 and "not shown here" not in body
    assert all(f"service-with-a-long-name-{i:03d}" in result.summaries for i in range(count))


# --- merge ---------------------------------------------------------------------------------------------


def merge(gh: FakeGitHub, root: Path, number: int, head: str) -> str:
    """Pull request ``number`` (its last commit ``head``) merged as the checkout's HEAD."""
    sha = git(root, "rev-parse", "HEAD")
    gh.pulls_by_commit[sha] = [
        {
            "number": number,
            "merge_commit_sha": sha,
            "merged_at": "2026-12-03T00:00:00Z",
            "base": {"ref": "main"},
            "head": {"sha": head},
        }
    ]
    return sha


def test_merge_applies_the_reviewed_change_set_only(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    root, base = repo(tmp_path / "ws", MANIFEST)
    head = commit(root, MANIFEST + "  orders: {}\n", None, "add orders")
    planned = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(11, base, head))
    assert planned.code == 0, planned.logs
    sha = merge(gh, root, 11, head)
    applied = run("apply", root, server, gh, runner_temp, "push", {"after": sha, "ref": "refs/heads/main"}, sha=sha)
    assert applied.code == 0, applied.logs
    assert applied.outputs["changes"] == "true"
    posted = [c["body"] for c in gh.comments[11] if "hepinfra:apply" in c["body"]]
    assert posted and "2 succeeded, 0 failed" in posted[-1]

    # the next pull request is reviewed, then main changes before the merge: nothing is applied
    head = commit(root, MANIFEST + "  orders: {}\n  users: {}\n", None, "add users")
    planned = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(12, sha, head))
    assert planned.code == 0, planned.logs
    commit(root, MANIFEST + "  orders: {}\n  users: {}\n  audit: {}\n", None, "sneaked in before the merge")
    sha = merge(gh, root, 12, head)
    changed = run("apply", root, server, gh, runner_temp, "push", {"after": sha, "ref": "refs/heads/main"}, sha=sha)
    assert changed.code == 1
    assert changed.outputs["failure-reason"] == "plan-changed"
    note = [c["body"] for c in gh.comments[12] if "not applied, the plan changed" in c["body"]]
    assert note and "prod/databases.audit" in note[0]
    new_fp = re.findall(r"sha256:[0-9a-f]{64}", note[0])[-1]
    # a maintainer approves the new plan by hand
    dispatched = run(
        "apply", root, server, gh, runner_temp, "workflow_dispatch", {"inputs": {"fingerprint": new_fp}}, sha=sha
    )
    assert dispatched.code == 0, dispatched.logs
    assert dispatched.outputs["changes"] == "true"


def test_a_push_that_merged_no_pull_request_is_not_applied(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    root, _ = repo(tmp_path / "ws", MANIFEST)
    sha = commit(root, MANIFEST + "  orders: {}\n", None, "pushed straight to main")
    refused = run("apply", root, server, gh, runner_temp, "push", {"after": sha, "ref": "refs/heads/main"}, sha=sha)
    assert refused.code == 1 and refused.outputs["failure-reason"] == "unreviewed"
    assert not any(r["method"] in ("POST", "PATCH") for r in gh.requests)


def test_a_merge_of_a_commit_whose_plan_never_ran_is_unreviewed(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    root, base = repo(tmp_path / "ws", MANIFEST)
    first = commit(root, MANIFEST + "  orders: {}\n", None, "add orders")
    planned = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(14, base, first))
    assert planned.code == 0, planned.logs
    # a second push whose plan was cancelled (or could not comment), with the same change set
    second = commit(root, MANIFEST + "  orders: {}\n# no review of this commit\n", None, "after the plan")
    sha = merge(gh, root, 14, second)
    refused = run("apply", root, server, gh, runner_temp, "push", {"after": sha, "ref": "refs/heads/main"}, sha=sha)
    assert refused.code == 1 and refused.outputs["failure-reason"] == "unreviewed", refused.logs
    assert f"is of {first[:12]}, but #14 merged {second[:12]}" in refused.logs
    assert not any(c for c in gh.comments[14] if "hepinfra:apply" in c["body"])


def test_an_out_of_band_rotation_after_review_is_plan_changed(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    manifest, sink, read = EXEC_MANIFEST, EXEC_SINK, EXEC_READ
    root, base = repo(tmp_path / "ws", manifest, {"sink.py": sink, "read.py": read})
    first = run("apply", root, server, gh, runner_temp, "push", {"after": base}, sha=base, **{"on-unreviewed": "apply"})
    assert first.code == 0, first.logs
    head = commit(root, manifest + "  orders: {}\n", None, "add orders")
    planned = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(13, base, head))
    assert planned.code == 0, planned.logs

    async def rotate_in_the_dashboard() -> None:
        async with server.hepgg() as hub:
            (row,) = [d for d in await hub.databases().list() if d.name.startswith("shop")]
            await hub.databases().rotate(row.id)

    conftest_run(rotate_in_the_dashboard())
    sha = merge(gh, root, 13, head)
    changed = run("apply", root, server, gh, runner_temp, "push", {"after": sha, "ref": "refs/heads/main"}, sha=sha)
    assert changed.code == 1 and changed.outputs["failure-reason"] == "plan-changed", changed.logs


# --- drift ---------------------------------------------------------------------------------------------


def test_drift_opens_updates_closes_and_reopens_one_issue(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    manifest, sink, read = EXEC_MANIFEST, EXEC_SINK, EXEC_READ
    root, sha = repo(tmp_path / "ws", manifest, {"sink.py": sink, "read.py": read})
    applied = run(
        "apply",
        root,
        server,
        gh,
        runner_temp,
        "push",
        {"after": sha, "ref": "refs/heads/main"},
        sha=sha,
        **{"on-unreviewed": "apply"},
    )
    assert applied.code == 0, applied.logs
    clean = run("drift", root, server, gh, runner_temp, "schedule", {})
    assert clean.code == 0 and clean.outputs["changes"] == "false" and gh.issues == []

    (root / ".stored").write_text(json.dumps({"SHOP_URL": "postgresql://edited@example/x"}))
    opened = run("drift", root, server, gh, runner_temp, "schedule", {})
    assert opened.code == 0, opened.logs
    assert opened.outputs["changes"] == "true"
    (issue,) = gh.issues
    assert issue["state"] == "open" and "output-edited" in issue["body"]

    again = run("drift", root, server, gh, runner_temp, "schedule", {})
    assert again.code == 0 and len(gh.issues) == 1  # updated, not duplicated

    fixed = run(
        "apply",
        root,
        server,
        gh,
        runner_temp,
        "push",
        {"after": sha, "ref": "refs/heads/main"},
        sha=sha,
        **{"on-unreviewed": "apply"},
    )
    assert fixed.code == 0, fixed.logs
    closed = run("drift", root, server, gh, runner_temp, "schedule", {})
    assert closed.code == 0 and gh.issues[0]["state"] == "closed"

    (root / ".stored").unlink()
    reopened = run("drift", root, server, gh, runner_temp, "schedule", {})
    assert reopened.code == 0 and len(gh.issues) == 1 and gh.issues[0]["state"] == "open"


# --- fresh runners ---------------------------------------------------------------------------------------


def test_a_plan_on_a_fresh_runner_after_an_apply_on_main_has_no_changes(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    import pyrage

    recipient = str(pyrage.x25519.Identity.generate().to_public())
    manifest = MANIFEST + textwrap.indent(
        textwrap.dedent(
            f"""\
            - age: secrets/prod.env.age
              recipients: ["{recipient}"]
              keys: {{SHOP_URL: "{{{{ db.connection_string }}}}"}}
            - exec: [python3, sink.py]
              keys: {{SHOP_URL: "{{{{ db.connection_string }}}}"}}
            """
        ),
        "      ",
    )
    sink = "import sys, pathlib; pathlib.Path('.stored').write_text(sys.stdin.read())\n"
    root, sha = repo(tmp_path / "main-runner", manifest, {"sink.py": sink})
    applied = run(
        "apply",
        root,
        server,
        gh,
        runner_temp,
        "push",
        {"after": sha, "ref": "refs/heads/main"},
        sha=sha,
        **{"on-unreviewed": "apply"},
    )
    assert applied.code == 0, applied.logs
    assert not (root / ".env").exists()  # a local output: left out on a runner
    git(root, "add", "secrets/prod.env.age")  # the GitOps repository keeps the age file
    git(root, "commit", "-q", "-m", "age file written by the apply")
    fresh = tmp_path / "fresh-runner"
    subprocess.run(["git", "clone", "-q", str(root), str(fresh)], check=True)
    shutil.copytree(root / ".hepinfra", fresh / ".hepinfra")  # the shared state (S3/PostgreSQL in real life)
    head = commit(fresh, manifest.replace("version: 1", "version: 1  # a comment"), None, "touch")
    base = git(fresh, "rev-parse", "HEAD~1")
    plan = run("plan", fresh, server, gh, runner_temp, "pull_request", pr_event(21, base, head))
    assert plan.code == 0, plan.logs
    assert plan.outputs["changes"] == "false", plan.logs
    (comment,) = plan_comments(gh, 21)
    assert "Left out (--skip-local-outputs): dotenv, pgbouncer, template outputs" in comment["body"]


def test_a_pull_request_merged_into_another_branch_is_not_a_review_of_main(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    root, base = repo(tmp_path / "ws", MANIFEST)
    head = commit(root, MANIFEST + "  orders: {}\n", None, "add orders")
    planned = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(31, base, head))
    assert planned.code == 0, planned.logs
    sha = git(root, "rev-parse", "HEAD")
    gh.pulls_by_commit[sha] = [
        {
            "number": 31,
            "merge_commit_sha": sha,
            "merged_at": "2026-12-03T00:00:00Z",
            "base": {"ref": "feature"},
            "head": {"sha": head},
        }
    ]
    pushed = run("apply", root, server, gh, runner_temp, "push", {"after": sha, "ref": "refs/heads/main"}, sha=sha)
    assert pushed.code == 1 and pushed.outputs["failure-reason"] == "unreviewed"


def test_workflow_commands_in_a_pull_request_are_not_obeyed(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    root, base = repo(tmp_path / "ws", MANIFEST)
    head = commit(root, MANIFEST + "  orders: {}\n", None, "add orders")
    result = run("plan", root, server, gh, runner_temp, "pull_request", pr_event(32, base, head))
    assert result.code == 0, result.logs
    lines = result.logs.splitlines()
    start = [i for i, line in enumerate(lines) if line.startswith("::stop-commands::")]
    assert len(start) == 1
    token = lines[start[0]].split("::")[2]
    assert len(token) == 32 and lines.count(f"::{token}::") == 1
    assert all(not line.startswith("::") for line in lines[start[0] + 1 : lines.index(f"::{token}::")])


# --- write-back: pr (GitOps) -----------------------------------------------------------------------------


def test_write_back_opens_one_pull_request_and_its_pending_files_are_not_a_change(
    tmp_path: Path, server: Server, gh: FakeGitHub, runner_temp: Path
) -> None:
    import pyrage

    recipient = str(pyrage.x25519.Identity.generate().to_public())
    manifest = MANIFEST + textwrap.indent(
        textwrap.dedent(
            f"""\
            - age: secrets/prod.env.age
              recipients: ["{recipient}"]
              keys: {{SHOP_URL: "{{{{ db.connection_string }}}}"}}
            """
        ),
        "      ",
    )
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    root, sha = repo(tmp_path / "main-runner", manifest)
    git(root, "remote", "add", "origin", str(origin))
    git(root, "push", "-q", "origin", "main")
    applied = run(
        "apply", root, server, gh, runner_temp, "push", {"after": sha, "ref": "refs/heads/main"}, sha=sha,
        **{"on-unreviewed": "apply", "write-back": "pr"},
    )  # fmt: skip
    assert applied.code == 0, applied.logs
    (pull,) = gh.pulls
    branch = pull["head"]["ref"]
    assert branch.startswith(f"hepinfra/write-back/{sha[:12]}-") and pull["base"]["ref"] == "main"
    assert "<!-- hepinfra:write-back -->" in pull["body"]
    # the branch holds the age file and nothing else; the runner's checkout is left as it was
    changed = git(origin, "diff", "--name-only", "main", branch).split()
    assert changed == ["secrets/prod.env.age"]
    assert git(origin, "log", "-1", "--format=%an", branch) == "github-actions[bot]"
    assert git(root, "rev-parse", "HEAD") == sha and git(root, "diff", "--cached", "--name-only") == ""
    # a pull request opened with GITHUB_TOKEN starts no workflow: the apply posts its comment itself
    (own_note,) = plan_comments(gh, pull["number"])
    assert fingerprint_in(own_note["body"]) == NO_CHANGES
    assert f"<!-- hepinfra:head {git(origin, 'rev-parse', branch)} -->" in own_note["body"]

    fresh = tmp_path / "fresh-runner"
    subprocess.run(["git", "clone", "-q", str(origin), str(fresh)], check=True)
    shutil.copytree(root / ".hepinfra", fresh / ".hepinfra")  # the shared state (S3/PostgreSQL in real life)
    assert not (fresh / "secrets/prod.env.age").exists()  # main has no file yet: the write-back is pending
    head = commit(fresh, manifest.replace("version: 1", "version: 1  # a comment"), None, "touch")
    planned = run("plan", fresh, server, gh, runner_temp, "pull_request", pr_event(41, sha, head))
    assert planned.code == 0 and planned.outputs["changes"] == "false", planned.logs

    # the write-back pull request itself needs no plan: a comment with an empty change set's
    # fingerprint; one that only looks like it (another author) is planned as any other
    branch_head = git(origin, "rev-parse", branch)
    checkout = tmp_path / "write-back-runner"
    subprocess.run(["git", "clone", "-q", "-b", branch, str(origin), str(checkout)], check=True)
    shutil.copytree(root / ".hepinfra", checkout / ".hepinfra")
    event = pr_event(pull["number"], sha, branch_head)
    head_of = {"ref": branch, "sha": branch_head}
    own = {**event["pull_request"], "head": head_of, "user": {"login": gh.login}, "body": pull["body"]}
    skipped = run("plan", checkout, server, gh, runner_temp, "pull_request", {"pull_request": own})
    assert skipped.code == 0 and skipped.outputs["changes"] == "false", skipped.logs
    (note,) = plan_comments(gh, pull["number"])
    assert "no plan needed" in note["body"] and fingerprint_in(note["body"]) == NO_CHANGES
    forged = {**own, "number": 42, "user": {"login": "mallory"}}
    planned_forged = run("plan", checkout, server, gh, runner_temp, "pull_request", {"pull_request": forged})
    assert planned_forged.code == 0 and len(plan_comments(gh, 42)) == 1
    assert "no plan needed" not in plan_comments(gh, 42)[0]["body"]

    # merging it applies an empty change set; afterwards main holds the file and plans stay clean
    git(origin, "update-ref", "refs/heads/main", branch)  # merged (fast-forward)
    fresh = tmp_path / "runner-after-merge"
    subprocess.run(["git", "clone", "-q", str(origin), str(fresh)], check=True)
    shutil.copytree(root / ".hepinfra", fresh / ".hepinfra")
    merged = git(fresh, "rev-parse", "HEAD")
    gh.pulls_by_commit[merged] = [
        {**pull, "head": head_of, "merge_commit_sha": merged, "merged_at": "2026-12-03T00:00:00Z"}
    ]
    after = run(
        "apply", fresh, server, gh, runner_temp, "push", {"after": merged, "ref": "refs/heads/main"}, sha=merged
    )
    assert after.code == 0 and after.outputs["changes"] == "false", after.logs
    assert len(gh.pulls) == 1  # nothing new to write back
    head2 = commit(fresh, manifest.replace("version: 1", "version: 1  # again"), None, "touch again")
    clean = run("plan", fresh, server, gh, runner_temp, "pull_request", pr_event(43, merged, head2))
    assert clean.code == 0 and clean.outputs["changes"] == "false", clean.logs

    # a pull request that edits the committed file is a change (a pending write-back is only the old file)
    (fresh / "secrets/prod.env.age").write_bytes(b"age-encryption.org/v1\n-> edited\n")
    head3 = commit(fresh, manifest, None, "edit the age file")
    edited = run("plan", fresh, server, gh, runner_temp, "pull_request", pr_event(44, head2, head3))
    assert edited.code == 0 and edited.outputs["changes"] == "true", edited.logs
