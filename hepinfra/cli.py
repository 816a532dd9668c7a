"""Command definitions, and the one error handler that turns errors into exit codes.

Owns: flags, arguments and wiring. Heavy modules (httpx, pydantic, starlette, jinja2, rich)
are imported inside commands, so ``hepinfra --version`` stays fast.
Must not: hold logic that belongs to the core, or print a secret (except ``output``, on request,
and the local emulator's own throwaway key when it minted one).

Exit codes: 0 success or no changes; 1 any error (bad input included); 2 changes present
(``plan --detailed-exitcode``). A bare group (``hepinfra``, ``hepinfra state``) prints its help
and exits 0.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from hepinfra import __version__
from hepinfra.errors import HepinfraError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
# A group run without a command raises this (click >= 8.2; older clicks print the help themselves).
_BARE_GROUP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every byte written to stdout and stderr passes the redactor (``output`` alone
    writes around it, on explicit request); then run the click app."""
    from hepinfra.safety.redact import RedactingStream

    _show_warnings()
    raw = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(raw[0]), RedactingStream(raw[1])
    try:
        _dispatch(argv)
    finally:
        sys.stdout, sys.stderr = raw


def raw_stdout() -> Any:
    """The real stdout, for ``output`` (the one command that prints secrets, on request)."""
    from hepinfra.safety.redact import RedactingStream

    return sys.stdout.stream if isinstance(sys.stdout, RedactingStream) else sys.stdout


def _dispatch(argv: list[str] | None) -> None:
    """Run the click app, mapping every failure to one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="hepinfra", standalone_mode=False)
    except HepinfraError as exc:
        fail(str(exc))
    except click.exceptions.Abort:
        fail("aborted")
    except _BARE_GROUP as exc:  # bare ``hepinfra`` or ``hepinfra state``: the usual help, exit 0
        click.echo(exc.ctx.get_help(), color=exc.ctx.color)
    except click.ClickException as exc:  # usage errors: one line, exit 1 (2 means "changes")
        fail(exc.format_message().replace("\n", " "))
    except KeyboardInterrupt:
        fail("interrupted")
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    except Exception as exc:  # a bug: one line, no message (it could hold a third-party secret)
        import traceback

        if os.environ.get("HEPINFRA_DEBUG"):
            from hepinfra.safety.redact import format_exception

            sys.stderr.write(format_exception(exc))
            sys.exit(EXIT_ERROR)

        frame = traceback.extract_tb(exc.__traceback__)[-1]
        fail(
            f"internal error {type(exc).__name__} at {os.path.basename(frame.filename)}:{frame.lineno}; "
            "please report it (HEPINFRA_DEBUG=1 shows the traceback)"
        )
    sys.exit(EXIT_OK)


def _show_warnings() -> None:
    """hepinfra's own warnings (never holding a secret) go to the *current* stderr, one line each."""
    import logging

    class StderrWarnings(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            from hepinfra.safety.redact import redact

            sys.stderr.write(f"Warning: {redact(record.getMessage())}\n")

    logger = logging.getLogger("hepinfra")
    if not any(type(h).__name__ == "StderrWarnings" for h in logger.handlers):
        logger.addHandler(StderrWarnings(logging.WARNING))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="hepinfra")
def cli() -> None:
    """Declarative provisioning for hep.gg: plan, apply, rotate and render credentials."""


# --- emulator ------------------------------------------------------------------------------------


def _credential(value: str, flag: str) -> str:
    """A credential flag value: ``env:NAME`` reads it from the environment (recommended)."""
    if value.startswith("env:"):
        name = value[4:]
        resolved = os.environ.get(name, "")
        if not resolved:
            raise UsageError(f"{flag} env:{name}: the environment variable {name} is not set")
        return resolved
    return value


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback).")
@click.option(
    "--port",
    default=8700,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one (the address is printed).",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    default=".hepinfra/emulator",
    show_default=True,
    help="Directory for the SQLite world; a restart keeps it.",
)
@click.option(
    "--db-key",
    "db_keys",
    multiple=True,
    metavar="KEY|env:NAME",
    help="A database API key; each one is a separate account. Repeatable.",
)
@click.option(
    "--id-key",
    "id_keys",
    multiple=True,
    metavar="USER:TOKEN|env:NAME",
    help="An ID Generator key (joins the first account). Repeatable.",
)
@click.option(
    "--upload-token",
    "upload_tokens",
    multiple=True,
    metavar="TOKEN|env:NAME",
    help="An uploader token (joins the first account). Repeatable.",
)
@click.option(
    "--seed",
    "seed_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="YAML world: accounts, disabled keys, suspensions, revoked tokens, databases.",
)
@click.option("--slots", default=50, show_default=True, type=click.IntRange(0), help="Database slots per account.")
@click.option(
    "--engines",
    default="mariadb,postgres,mongo",
    show_default=True,
    help="Engines this deployment offers; others get 400 ENGINE_DISABLED.",
)
@click.option("--db-host", default="db.teamhydra.dev", show_default=True, help="Host in connection strings.")
@click.option(
    "--password-chars", default=None, help="Alphabet for generated passwords; every character appears in each password."
)
@click.option("--password-length", default=32, show_default=True, type=click.IntRange(8, 256))
@click.option("--latency", "latency_ms", default=0.0, type=click.FloatRange(0), help="Added latency, ms.")
@click.option("--jitter", "jitter_ms", default=0.0, type=click.FloatRange(0), help="Latency jitter, +/- ms.")
@click.option("--fail-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of API requests that fail.")
@click.option(
    "--fault-kinds",
    default="500,502,503,429,drop-before,drop-after",
    show_default=True,
    help="Which faults --fail-rate injects.",
)
@click.option(
    "--retry-after",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Retry-After seconds on injected 429s.",
)
@click.option("--fault-seed", default=None, type=int, help="Seed for reproducible latency and faults.")
def emulator(**opts: Any) -> None:
    """Run the local hep.gg (all three APIs on one port) until SIGINT/SIGTERM."""
    import signal
    from pathlib import Path

    from hepinfra.emulator.app import EmulatorConfig, parse_faults
    from hepinfra.emulator.seed import SeedError, default_db_key, load_seed, seed_from_flags
    from hepinfra.emulator.server import build_app, serve_forever

    engines = tuple(e.strip() for e in opts["engines"].split(",") if e.strip())
    bad = sorted(set(engines) - {"mariadb", "postgres", "mongo"})
    if bad:
        raise UsageError(f"--engines: unknown engine(s) {', '.join(bad)}; use mariadb, postgres, mongo")
    id_keys = []
    for raw in opts["id_keys"]:
        value = _credential(raw, "--id-key")
        user, sep, token = value.partition(":")
        if not sep or not user or not token:
            raise UsageError("--id-key must be USER:TOKEN (or env:NAME holding USER:TOKEN)")
        id_keys.append((user, token))
    try:
        faults = parse_faults(
            {
                "latency_ms": opts["latency_ms"],
                "jitter_ms": opts["jitter_ms"],
                "fail_rate": opts["fail_rate"],
                "kinds": [k.strip() for k in opts["fault_kinds"].split(",") if k.strip()],
                "retry_after": opts["retry_after"],
            }
        )
        seeds = [load_seed(Path(f)) for f in opts["seed_files"]]
    except (ValueError, SeedError) as exc:
        raise UsageError(str(exc)) from None
    db_keys = [_credential(k, "--db-key") for k in opts["db_keys"]]
    # no --db-key: the world's own throwaway key, minted once into the data directory
    minted = None if db_keys else default_db_key(Path(opts["data_dir"]))
    seeds.insert(
        0,
        seed_from_flags(
            db_keys,
            id_keys,
            [_credential(t, "--upload-token") for t in opts["upload_tokens"]],
            slots=opts["slots"],
            default_key=minted,
        ),
    )
    config = EmulatorConfig(
        engines=engines,
        password_chars=opts["password_chars"] or None,
        password_length=opts["password_length"],
        db_host=opts["db_host"],
        faults=faults,
        seed=opts["fault_seed"],
    )
    app = build_app(Path(opts["data_dir"]), config, seeds, slots=opts["slots"])

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def announce(url: str) -> None:
        click.echo(f"hep.gg emulator listening on {url}", nl=True)
        sys.stdout.flush()
        if minted:  # the one key hepinfra prints: a local throwaway, printed so it can be used
            click.echo(f"accepting database key: {minted}", file=raw_stdout())
            raw_stdout().flush()

    serve_forever(app, opts["host"], opts["port"], announce=announce)


# --- shared options ------------------------------------------------------------------------------


def manifest_option(f: Any) -> Any:
    return click.option(
        "-f",
        "--file",
        "manifest_file",
        default="hepinfra.yaml",
        show_default=True,
        metavar="FILE",
        help="The manifest.",
    )(f)


def env_option(f: Any) -> Any:
    return click.option(
        "-e",
        "--env",
        "envs",
        multiple=True,
        metavar="ENV",
        help="Limit to this environment (repeatable; default: all).",
    )(f)


def lock_timeout_option(f: Any) -> Any:
    return click.option(
        "--lock-timeout",
        default="0s",
        show_default=True,
        metavar="DURATION",
        help="Wait this long for a held state lock (e.g. 30s, 5m).",
    )(f)


def parse_timeout(value: str) -> float:
    from hepinfra.manifest import parse_duration

    if value.strip() in ("0", "0s"):
        return 0.0
    try:
        return float(parse_duration(value))
    except ValueError as exc:
        raise UsageError(f"--lock-timeout: {exc}") from None


def use_colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def run_async(coro: Any) -> Any:
    """asyncio.run, but the main task returns None: on exit asyncio.run repr()s its SIGINT handler,
    which holds the main task, and a task's repr includes its result (a 1,000-change plan: ~0.1 s)."""
    import asyncio
    import contextlib
    import signal

    box: list[Any] = []
    terminated: list[int] = []

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None

        def on_sigterm() -> None:  # a cancelled CI job: unwind (journal, locks) instead of dying
            terminated.append(1)
            task.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        box.append(await coro)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        if terminated:
            raise HepinfraError(
                "terminated by SIGTERM; locks were released and the journal in state lets the next run resume"
            ) from None
        raise
    return box[0]


# --- validate / schema ---------------------------------------------------------------------------


@cli.command()
@manifest_option
def validate(manifest_file: str) -> None:
    """Check a manifest offline: schema, names, templates (no network access)."""
    from hepinfra import manifest

    loaded = manifest.load(manifest_file)
    count = sum(len(v) for v in loaded.declared.values())
    click.echo(
        f"{manifest_file}: valid ({len(loaded.environments)} environment(s), "
        f"{len(loaded.model.databases)} database(s), {count} declaration(s) in all)"
    )


@cli.command()
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


@cli.command()
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
    help="Plan a rotation: ENV/databases.NAME, or NAME for every selected environment.",
)
@click.option("--show-unchanged", is_flag=True, help="List up-to-date databases too (text output).")
def plan(
    manifest_file: str,
    envs: tuple[str, ...],
    as_json: bool,
    markdown: bool,
    out_file: str | None,
    detailed_exitcode: bool,
    no_refresh: bool,
    rotations: tuple[str, ...],
    show_unchanged: bool,
) -> None:
    """Show what apply would do: diff the manifest against state and hep.gg."""
    from pathlib import Path

    from hepinfra import render, runner

    if as_json and markdown:
        raise UsageError("--json and --markdown are exclusive")
    project = runner.Project.open(manifest_file)
    selected = runner.select_environments(project.manifest, envs)
    rotate = runner.parse_rotate(project.manifest, selected, rotations)
    if out_file:
        runner.check_plan_out(Path(out_file), project.manifest.project_dir)

    async def go() -> Any:
        async with project.hepgg() as hub:
            return await runner.make(project, hub, selected, refresh=not no_refresh, rotate=rotate)

    result, _, _ = run_async(go())
    if as_json:
        click.echo(render.json_text(result), nl=False)
    elif markdown:
        click.echo(render.markdown(result), nl=False)
    else:
        click.echo(render.text(result, colour=use_colour(), show_noop=show_unchanged), nl=False)
    if result.errors:
        if not (as_json or markdown):
            for line in render.error_lines(result):
                click.echo(f"Error: {line}", err=True)
        sys.exit(EXIT_ERROR)
    if out_file:
        runner.save_plan(result, Path(out_file))
        if not (as_json or markdown):
            click.echo(f"Saved the plan to {out_file}; apply it with: hepinfra apply {out_file}")
    if detailed_exitcode and result.has_changes:
        sys.exit(EXIT_CHANGES)


# --- state ---------------------------------------------------------------------------------------


@cli.group()
def state() -> None:
    """Inspect and repair state (it holds no secrets)."""


def _address(manifest: Any, envs: list[str], address: str) -> tuple[str, str]:
    if "/" in address:
        env, rest = address.split("/", 1)
    elif len(envs) == 1:
        env, rest = envs[0], address
    else:
        raise UsageError(f"{address}: name the environment, as ENV/databases.NAME")
    if env not in manifest.model.environments:
        raise UsageError(f"{address}: no environment '{env}' in the manifest")
    return env, rest.removeprefix("databases.")


@state.command("list")
@manifest_option
@env_option
def state_list(manifest_file: str, envs: tuple[str, ...]) -> None:
    """List managed databases: address, platform name, id, engine."""
    from hepinfra import runner

    project = runner.Project.open(manifest_file)
    for env in runner.select_environments(project.manifest, envs):
        current = project.backend.read(env)
        for key, db in sorted((current.databases if current else {}).items()):
            click.echo(f"{env}/databases.{key}\t{db.name}\t{db.id}\t{db.engine}")


@state.command("show")
@manifest_option
@click.argument("address")
def state_show(manifest_file: str, address: str) -> None:
    """Show one managed database and its output records (digests only)."""
    import json

    from hepinfra import runner

    project = runner.Project.open(manifest_file)
    env, key = _address(project.manifest, project.manifest.environments, address)
    current = project.backend.read(env)
    if current is None or key not in current.databases:
        raise UsageError(f"{address}: not in the state of environment '{env}'")
    out = {
        "address": f"{env}/databases.{key}",
        "database": current.databases[key].model_dump(mode="json"),
        "outputs": [r.model_dump(mode="json") for r in current.outputs.values() if r.database == key],
        "journal": [j.model_dump(mode="json") for j in current.pending(key)],
    }
    click.echo(json.dumps(out, indent=2, sort_keys=True))


@state.command("rm")
@manifest_option
@lock_timeout_option
@click.argument("addresses", nargs=-1, required=True)
def state_rm(manifest_file: str, lock_timeout: str, addresses: tuple[str, ...]) -> None:
    """Stop managing databases (they stay on hep.gg; their outputs stay on disk)."""
    from hepinfra import runner

    project = runner.Project.open(manifest_file)
    targets = [_address(project.manifest, project.manifest.environments, a) for a in addresses]
    for env, key in runner.remove_from_state(project, targets, parse_timeout(lock_timeout)):
        click.echo(f"Removed {env}/databases.{key} from state; the database stays on hep.gg.")


@state.command("pull")
@manifest_option
@click.option("-e", "--env", "env", required=True, help="The environment.")
def state_pull(manifest_file: str, env: str) -> None:
    """Print an environment's state file to stdout."""
    from hepinfra import runner
    from hepinfra.state import codec

    project = runner.Project.open(manifest_file)
    runner.select_environments(project.manifest, [env])
    current = project.backend.read(env)
    if current is None:
        raise UsageError(f"environment '{env}' has no state yet")
    click.echo(codec.encode(current).decode(), nl=False)


@state.command("push")
@manifest_option
@lock_timeout_option
@click.option("-e", "--env", "env", required=True, help="The environment.")
@click.option("--force", is_flag=True, help="Allow another lineage or an older serial.")
@click.argument("state_file", type=click.Path(dir_okay=False))
def state_push(manifest_file: str, lock_timeout: str, env: str, force: bool, state_file: str) -> None:
    """Replace an environment's state with STATE_FILE (checked: environment, lineage, serial)."""
    from pathlib import Path

    from hepinfra import runner

    project = runner.Project.open(manifest_file)
    runner.select_environments(project.manifest, [env])
    stored = runner.push_state(project, env, Path(state_file), force=force, timeout=parse_timeout(lock_timeout))
    click.echo(f"Pushed {state_file} as the state of '{env}' (serial {stored.serial}).")


@state.command("unlock")
@manifest_option
@click.option("-e", "--env", "env", required=True, help="The environment whose lock to clear.")
@click.argument("lock_id")
def state_unlock(manifest_file: str, env: str, lock_id: str) -> None:
    """Clear a stuck lock by its id (the lock error names it)."""
    from hepinfra import runner

    project = runner.Project.open(manifest_file)
    runner.select_environments(project.manifest, [env])
    project.backend.unlock(env, lock_id)
    click.echo(f"Unlocked the state of '{env}'.")


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
) -> None:
    import json
    import statistics
    from pathlib import Path

    from hepinfra import render, runner

    if plan_file and (envs or rotations):
        raise UsageError("a saved PLANFILE is applied exactly as planned: -e and --rotate go to 'plan' instead")
    source = click.get_current_context().get_parameter_source("manifest_file")
    if plan_file and source is click.core.ParameterSource.DEFAULT:
        manifest_file = runner.load_plan(Path(plan_file)).manifest  # the manifest the plan was made from
    project = runner.Project.open(manifest_file)
    printer = EventPrinter(as_json)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not plan_file and not auto_approve and not interactive:
        raise UsageError(
            "apply needs --auto-approve in a non-interactive session (or a saved PLANFILE from 'hepinfra plan --out')"
        )

    def show_plan(plan: Any) -> None:
        if as_json:
            click.echo(json.dumps({"event": "plan", "plan": render.document(plan)}, sort_keys=True))
        else:
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
        parallelism=parallelism,
        lock_timeout=parse_timeout(lock_timeout),
        refresh=not no_refresh,
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
            line += (
                f" Rotation window: median {statistics.median(windows):.1f} ms, max {max(windows):.1f} ms "
                "(old password dead until outputs were written)."
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
        ]
    ):
        f = decorator(f)  # type: ignore[operator]
    return f


@cli.command()
@click.argument("plan_file", required=False, type=click.Path(dir_okay=False))
@apply_options
@click.option("--rotate", "rotations", multiple=True, metavar="ADDR", help="Also rotate this database (repeatable).")
def apply(
    plan_file: str | None,
    manifest_file: str,
    envs: tuple[str, ...],
    auto_approve: bool,
    parallelism: int,
    as_json: bool,
    lock_timeout: str,
    no_refresh: bool,
    rotations: tuple[str, ...],
) -> None:
    """Make hep.gg and the outputs match the manifest (or apply a saved PLANFILE exactly)."""
    _apply_command(
        manifest_file, plan_file, envs, auto_approve, rotations, parallelism, as_json, lock_timeout, no_refresh
    )


@cli.command()
@click.argument("addresses", nargs=-1, required=True)
@apply_options
def rotate(
    addresses: tuple[str, ...],
    manifest_file: str,
    envs: tuple[str, ...],
    auto_approve: bool,
    parallelism: int,
    as_json: bool,
    lock_timeout: str,
    no_refresh: bool,
) -> None:
    """Rotate passwords now (plan + apply with --rotate ADDR...): ENV/databases.NAME or NAME."""
    _apply_command(manifest_file, None, envs, auto_approve, addresses, parallelism, as_json, lock_timeout, no_refresh)


# --- output / run --------------------------------------------------------------------------------


@cli.command()
@manifest_option
@click.argument("address")
@click.option("--format", "fmt", type=click.Choice(["dotenv", "json", "shell"]), default="dotenv", show_default=True)
def output(manifest_file: str, address: str, fmt: str) -> None:
    """Print one database's values, secrets included: only on explicit request, never logged."""
    import json
    import shlex

    from hepinfra import runner
    from hepinfra.templates import dotenv_quote

    project = runner.Project.open(manifest_file)
    env, key = _address(project.manifest, project.manifest.environments, address)
    if not any(d.key == key for d in project.manifest.declared[env]):
        raise UsageError(f"{address}: no database '{key}' is declared in environment '{env}'")
    values = run_async(runner.database_values(project, env, [key]))[key]
    out = raw_stdout()
    if fmt == "json":
        click.echo(json.dumps(values, indent=2, sort_keys=True), file=out)
    elif fmt == "shell":
        for name, value in values.items():
            click.echo(f"export {name}={shlex.quote(value)}", file=out)
    else:
        from hepinfra.errors import OutputError
        from hepinfra.templates import QuotingError

        lines = []
        for name, value in values.items():
            try:
                lines.append(f"{name}={dotenv_quote(value)}")
            except QuotingError as exc:
                raise OutputError(
                    f"{name}: cannot be printed as dotenv: {exc}", hint="use --format json or shell"
                ) from None
        click.echo("\n".join(lines), file=out)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@manifest_option
@click.option("-e", "--env", "env", required=True, help="The environment whose values to pass.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(manifest_file: str, env: str, command: tuple[str, ...]) -> None:
    """Run COMMAND with the environment's rendered dotenv values in its environment (never its arguments)."""
    import shutil

    from hepinfra import runner

    project = runner.Project.open(manifest_file)
    runner.select_environments(project.manifest, [env])
    keys = [d.key for d in project.manifest.declared[env]]
    values: dict[str, str] = {}
    for per_db in run_async(runner.database_values(project, env, keys)).values():
        values.update(per_db)
    program = shutil.which(command[0])
    if program is None:
        raise UsageError(f"command not found: {command[0]}")
    sys.stdout.flush()
    os.execve(program, list(command), {**os.environ, **values})  # noqa: S606 (no shell, by design)
