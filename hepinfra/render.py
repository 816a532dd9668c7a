"""Plan -> text (terminal, Terraform's spirit), JSON (versioned, docs/plan-json.md), Markdown (PR comment).

Owns: presentation only, one renderer per Action. A plan holds no secret, so neither can
anything rendered from it. Must not: import rich or anything heavy (plan output is on the
start-up path of every CI run).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hepinfra.values import Action, Change, Diagnostic, Plan

COLOURS = {
    Action.CREATE: "green",
    Action.ADOPT: "cyan",
    Action.ROTATE: "yellow",
    Action.RENDER: "blue",
    Action.FORGET: "red",
    Action.MOVE: "magenta",
    Action.NOOP: "white",
}

Style = Callable[..., str]


def _plain(text: str, **_: Any) -> str:
    return text


def skipped_line(plan: Plan) -> str:
    """What ``--skip-local-outputs`` left out: a reviewer must know those files are not written."""
    kinds = ", ".join(plan.skipped_outputs)
    return f"Left out (--skip-local-outputs): {kinds} outputs are neither read nor written by this run."


def partial_line(plan: Plan) -> str:
    """What ``--target`` left out: a reviewer must know the plan is not the whole manifest."""
    from hepinfra.values import clip

    given = " ".join(f"--target {clip(t)}" for t in plan.targets)
    return f"Partial plan: {given}; {plan.left_out} resource(s) left out."


def held_lines(plan: Plan) -> list[str]:
    """Due rotations this plan does not make, each with what it waits for (``Change.held``), and what
    ``--max-rotations`` capped."""
    held = [c for c in plan.changes if c.held is not None]
    lines = [f"{c.address}: {c.held.message}" for c in held if c.held is not None]
    if plan.max_rotations is not None:
        capped = sum(1 for c in held if c.held is not None and c.held.reason == "max-rotations")
        lines.append(f"--max-rotations {plan.max_rotations}: {capped} due rotation(s) left for a later run")
    return lines


def summary_line(plan: Plan) -> str:
    c = plan.counts()
    return (
        f"Plan: {c['create']} to create, {c['adopt']} to adopt, {c['rotate']} to rotate, "
        f"{c['render']} to render, {c['forget']} to forget{f', {moved} to move' if (moved := c['move']) else ''}."
    )


def _headline(change: Change) -> str:
    from hepinfra.kinds import KINDS

    if change.action is Action.MOVE:  # any kind: a rename in state, as Terraform's "has moved to"
        return f"{change.address} has moved to {change.moved_to}"
    return f"{change.address} {KINDS[change.kind].headline(change)}"


def text(plan: Plan, *, colour: bool = False, show_noop: bool = False) -> str:
    import click

    style: Style = click.style if colour else _plain
    lines: list[str] = []
    envs = ", ".join(plan.environments) or "none"
    lines.append(
        style(
            f"hepinfra plan for {plan.manifest} (environments: {envs}; "
            f"{'refreshed' if plan.refreshed else 'not refreshed: --no-refresh'})",
            bold=True,
        )
    )
    if plan.skipped_outputs:
        lines.append(skipped_line(plan))
    if plan.targets:
        lines.append(style(partial_line(plan), fg="yellow"))
    lines.append("")
    shown = [c for c in plan.changes if show_noop or c.action is not Action.NOOP]
    for change in shown:
        colour_name = COLOURS[change.action]
        lines.append(style(f"  {change.action.symbol:>2} ", fg=colour_name, bold=True) + _headline(change))
        for reason in change.reasons:
            lines.append(f"       {reason}")
        for path in written(change):
            lines.append(style(f"       > {path}", dim=True))
        for path in change.retire:
            lines.append(style(f"       - {retire_line(change, path)}", dim=True))
    if not plan.actionable and not plan.errors:
        lines.append(style("  No changes. hep.gg and the outputs match the manifest.", fg="green"))
    unchanged = len(plan.changes) - len(plan.actionable)
    if unchanged and not show_noop and plan.actionable:
        lines.append(style(f"  ({unchanged} up to date)", dim=True))
    if held := held_lines(plan):
        lines += ["", style("  Rotations held:", fg="yellow", bold=True), *(f"    {line}" for line in held)]
    lines.append("")
    if plan.base is not None:
        lines += review_lines(plan, style)
    for diag in plan.warnings:  # errors go to stderr (``error_lines``)
        lines.append(_diagnostic(diag, style))
    lines.append(style(summary_line(plan), bold=True))
    return "\n".join(lines) + "\n"


def review_lines(plan: Plan, style: Style) -> list[str]:
    """``plan --base``: what the change would run or send where at apply, against the base."""
    if not plan.review:
        return [style(f"Review (against {plan.base}): nothing changes what runs or where values go.", dim=True), ""]
    lines = [style(f"Review (against {plan.base}): what this change runs or sends where at apply", bold=True)]
    lines += [style("  ! ", fg="yellow", bold=True) + f"{item.where}: {item.what}" for item in plan.review]
    return [*lines, ""]


def retire_line(change: Change, path: str) -> str:
    """What apply does with an output no longer declared: deletes hepinfra's part, or leaves it (listed)."""
    from hepinfra.safety.paths import shown

    why = change.retire_left.get(path)
    if why is None:
        return f"{shown(path, 200)}: will be deleted (hepinfra's keys or file, if unchanged since written)"
    return f"{shown(path, 200)}: will be left (listed only): it {why}; remove it yourself if it is no longer used"


def error_lines(plan: Plan) -> list[str]:
    """One line per blocking error, for stderr: where, what, and the fix."""
    out = []
    for diag in plan.errors:
        where = diag.address or diag.env
        line = f"{where + ': ' if where else ''}{diag.message}"
        out.append(line + (f" (hint: {diag.hint})" if diag.hint else ""))
    return out


def _diagnostic(diag: Diagnostic, style: Style) -> str:
    label = (
        style("Error:", fg="red", bold=True) if diag.severity == "error" else style("Warning:", fg="yellow", bold=True)
    )
    where = diag.address or diag.env
    line = f"{label} {where + ': ' if where else ''}{diag.message}"
    if diag.hint:
        line += f"\n  hint: {diag.hint}"
    return line


def _change_document(change: dict[str, Any]) -> dict[str, Any]:
    """A change as the JSON document shows it: only the fields its kind has (``Kind.engine_field``:
    a database's ``engine``, an id's ``type``, nothing for an upload; ``database_id`` for databases)."""
    from hepinfra.kinds import KINDS

    kind = KINDS.get(change["kind"])
    if kind is None:
        return change
    engine = change.pop("engine")
    if kind.engine_field is not None:
        change[kind.engine_field] = engine
    if not kind.needs_database_key:
        change.pop("database_id", None)
    return change


def document(plan: Plan) -> dict[str, Any]:
    data = plan.model_dump(mode="json")
    from hepinfra.changeset import fingerprint

    data["changes"] = [_change_document(c) for c in data["changes"]]
    data.update(
        summary=plan.counts(),
        has_changes=plan.has_changes,
        has_errors=bool(plan.errors),
        fingerprint=fingerprint(plan),
    )
    return data


def json_text(plan: Plan) -> str:
    return json.dumps(document(plan), indent=2, sort_keys=True) + "\n"


def json_schema() -> dict[str, Any]:
    """The JSON document's schema: the Plan plus the derived summary fields."""
    schema = Plan.model_json_schema()
    change = schema["$defs"]["Change"]  # a kind's own fields only: a database's engine, an id's type
    change["required"] = [f for f in change["required"] if f != "engine"]
    change["properties"]["engine"]["description"] = "a database's engine (databases only)"
    change["properties"]["database_id"]["description"] = "a database's id on hep.gg (databases only)"
    change["properties"]["type"] = {"type": "string", "title": "Type", "description": "an id's type (ids only)"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "hepinfra plan"
    schema["properties"].update(
        summary={
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 0},
            "required": [a.value for a in Action],
        },
        has_changes={"type": "boolean"},
        has_errors={"type": "boolean"},
        fingerprint={"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
    )
    schema["required"] = sorted(
        {
            *schema.get("required", []),
            "summary",
            "has_changes",
            "has_errors",
            "fingerprint",
            "format_version",
            "hepinfra_version",
            "changes",
            "diagnostics",
            "environments",
        }
    )
    return schema


def _md_escape(value: str) -> str:
    """Text inside a code span of a table cell: one line (control, format and line-separator
    characters escaped: a line break would end the span and forge rows), no ``|`` or backtick."""
    from hepinfra.safety.paths import shown

    return shown(value, 100_000).replace("|", "\\|").replace("`", "'")


def _md_text(value: str) -> str:
    """Text outside a code span: as ``_md_escape``, and no HTML (``<!--`` would hide the rest)."""
    return _md_escape(value).replace("<", "&lt;").replace(">", "&gt;")


def _md_moved(change: Change) -> str:
    return f" ~> `{_md_escape(change.moved_to)}`" if change.moved_to else ""


def written(change: Change) -> list[str]:
    """The outputs a change writes, as the text plan lists them (``> PATH``): a create's, an adopt's
    and a rotation's (a render names its outputs in its reasons)."""
    if change.action in (Action.CREATE, Action.ADOPT, Action.ROTATE):
        return [out.path for out in change.outputs]
    return []


def _md_outputs(change: Change) -> str:
    return ", ".join(f"`{_md_escape(path)}`" for path in written(change))


def markdown(plan: Plan) -> str:
    lines = [f"### hepinfra plan: {summary_line(plan)[6:]}"]
    if plan.errors:
        lines.append(f"\n**{len(plan.errors)} error(s) block apply.**")
    lines.append(
        f"\nManifest `{_md_escape(plan.manifest)}`, environments: "
        f"{', '.join(f'`{e}`' for e in plan.environments) or 'none'}"
        f"{'' if plan.refreshed else ' (not refreshed)'}.\n"
    )
    if plan.skipped_outputs:
        lines.append(f"_{skipped_line(plan)}_\n")
    if plan.targets:
        given = " ".join(f"`--target {_md_escape(t)}`" for t in plan.targets)
        lines.append(f"**Partial plan:** {given}; {plan.left_out} resource(s) left out.\n")
    if plan.actionable:
        lines.append("| | address | action | outputs | why |")
        lines.append("|---|---|---|---|---|")
        for change in plan.actionable:
            why = "; ".join([*change.reasons, *(retire_line(change, p) for p in change.retire)]) or ""
            lines.append(
                f"| `{change.action.symbol.strip() or '='}` | `{_md_escape(change.address)}`{_md_moved(change)} | "
                f"{change.action.value} | {_md_outputs(change)} | {_md_text(why)} |"
            )
    elif not plan.errors:
        lines.append("No changes: hep.gg and the outputs match the manifest.")
    if held := held_lines(plan):
        lines += ["", "**Rotations held:**", "", *(f"- {_md_text(line)}" for line in held)]
    if plan.base is not None:
        lines.append(
            f"\n#### Review against `{_md_escape(plan.base)}`: what this change runs or sends where at apply\n"
        )
        for item in plan.review:
            lines.append(f"- :warning: `{_md_escape(item.where)}`: `{_md_escape(item.what)}`")
        if not plan.review:
            lines.append("Nothing changes what runs or where values go.")
    if plan.diagnostics:
        lines.append("")
        for diag in plan.diagnostics:
            icon = ":x:" if diag.severity == "error" else ":warning:"
            where = diag.address or diag.env or ""
            hint = f" _({_md_text(diag.hint)})_" if diag.hint else ""
            lines.append(f"- {icon} **{diag.severity}** `{_md_escape(where)}`: {_md_text(diag.message)}{hint}")
    return "\n".join(lines) + "\n"
