"""What ``hepinfra github plan|apply|drift`` do in a GitHub Actions job.

* ``plan`` (pull_request, pull_request_target): plan with ``--base`` on the pull request's base
  commit (the trust boundary), then create or update ONE comment per pull request and manifest,
  found by a hidden marker and by its author (the token's identity); the whole plan goes to the
  step summary; ``changes`` and ``fingerprint`` go to ``$GITHUB_OUTPUT``. An error is written to the
  same comment.
* ``apply`` (push to the default branch): find the pull request this commit merged, read the
  fingerprint from hepinfra's comment on it, and apply only that change set (``plan-changed``
  otherwise, applying nothing); ``workflow_dispatch`` applies a fingerprint a maintainer gives.
  The result is posted to the merged pull request.
* ``drift`` (schedule): a refreshing plan per environment; ONE issue per environment and manifest
  (marker in its body) lists what drifted, is updated, closed when clean, reopened on new drift.

Owns: events, markers, comment and issue bodies. Plans and applies go through ``runner``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hepinfra.errors import HepinfraError, PlanChangedError, UsageError
from hepinfra.github.api import COMMENT_LIMIT, GitHub
from hepinfra.safety.redact import redact
from hepinfra.values import Plan

_FINGERPRINT = re.compile(r"<!-- hepinfra:fingerprint (sha256:[0-9a-f]{64}) -->")
_HEAD = re.compile(r"<!-- hepinfra:head ([0-9a-f]{40}(?:[0-9a-f]{24})?) -->")
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
RESERVE = 2_000  # characters kept free in a comment for the markers, heading and the cut notice


@dataclass
class Job:
    """The job's inputs, as the action passes them (environment variables, never arguments)."""

    manifest: str
    envs: tuple[str, ...]
    comment: str  # update | new | off
    on_unreviewed: str  # fail | apply
    skip_local: bool
    write_back: str  # off | pr
    event_name: str
    event: dict[str, Any]
    sha: str

    @classmethod
    def from_env(
        cls, manifest: str, envs: Sequence[str], comment: str, on_unreviewed: str, skip_local: bool, write_back: str
    ) -> Job:
        name = os.environ.get("GITHUB_EVENT_NAME", "")
        path = os.environ.get("GITHUB_EVENT_PATH", "")
        event: dict[str, Any] = {}
        if path:
            try:
                loaded = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UsageError(f"GITHUB_EVENT_PATH: cannot read the event ({type(exc).__name__})") from None
            if not isinstance(loaded, dict):
                raise UsageError("GITHUB_EVENT_PATH: the event is not a JSON object")
            event = loaded
        sha = os.environ.get("GITHUB_SHA", "")
        return cls(manifest, tuple(envs), comment, on_unreviewed, skip_local, write_back, name, event, sha)

    @property
    def branch(self) -> str | None:
        """The branch pushed (push) or run on (workflow_dispatch), or None."""
        ref = str(self.event.get("ref") or os.environ.get("GITHUB_REF", ""))
        return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None

    @property
    def marker(self) -> str:
        return f"<!-- hepinfra:plan {_marker_text(self.manifest)} -->"

    def drift_marker(self, env: str) -> str:
        return f"<!-- hepinfra:drift {_marker_text(self.manifest)} env={_marker_text(env)} -->"


def _marker_text(text: str) -> str:
    """A manifest path or environment as it may stand inside an HTML comment (no ``--`` or ``>``)."""
    return re.sub(r"[^A-Za-z0-9_./@+=:-]|-(?=-)", "_", text)[:200]


# --- job files (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY) -------------------------------------------------


def _append(variable: str, text: str) -> None:
    path = os.environ.get(variable, "")
    if not path:
        return
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise UsageError(f"{variable}: cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(text)


def set_output(name: str, value: str) -> None:
    """One job output (``name=value``; values here are single-line and never secret)."""
    _append("GITHUB_OUTPUT", f"{name}={' '.join(value.split())}\n")


def step_summary(markdown: str) -> None:
    _append("GITHUB_STEP_SUMMARY", markdown if markdown.endswith("\n") else markdown + "\n")


# --- comment bodies ----------------------------------------------------------------------------------


def fit(markdown: str, budget: int) -> str:
    """``markdown`` cut to ``budget`` characters at a resource boundary (whole table rows dropped
    from the end, then whole lines), with a notice saying how many resources are not shown."""
    if len(markdown) <= budget:
        return markdown
    lines = markdown.split("\n")
    rows = [i for i, line in enumerate(lines) if line.startswith("| `")]
    dropped: set[int] = set()
    total = len(markdown)
    notice = (
        "\n> :scissors: **{n} more change(s) are not shown here** (GitHub limits a comment to 65,536 characters). "
        "The whole plan is in this job's summary."
    )
    while rows and total + len(notice) + 10 > budget:
        i = rows.pop()
        dropped.add(i)
        total -= len(lines[i]) + 1
    kept = [line for i, line in enumerate(lines) if i not in dropped]
    if dropped:
        last_row = max((k for k, line in enumerate(kept) if line.startswith("| `")), default=-1)
        where = last_row + 1 if last_row >= 0 else len(kept)
        kept.insert(where, notice.format(n=len(dropped)))
    text = "\n".join(kept)
    if len(text) > budget:  # no table left to cut (a huge review or diagnostics): whole lines
        cut = text.rfind("\n", 0, budget - 200)
        text = text[: max(cut, 0)] + "\n\n> :scissors: **Cut here** (GitHub's comment limit); see this job's summary.\n"
    return text


def plan_comment(job: Job, plan: Plan, fingerprint: str, markdown: str, head_sha: str) -> str:
    head = [
        job.marker,
        f"<!-- hepinfra:fingerprint {fingerprint} -->",
        f"<!-- hepinfra:head {head_sha} -->",  # the pull request's commit this plan is of
    ]
    tail = [
        "",
        f"<sub>Manifest `{job.manifest}` · fingerprint `{fingerprint[:19]}…` · merging applies exactly this "
        "change set; if the plan differs at merge, nothing is applied.</sub>",
    ]
    budget = COMMENT_LIMIT - sum(len(x) + 1 for x in (*head, *tail)) - RESERVE
    return "\n".join([*head, fit(markdown, budget), *tail]) + "\n"


def error_comment(marker: str, what: str, exc: BaseException) -> str:
    text = redact(str(exc))[:4000]
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))  # never closed early
    return f"{marker}\n### hepinfra {what} failed\n\n{fence}\n{text}\n{fence}\n"


def _header(body: str) -> str:
    """The lines where hepinfra puts its markers (a comment's first four): markers quoted further
    down (an error message, a plan's text) are never read."""
    return "\n".join(body.split("\n", 4)[:4])


def upsert_comment(gh: GitHub, number: int, marker: str, body: str, mode: str) -> None:
    """``GitHub.upsert_comment`` (ONE comment per pull request and marker, by this token's identity)."""
    gh.upsert_comment(number, marker, body, mode)


def reviewed_fingerprint(gh: GitHub, number: int, marker: str, head: str) -> tuple[str | None, str | None]:
    """The fingerprint of hepinfra's plan comment on pull request ``number`` (by this token's identity,
    markers read from its header only) that was planned at ``head`` (the latest such, for
    ``comment: new``), and the commit of the latest plan comment (to say which commit it was of)."""
    me = gh.login()
    found: str | None = None
    latest: str | None = None
    for comment in gh.comments(number):
        header = _header(str(comment.get("body") or ""))
        if (comment.get("user") or {}).get("login") != me or not header.startswith(marker):
            continue
        match, planned = _FINGERPRINT.search(header), _HEAD.search(header)
        latest = planned.group(1) if planned else None
        if match and latest == head:
            found = match.group(1)
    return (found, head) if found else (None, latest)


# --- plan ----------------------------------------------------------------------------------------


def _plan(job: Job, *, base: str | None, envs: Sequence[str] | None = None) -> Plan:
    from hepinfra import runner
    from hepinfra.cli.options import run_async, skipped

    project = runner.Project.open(job.manifest, base_ref=base, skip_outputs=skipped(job.skip_local))
    selected = runner.select_environments(project.manifest, envs if envs is not None else job.envs)

    async def go() -> Any:
        async with project.hepgg() as hub:
            return await runner.make(
                project, hub, selected, refresh=True, rotate=runner.parse_rotate(project.manifest, selected, ())
            )

    result, _, _ = run_async(go())
    plan: Plan = result
    return plan


def ensure_commit(sha: str) -> None:
    """The base commit of a pull request, fetched if a shallow checkout lacks it."""
    git = ["git", "-c", "safe.bareRepository=explicit", "-c", "core.fsmonitor=false"]
    if subprocess.run([*git, "cat-file", "-e", f"{sha}^{{commit}}"], capture_output=True, timeout=60).returncode == 0:
        return
    fetched = subprocess.run(
        [*git, "fetch", "--no-tags", "--no-recurse-submodules", "--depth=1", "origin", sha],
        capture_output=True,
        timeout=300,
    )
    if fetched.returncode != 0:
        raise UsageError(f"the pull request's base commit {sha[:12]} is not in the checkout and cannot be fetched")


def plan_job(job: Job, gh: GitHub, log: Callable[[str], None]) -> int:
    from hepinfra import render
    from hepinfra.changeset import fingerprint

    pr = job.event.get("pull_request")
    if not isinstance(pr, dict) or type(pr.get("number")) is not int or not isinstance(pr.get("base"), dict):
        raise UsageError(f"hepinfra github plan runs on pull_request events, not {job.event_name or 'this event'}")
    number = pr["number"]
    base = str((pr.get("base") or {}).get("sha") or "")
    if not _SHA.match(base):
        raise UsageError("the pull_request event has no base commit SHA")
    head_sha = str((pr.get("head") or {}).get("sha") or "") if isinstance(pr.get("head"), dict) else ""
    if not _SHA.match(head_sha):
        raise UsageError("the pull_request event has no head commit SHA")
    from hepinfra.github.writeback import is_write_back, write_back_comment

    try:
        ensure_commit(base)
        if is_write_back(pr, gh.login()):
            body = write_back_comment(job, base, head_sha, log)
            if body is not None:  # only committed outputs changed: no plan; merging applies an empty change set
                set_output("changes", "false")
                upsert_comment(gh, number, job.marker, body, job.comment)
                return 0
        plan = _plan(job, base=base)
    except HepinfraError as exc:
        step_summary(f"### hepinfra plan failed\n\n{redact(str(exc))}\n")
        set_output("failure-reason", "error")
        log(f"Error: {exc}")
        upsert_comment(gh, number, job.marker, error_comment(job.marker, "plan", exc), job.comment)
        return 1
    fp = fingerprint(plan)
    markdown = render.markdown(plan)
    step_summary(markdown + f"\nFingerprint: `{fp}`\n")
    set_output("changes", "true" if plan.has_changes else "false")
    set_output("fingerprint", fp)
    log(render.text(plan, colour=False))
    log(f"Fingerprint: {fp}")
    upsert_comment(gh, number, job.marker, plan_comment(job, plan, fp, markdown, head_sha), job.comment)
    if plan.errors:
        set_output("failure-reason", "plan-errors")
        return 1
    return 0


# --- apply ---------------------------------------------------------------------------------------


def merged_pull(gh: GitHub, sha: str, branch: str | None) -> dict[str, Any] | None:
    """The pull request whose merge commit is ``sha`` (a push of a merge) into ``branch`` (the pushed
    branch: a pull request reviewed for another branch does not count), or None."""
    for pull in gh.pulls_of_commit(sha):
        raw = pull.get("base")
        base: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if (
            pull.get("merge_commit_sha") == sha
            and pull.get("merged_at")
            and type(pull.get("number")) is int
            and (branch is None or base.get("ref") == branch)
        ):
            return pull
    return None


def apply_job(job: Job, gh: GitHub, log: Callable[[str], None]) -> int:
    expected: str | None
    number: int | None = None
    why = ""
    if job.event_name == "workflow_dispatch":
        inputs = job.event.get("inputs")
        inputs = inputs if isinstance(inputs, dict) else {}
        expected = str(inputs.get("fingerprint") or "").strip()
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", expected):
            raise UsageError("workflow_dispatch needs the input 'fingerprint' (sha256:… from a plan you approve)")
        raw_number = str(inputs.get("pull-request") or "").strip()
        number = int(raw_number) if raw_number.isdigit() else None
    else:
        sha = str(job.event.get("after") or job.sha)
        pull = merged_pull(gh, sha, job.branch) if _SHA.match(sha) else None
        expected = None
        if pull is not None:
            number = pull["number"]
            merged_head = str(pull["head"].get("sha") or "") if isinstance(pull.get("head"), dict) else ""
            expected, planned_at = reviewed_fingerprint(gh, pull["number"], job.marker, merged_head)
            if expected is None and planned_at is not None:
                # the last plan shown is of another commit (a push whose plan did not run or could not comment)
                why = f"the plan on #{number} is of {planned_at[:12]}, but #{number} merged {merged_head[:12]}"
        if expected is None:
            why = why or (
                f"pull request #{number} has no hepinfra plan comment"
                if number is not None
                else f"commit {sha[:12]} merged no pull request"
            )
            if job.on_unreviewed != "apply":
                set_output("failure-reason", "unreviewed")
                log(f"Error: unreviewed: {why}; nothing was applied (on-unreviewed: fail)")
                return 1
            log(f"Warning: unreviewed: {why}; applying the plan made now (on-unreviewed: apply)")
    return _apply(job, gh, expected, number, log)


def _apply(job: Job, gh: GitHub, expected: str | None, number: int | None, log: Callable[[str], None]) -> int:
    from hepinfra import render, runner
    from hepinfra.changeset import fingerprint
    from hepinfra.cli.options import run_async, skipped
    from hepinfra.cli.plan_apply import EventPrinter

    planned: list[Plan] = []
    printer = EventPrinter(False)
    marker = job.marker.replace("hepinfra:plan", "hepinfra:apply")
    try:
        project = runner.Project.open(job.manifest, skip_outputs=skipped(job.skip_local))
        selected = runner.select_environments(project.manifest, job.envs)
        before = project.states(selected) if job.write_back == "pr" else {}  # its committed outputs, to remove
        options = runner.ApplyOptions(envs=job.envs, expect_fingerprint=expected, write_back=job.write_back == "pr")
        printer.start(0)
        try:
            _, result = run_async(
                runner.apply(project, options, show_plan=planned.append, confirm=lambda _: True, emit=printer)
            )
        finally:
            printer.stop()
    except PlanChangedError as exc:
        set_output("failure-reason", "plan-changed")
        log(f"Error: {exc}")
        if number is not None and planned:
            now = planned[-1]
            body = (
                f"{marker}\n### hepinfra: not applied, the plan changed since it was reviewed\n\n"
                f"Reviewed fingerprint `{expected}`; the plan made at merge has `{fingerprint(now)}`. "
                "Nothing was applied. The plan now:\n\n"
                f"{fit(render.markdown(now), COMMENT_LIMIT - 4_000)}\n"
                "To apply it, review it and run this workflow by hand (workflow_dispatch) with the fingerprint "
                f"`{fingerprint(now)}`.\n"
            )
            gh.create_comment(number, body)
        return 1
    except HepinfraError as exc:
        set_output("failure-reason", "error")
        log(f"Error: {exc}")
        if number is not None:
            gh.create_comment(number, error_comment(marker, "apply", exc))
        return 1
    if result is None:
        set_output("changes", "false")
        log("No changes to apply.")
        if number is not None:
            gh.create_comment(number, f"{marker}\n### hepinfra apply: no changes\n")
        return 0
    set_output("changes", "true")
    lines = [f"{marker}", f"### hepinfra apply: {len(result.succeeded)} succeeded, {len(result.failed)} failed", ""]
    written_back = _write_back(job, gh, project, before, log) if job.write_back == "pr" else []
    lines += written_back
    for outcome in result.succeeded:
        lines.append(f"- :white_check_mark: `{outcome.address}` {outcome.action}")
    for outcome in result.failed:
        lines.append(f"- :x: `{outcome.address}` {outcome.action}: {redact(outcome.message)}")
    body = fit("\n".join(lines), COMMENT_LIMIT - 500) + "\n"
    step_summary(body.split("\n", 1)[1])
    if number is not None:
        gh.create_comment(number, body)
    if result.failed:
        set_output("failure-reason", "apply-failed")
        return 1
    if any(line.startswith("- :x:") for line in written_back):
        set_output("failure-reason", "write-back-failed")
        return 1
    return 0


def _write_back(job: Job, gh: GitHub, project: Any, before: dict[str, Any], log: Callable[[str], None]) -> list[str]:
    """Open the write-back pull request of what this apply wrote to committed outputs; the lines the
    result comment gains. A failure here is reported, never hidden: the files are on this runner only."""
    from hepinfra import runner
    from hepinfra.github.writeback import open_write_back

    if job.branch is None:
        return ["- :warning: write-back: the branch run on is unknown (GITHUB_REF); nothing was written back"]
    try:
        envs = runner.select_environments(project.manifest, job.envs)
        number = open_write_back(
            gh, project.manifest, envs, base=job.branch, sha=job.sha, log=log, states=before,
            marker=job.marker, manifest_name=job.manifest,
        )  # fmt: skip
    except (HepinfraError, OSError, subprocess.SubprocessError) as exc:
        log(f"Error: {redact(str(exc))}")
        from hepinfra.github.writeback import forget_pending

        try:  # the files exist on this runner only: the next plan must see them as a change, not as pending
            forget_pending(project, runner.select_environments(project.manifest, job.envs))
            retry = "the next apply writes them again"
        except HepinfraError as again:
            retry = f"and state could not be told ({redact(str(again))[:200]}): re-render them with apply"
        log(f"Error: the write-back failed; {retry}")
        return [f"- :x: {redact(str(exc))}; {retry}"]
    return [f"- :arrows_counterclockwise: write-back: #{number}"] if number is not None else []
