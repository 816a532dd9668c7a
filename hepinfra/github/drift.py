"""``hepinfra github drift``: a refreshing plan per environment, ONE issue per environment and
manifest that lists what drifted (updated, never duplicated), closed when clean, reopened on new
drift; and ``classify``, which sorts a plan's findings into kinds of drift.

Owns: drift classes and the drift issue's body. Must not: change anything on hep.gg (a plan only).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hepinfra.errors import HepinfraError
from hepinfra.github.api import COMMENT_LIMIT, GitHub
from hepinfra.github.jobs import Job, _plan, fit, set_output, step_summary
from hepinfra.safety.redact import redact
from hepinfra.values import Action, Plan

# drift class -> what a reader is told
CLASSES = {
    "password-changed-outside": "the value on hep.gg is not the one the outputs hold (rotated outside hepinfra?)",
    "output-edited": "an output was edited since hepinfra wrote it",
    "output-missing": "an output hepinfra wrote is missing",
    "rotation-overdue": "a rotation is due",
    "undeclared-database": "a database on the account is not declared",
    "database-deleted": "a managed database no longer exists on hep.gg",
    "not-created": "a declared resource does not exist yet",
    "write-back-pending": "a committed output the last apply wrote is not merged into the repository yet",
    "other": "another difference",
}


def _output_class(reason: str) -> str:
    if reason.startswith("holds an old"):
        return "password-changed-outside"
    if reason == "missing":
        return "output-missing"
    if reason.endswith("since it was written"):
        return "output-edited"
    return "other"


def classify(plan: Plan) -> list[tuple[str, str, str]]:
    """(class, where, detail) for each drift the plan found, sorted."""
    found: list[tuple[str, str, str]] = []
    for change in plan.actionable:
        for output in change.outputs:
            if change.action is Action.RENDER:
                found.append((_output_class(output.reason), change.address, f"{output.path}: {output.reason}"))
        for reason in change.reasons:
            if reason.startswith("due:"):
                found.append(("rotation-overdue", change.address, reason))
            elif "no longer exists on hep.gg" in reason:
                found.append(("database-deleted", change.address, reason))
            elif reason in ("not on hep.gg yet", "not minted yet") or reason.endswith("is not uploaded yet"):
                found.append(("not-created", change.address, reason))
        if change.action is not Action.RENDER and not any(f[1] == change.address for f in found):
            found.append(("other", change.address, f"{change.action.value}: {'; '.join(change.reasons)}"))
    for diag in plan.diagnostics:
        if ": pending write-back: " in diag.message:
            found.append(("write-back-pending", diag.address or diag.env or "", diag.message))
        elif "are not managed" in diag.message:
            found.append(("undeclared-database", diag.env or "", diag.message))
        elif diag.severity == "error":
            found.append(("other", diag.address or diag.env or "", diag.message))
    return sorted(set(found))


def issue_body(job: Job, env: str, drift: list[tuple[str, str, str]], now: datetime) -> str:
    lines = [
        job.drift_marker(env),
        f"### hepinfra drift in `{env}` ({len(drift)} finding(s))",
        "",
        f"Found by a refreshing plan of `{job.manifest}` at {now:%Y-%m-%d %H:%M} UTC. This issue is updated by each "
        "scheduled run and closed when a run finds no drift.",
        "",
        "| kind | resource | detail |",
        "|---|---|---|",
    ]
    for kind, where, detail in drift:
        lines.append(f"| `{kind}` | `{where}` | {detail.replace('|', '/')} |")
    lines += ["", "Kinds: " + "; ".join(f"`{k}`: {v}" for k, v in CLASSES.items() if any(d[0] == k for d in drift))]
    return fit("\n".join(lines), COMMENT_LIMIT - 1_000) + "\n"


def _issue(gh: GitHub, marker: str) -> dict[str, Any] | None:
    me = gh.login()
    for issue in gh.issues(me):
        if (issue.get("user") or {}).get("login") == me and marker in str(issue.get("body") or ""):
            return issue
    return None


def drift_job(job: Job, gh: GitHub, log: Callable[[str], None]) -> int:
    from hepinfra import runner

    envs = list(job.envs) or runner.Project.open(job.manifest).manifest.environments
    now = datetime.now(UTC)
    any_drift = failed = False
    summary = ["### hepinfra drift", ""]
    for env in envs:
        marker = job.drift_marker(env)
        try:
            plan = _plan(job, base=None, envs=[env])
        except HepinfraError as exc:
            failed = True
            log(f"Error: {env}: {exc}")
            summary.append(f"- `{env}`: the plan failed: {redact(str(exc))}")
            continue
        drift = classify(plan)
        existing = _issue(gh, marker)
        if drift:
            any_drift = True
            body = issue_body(job, env, drift, now)
            if existing is None:
                gh.create_issue(f"hepinfra: drift in {env}", body, ["hepinfra-drift"])
                log(f"{env}: {len(drift)} drift finding(s); opened an issue")
            else:
                gh.update_issue(existing["number"], body=body, state="open")
                log(f"{env}: {len(drift)} drift finding(s); updated issue #{existing['number']}")
            summary.append(f"- `{env}`: {len(drift)} finding(s): " + ", ".join(sorted({d[0] for d in drift})))
        else:
            if existing is not None and existing.get("state") == "open":
                gh.update_issue(
                    existing["number"],
                    state="closed",
                    body=f"{marker}\n### hepinfra drift in `{env}`: none\n\nNo drift at {now:%Y-%m-%d %H:%M} UTC.\n",
                )
                log(f"{env}: no drift; closed issue #{existing['number']}")
            else:
                log(f"{env}: no drift")
            summary.append(f"- `{env}`: no drift")
    step_summary("\n".join(summary) + "\n")
    set_output("changes", "true" if any_drift else "false")
    if failed:
        set_output("failure-reason", "error")
        return 1
    return 0
