"""``validate``, ``schema``, ``plan``, ``apply`` and ``rotate``: the plan/apply cycle, its events and
summary."""

from __future__ import annotations

import sys
from typing import Any

import click

from hepinfra.cli.options import (
    EXIT_CHANGES,
    EXIT_ERROR,
    env_option,
    lock_timeout_option,
    manifest_option,
    max_rotations_option,
    parse_timeout,
    run_async,
    skip_local_option,
    skipped,
    target_option,
    use_colour,
)
from hepinfra.errors import UsageError

# --- validate / schema ---------------------------------------------------------------------------


@click.command()
@manifest_option
def validate(manifest_file: str) -> None:
    """Check a manifest offline: schema, names, templates (no network access)."""
    from hepinfra import manifest, preflight

    loaded = manifest.load(manifest_file)
    preflight.warn(loaded)
    count = sum(len(v) for v in loaded.declared.values())
    click.echo(
        f"{manifest_file}: valid ({len(loaded.environments)} environment(s), "
        f"{len(loaded.model.section('databases'))} database(s), {count} declaration(s) in all; "
        f"state: {loaded.model.state.where()})"
    )


@click.command()
@click.option("--plan", "plan_schema", is_flag=True, help="Print the plan JSON schema instead.")
def schema(plan_schema: bool) -> None:
    """Print the manifest's JSON Schema (for yaml-language-server and editors)."""
    import json

    if plan_schema:
        from hepinfra.render import json_schema

        click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))
    else:
        from hepinfra.manifest import schema as manifest_schema

        click.echo(json.dumps(manifest_schema(), indent=2, sort_keys=True))


# --- plan ----------------------------------------------------------------------------------------


@click.command()
@manifest_option
@env_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (docs/plan-json.md).")
@click.option("--markdown", is_flag=True, help="Print the plan as Markdown for a pull-request comment.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Save the plan for 'apply PLANFILE'.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 no changes, 2 changes present, 1 error.")
@click.option("--no-refresh", is_flag=True, help="One List call per environment; no Reveal (stale passwords unseen).")
@click.option(
    "--rotate",
    "rotations",
    multiple=True,
    metavar="ADDR",
    help="Plan a rotation: ENV/KIND.NAME (databases, ids, uploads), KIND.NAME or a database's NAME for every "
    "selected environment.",
)
@target_option
@max_rotations_option
@click.option("--show-unchanged", is_flag=True, help="List up-to-date resources too (text output).")
@skip_local_option
@click.option(
    "--base",
    "base_ref",
    metavar="REF",
    envvar="HEPINFRA_BASE_REF",
    help="Plan a pull request safely: the manifest at this Git revision (e.g. origin/main) decides where "
    "credentials go; no command runs; changes to what runs at apply are listed for review. "
    "Also HEPINFRA_BASE_REF.",
)
def plan(
    manifest_file: str,
    envs: tuple[str, ...],
    as_json: bool,
    markdown: bool,
    out_file: str | None,
    detailed_exitcode: bool,
    no_refresh: bool,
    rotations: tuple[str, ...],
    targets: tuple[str, ...],
    max_rotations: int | None,
    show_unchanged: bool,
    skip_local_outputs: bool,
    base_ref: str | None,
) -> None:
    """Show what apply would do: diff the manifest against state and hep.gg."""
    import os
    from pathlib import Path

    from hepinfra import preflight, render, runner

    if as_json and markdown:
        raise UsageError("--json and --markdown are exclusive")
    base_ref = base_ref or None
    event = os.environ.get("GITHUB_EVENT_NAME", "")
    if base_ref is None and os.environ.get("GITHUB_ACTIONS") == "true" and event.startswith("pull_request"):
        click.echo(
            f"Warning: a {event} plan without --base trusts the pull request's manifest (its URLs, credential "
            "variables and commands); use --base origin/BRANCH",
            err=True,
        )
    project = runner.Project.open(manifest_file, base_ref=base_ref, skip_outputs=skipped(skip_local_outputs))
    preflight.warn(project.manifest)
    selected = runner.select_environments(project.manifest, envs)
    rotate = runner.parse_rotate(project.manifest, selected, rotations, max_rotations)
    from hepinfra.addresses import target_request

    partial = target_request(project.manifest, selected, targets, project.backend.read, rotate)
    if out_file:
        runner.check_plan_out(Path(out_file), project.manifest.project_dir)

    async def go() -> Any:
        async with project.hepgg() as hub:
            return await runner.make(project, hub, selected, refresh=not no_refresh, rotate=rotate, targets=partial)

    result, access, states = run_async(go())
    if as_json:
        click.echo(render.json_text(result), nl=False)
    elif markdown:
        click.echo(render.markdown(result), nl=False)
    elif not (result.errors and not result.actionable):  # a plan of nothing but errors: the errors alone
        click.echo(render.text(result, colour=use_colour(), show_noop=show_unchanged), nl=False)
    if result.errors:
        if not (as_json or markdown):
            for line in render.error_lines(result):
                click.echo(f"Error: {line}", err=True)
        sys.exit(EXIT_ERROR)
    if out_file:
        runner.save_plan(result, Path(out_file), rotations, access, states)
        if not (as_json or markdown):
            click.echo(f"Saved the plan to {out_file}; apply it with: hepinfra apply {out_file}")
    if detailed_exitcode and result.has_changes:
        sys.exit(EXIT_CHANGES)


# --- apply / rotate ------------------------------------------------------------------------------


class EventPrinter:
    """Line per event (CI, pipes), JSON lines with --json, a progress bar on a TTY."""

    SYMBOLS = {"create": "+", "adopt": "<=", "rotate": "~", "render": ">", "forget": "-"}

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.tty = sys.stdout.isatty() and not as_json
        self.progress: Any = None
        self.task: Any = None
        self.total = 0

    def start(self, total: int) -> None:
        self.total = total
        if self.tty and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("applying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
            )
            self.progress.start()
            self.task = self.progress.add_task("apply", total=total)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __call__(self, event: dict[str, Any]) -> None:
        import json

        if self.as_json:
            click.echo(json.dumps(event, sort_keys=True))
            return
        if event["event"] == "start":
            return
        if event["event"] == "after_rotate_once":  # a run of its own, not a change: no progress step
            line = f"   ⟳ {', '.join(event['addresses'])}: {event['message']}"
            styled = click.style(line, fg="green" if event["ok"] else "red") if self.tty else line
            if self.progress is not None:
                self.progress.console.print(styled, highlight=False, markup=False)
            else:
                click.echo(styled)
            return
        symbol = self.SYMBOLS.get(event["action"], "*")
        if event["event"] == "done":
            extra = f", window {event['rotation_window_ms']:.1f} ms" if "rotation_window_ms" in event else ""
            took = f"{event['duration_ms']:.0f} ms{extra}"
            line = f"  {symbol:>2} {event['address']}: {event.get('message', 'done')} ({took})"
            styled = click.style(line, fg="green") if self.tty else line
        elif "failures" in event:  # the action happened; a later step (render of FILE, ...) failed
            line = f"   ! {event['address']}: {event.get('message', '')}"
            styled = click.style(line, fg="red") if self.tty else line
        else:
            line = f"   ! {event['address']}: {event['action']} failed: {event.get('message', '')}"
            styled = click.style(line, fg="red") if self.tty else line
        if self.progress is not None:
            self.progress.console.print(styled, highlight=False, markup=False)
            self.progress.advance(self.task)
        else:
            click.echo(styled)


def _apply_command(
    manifest_file: str,
    plan_file: str | None,
    envs: tuple[str, ...],
    auto_approve: bool,
    rotations: tuple[str, ...],
    parallelism: int,
    as_json: bool,
    lock_timeout: str,
    no_refresh: bool,
    skip_local_outputs: bool = False,
    expect_fingerprint: str | None = None,
    write_back: bool = False,
    targets: tuple[str, ...] = (),
    max_rotations: int | None = None,
    revoke: bool = False,
) -> None:
    import json
    import statistics
    from pathlib import Path

    from hepinfra import preflight, render, runner

    if plan_file and (envs or rotations or targets or max_rotations is not None):
        raise UsageError(
            "a saved PLANFILE is applied exactly as planned: -e, --rotate, --max-rotations and --target go to "
            "'plan' instead"
        )
    if plan_file and expect_fingerprint:
        raise UsageError("--expect-fingerprint is for a plan made at apply; a saved PLANFILE is checked by itself")
    source = click.get_current_context().get_parameter_source("manifest_file")
    skip = skipped(skip_local_outputs)
    if plan_file:
        saved = runner.load_plan(Path(plan_file))
        if source is click.core.ParameterSource.DEFAULT:
            # the manifest the plan was made from: a path inside the current directory, never absolute or '..'
            manifest_file = runner.saved_manifest(saved, Path(plan_file))
        skip = runner.saved_skips(saved)  # as the plan was made: it is planned again so at apply
    project = runner.Project.open(manifest_file, skip_outputs=skip)
    preflight.warn(project.manifest)
    printer = EventPrinter(as_json)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not plan_file and not auto_approve and not interactive:
        raise UsageError(
            "apply needs --auto-approve in a non-interactive session (or a saved PLANFILE from 'hepinfra plan --out')"
        )

    def show_plan(plan: Any) -> None:
        if as_json:
            click.echo(json.dumps({"event": "plan", "plan": render.document(plan)}, sort_keys=True))
        elif not (plan.errors and not plan.actionable):  # nothing but errors: the error line alone
            click.echo(render.text(plan, colour=use_colour()), nl=False)

    def confirm(plan: Any) -> bool:
        if auto_approve:
            printer.start(len(plan.actionable))
            return True
        answer = click.prompt(
            "Do you want to perform these actions? Only 'yes' will be accepted", default="", show_default=False
        )
        ok = bool(answer.strip() == "yes")
        if ok:
            printer.start(len(plan.actionable))
        return ok

    options = runner.ApplyOptions(
        plan_file=Path(plan_file) if plan_file else None,
        envs=envs,
        rotate=rotations,
        targets=targets,
        max_rotations=max_rotations,
        parallelism=parallelism,
        lock_timeout=parse_timeout(lock_timeout),
        refresh=not no_refresh,
        expect_fingerprint=expect_fingerprint,
        write_back=write_back,
        revoke=revoke,
    )
    if plan_file:
        printer.start(0)
    try:
        _, result = run_async(runner.apply(project, options, show_plan=show_plan, confirm=confirm, emit=printer))
    finally:
        printer.stop()
    if result is None:
        if as_json:
            click.echo(json.dumps({"event": "summary", "succeeded": 0, "failed": 0, "changes": 0}))
        else:
            click.echo("No changes to apply.")
        return
    windows = list(result.rotation_windows.values())
    if as_json:
        click.echo(
            json.dumps(
                {
                    "event": "summary",
                    "succeeded": len(result.succeeded),
                    "failed": len(result.failed),
                    "rotation_windows_ms": {k: round(v, 2) for k, v in result.rotation_windows.items()},
                    "elapsed_ms": round(result.elapsed_ms, 1),
                    "state_writes": result.state_writes,
                    "failures": [
                        {
                            "address": o.address,
                            "action": o.action,
                            "step": o.step,
                            "message": o.message,
                            "failures": [f.as_event() for f in o.failures],
                        }
                        for o in result.failed
                    ],
                },
                sort_keys=True,
            )
        )
    else:
        line = (
            f"Apply {'complete' if not result.failed else 'incomplete'}: {len(result.succeeded)} succeeded, "
            f"{len(result.failed)} failed."
        )
        if windows:
            # with verify on, a window ends when the new credentials were checked, not when written
            checked = any(o.verified_ms is not None for o in result.outcomes if o.rotation_window_ms is not None)
            line += (
                f" Rotation window: median {statistics.median(windows):.1f} ms, max {max(windows):.1f} ms "
                f"(old password dead until outputs were written{' and verified' if checked else ''})."
            )
        click.echo(click.style(line, bold=True, fg="red" if result.failed else "green") if use_colour() else line)
        for outcome in result.failed:
            what = outcome.message if outcome.failures else f"{outcome.action} failed: {outcome.message}"
            click.echo(f"  failed: {outcome.address}: {what}")
        if result.failed:
            click.echo("Run 'hepinfra plan' to see what is left; the next apply resumes from the journal.")
    if result.failed:
        sys.exit(EXIT_ERROR)


def apply_options(f: Any) -> Any:
    for decorator in reversed(
        [
            manifest_option,
            env_option,
            click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation."),
            click.option(
                "--parallelism",
                default=8,
                show_default=True,
                type=click.IntRange(1, 256),
                help="How many changes run at once.",
            ),
            click.option("--json", "as_json", is_flag=True, help="One JSON event per line (for CI)."),
            lock_timeout_option,
            click.option("--no-refresh", is_flag=True, help="Plan without Reveal (stale passwords unseen)."),
            target_option,
            max_rotations_option,
            skip_local_option,
            click.option(
                "--write-back",
                is_flag=True,
                envvar="HEPINFRA_WRITE_BACK",
                help="The files this apply writes that are committed (age) reach the repository later, through a "
                "write-back pull request: until then a checkout holding the file they replaced is not a change. "
                "Also HEPINFRA_WRITE_BACK=1.",
            ),
        ]
    ):
        f = decorator(f)  # type: ignore[operator]
    return f


@click.command()
@click.argument("plan_file", required=False, type=click.Path(dir_okay=False))
@apply_options
@click.option(
    "--rotate",
    "rotations",
    multiple=True,
    metavar="ADDR",
    help="Also rotate this resource: ENV/KIND.NAME, KIND.NAME or a database's NAME (repeatable).",
)
@click.option(
    "--expect-fingerprint",
    metavar="FP",
    help="Apply only if the plan made now has this fingerprint (plan --json's 'fingerprint': the change set a "
    "pull request's plan showed); otherwise change nothing and fail with plan-changed.",
)
def apply(
    plan_file: str | None,
    manifest_file: str,
    envs: tuple[str, ...],
    auto_approve: bool,
    parallelism: int,
    as_json: bool,
    lock_timeout: str,
    no_refresh: bool,
    skip_local_outputs: bool,
    write_back: bool,
    targets: tuple[str, ...],
    max_rotations: int | None,
    rotations: tuple[str, ...],
    expect_fingerprint: str | None,
) -> None:
    """Make hep.gg and the outputs match the manifest (or apply a saved PLANFILE exactly)."""
    _apply_command(
        manifest_file,
        plan_file,
        envs,
        auto_approve,
        rotations,
        parallelism,
        as_json,
        lock_timeout,
        no_refresh,
        skip_local_outputs,
        expect_fingerprint,
        write_back,
        targets,
        max_rotations,
    )


@click.command()
@click.argument("addresses", nargs=-1, required=True)
@apply_options
@click.option(
    "--revoke",
    is_flag=True,
    help="A leaked password: a database with rotation: alternating also disables its previous role once the new "
    "one is published (a single database's old password dies at the rotation anyway).",
)
def rotate(
    addresses: tuple[str, ...],
    manifest_file: str,
    envs: tuple[str, ...],
    auto_approve: bool,
    parallelism: int,
    as_json: bool,
    lock_timeout: str,
    no_refresh: bool,
    skip_local_outputs: bool,
    write_back: bool,
    targets: tuple[str, ...],
    max_rotations: int | None,
    revoke: bool,
) -> None:
    """Rotate now (plan + apply with --rotate ADDR...): a database's password (ENV/databases.NAME or NAME),
    an id's value (ids.NAME), an upload (uploads.NAME: uploaded again)."""
    _apply_command(
        manifest_file,
        None,
        envs,
        auto_approve,
        addresses,
        parallelism,
        as_json,
        lock_timeout,
        no_refresh,
        skip_local_outputs,
        None,
        write_back,
        targets,
        max_rotations,
        revoke=revoke,
    )
