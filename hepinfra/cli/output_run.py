"""``output`` and ``run``: values on explicit request (the one place a secret is printed), and a
command run with them in its environment (never its arguments), without hepinfra's own credentials
(``safety.credentials.run_environment``) unless ``--pass-env`` names one.

In GitHub Actions (``GITHUB_ACTIONS=true``) both first write ``::add-mask::`` for every form of
every value they hand over, to stderr (``hepinfra.github.mask``). ``output --format github-env``
and ``github-output`` append the values to the files ``$GITHUB_ENV`` / ``$GITHUB_OUTPUT`` name, in
GitHub's heredoc form, and always mask first (they only make sense in a step), whatever
``GITHUB_ACTIONS`` says."""

from __future__ import annotations

import os
import sys

import click

from hepinfra.cli.options import manifest_option, parse_address, raw_stdout, run_async
from hepinfra.errors import UsageError

# --- output / run --------------------------------------------------------------------------------


FILE_FORMATS = {"github-env": "GITHUB_ENV", "github-output": "GITHUB_OUTPUT"}
FORMAT_OF = {variable: fmt for fmt, variable in FILE_FORMATS.items()}


@click.command()
@manifest_option
@click.argument("address")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["dotenv", "json", "shell", *FILE_FORMATS]),
    default="dotenv",
    show_default=True,
    help="github-env / github-output append to the file $GITHUB_ENV / $GITHUB_OUTPUT names (heredoc "
    "form) and print no value.",
)
def output(manifest_file: str, address: str, fmt: str) -> None:
    """Print one resource's values (ENV/databases.KEY, ENV/ids.KEY, ENV/uploads.KEY), secrets included:
    only on explicit request, never logged.

    With GITHUB_ACTIONS=true, an ::add-mask:: line for every form of every value goes to stderr
    first (stdout keeps exactly the values); github-env and github-output always mask."""
    import json
    import shlex

    from hepinfra import runner
    from hepinfra.github import mask
    from hepinfra.templates import dotenv_quote

    target = _file_command_target(FILE_FORMATS[fmt]) if fmt in FILE_FORMATS else None
    project = runner.Project.open(manifest_file)
    env, kind, key = parse_address(project.manifest, project.manifest.environments, address)
    found = [d for d in project.manifest.declared[env] if (d.kind, d.key) == (kind, key)]
    if not found:
        raise UsageError(f"{address}: no {kind.removesuffix('s')} '{key}' is declared in environment '{env}'")
    values = run_async(runner.resource_values(project, env, [(kind, key)]))[found[0].ref]
    if target is not None:
        payload = _file_command_payload(values)  # refuses a name the file format cannot carry, before any mask
        mask.emit(values)
        _append_file_command(target, FILE_FORMATS[fmt], payload)
        click.echo(f"{address}: wrote {', '.join(values)} to ${FILE_FORMATS[fmt]}", err=True)
        return
    if fmt == "json":
        printed = [json.dumps(values, indent=2, sort_keys=True)]
    elif fmt == "shell":
        printed = [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
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
        printed = ["\n".join(lines)]
    if mask.in_actions(os.environ):
        mask.emit(values)  # only now: nothing is masked for values that are never printed
    out = raw_stdout()
    for text in printed:
        click.echo(text, file=out)


# --- GitHub's file commands ($GITHUB_ENV, $GITHUB_OUTPUT) ----------------------------------------


def _file_command_target(variable: str) -> str:
    """The path ``$VARIABLE`` names, refused at once (before anything is read) when unset, a
    symbolic link or not a regular file. ``_append_file_command`` checks again on the open file."""
    import stat

    path = os.environ.get(variable, "")
    if not path:
        raise UsageError(f"${variable} is not set: --format {FORMAT_OF[variable]} appends to the file it names")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return path  # created by the append (the runner creates it; a local try may not have)
    except OSError as exc:
        raise UsageError(f"${variable}: cannot use {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise UsageError(f"${variable}: {path} is a symbolic link; refusing to write through it")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"${variable}: {path} is not a regular file; refusing to write to it")
    return path


def _file_command_payload(values: dict[str, str]) -> bytes:
    """``NAME<<DELIM``, the value, ``DELIM`` for each value: the runner's heredoc form (its
    ``FileCommandManager``: the value is everything between the two lines, whatever it holds).
    DELIM is ``ghadelimiter_`` and a random UUID, fresh for each value and absent from it."""
    import uuid

    entries = []
    for name, value in values.items():
        if not name or any(c in name for c in "=<\r\n"):  # the runner would read another name, or none
            raise UsageError(f"{name!r}: not a name GitHub's file commands can carry")
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
        while delimiter in value:
            delimiter = f"ghadelimiter_{uuid.uuid4()}"
        entries.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    return "".join(entries).encode("utf-8", "surrogateescape")


def _append_file_command(path: str, variable: str, payload: bytes) -> None:
    """Append ``payload`` to ``path`` with O_APPEND|O_NOFOLLOW: a link is never followed, and a
    FIFO or device (opened without blocking) is refused before a byte is written."""
    import errno
    import stat

    from hepinfra.errors import OutputError

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"${variable}: {path} is a symbolic link; refusing to write through it") from None
        raise OutputError(f"${variable}: cannot open {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"${variable}: {path} is not a regular file; refusing to write to it")
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise OutputError(f"${variable}: cannot write {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@manifest_option
@click.option("-e", "--env", "env", help="The environment whose values to pass (not with --from).")
@click.option(
    "--pass-env",
    "pass_env",
    multiple=True,
    metavar="NAME",
    help="Keep this one of hepinfra's credentials in COMMAND's environment (repeatable); without it, every "
    "HEPGG_*, HEPINFRA_STATE_* and HEPINFRA_LOCAL_* variable and every credential variable the manifest "
    "names is removed.",
)
@click.option(
    "--from",
    "from_file",
    type=click.Path(dir_okay=False),
    help="Take the values from this rendered dotenv file (an output) instead of the manifest: no hepinfra "
    "credential is needed.",
)
@click.option("--watch", is_flag=True, help="Supervise COMMAND: restart it when a value it was given changes.")
@click.option(
    "--interval",
    metavar="DURATION",
    help="--watch: how often the values are read again (default 2s with --from, 30s otherwise).",
)
@click.option("--grace", default="10s", show_default=True, metavar="DURATION", help="--watch: SIGTERM to SIGKILL.")
@click.option(
    "--jitter",
    default="0s",
    show_default=True,
    metavar="DURATION",
    help="--watch: wait a random time up to this before a restart (many instances do not restart at once).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    manifest_file: str,
    env: str | None,
    pass_env: tuple[str, ...],
    from_file: str | None,
    watch: bool,
    interval: str | None,
    grace: str,
    jitter: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with the environment's rendered dotenv values in its environment (never its arguments).

    COMMAND keeps your environment except hepinfra's credentials: HEPGG_*, HEPINFRA_STATE_*,
    HEPINFRA_LOCAL_* and the variables the manifest's db_key_env, id_username_env, id_token_env,
    upload_token_env and the state block's url_env name (with the postgres state backend, libpq's
    PGPASSWORD, PGPASSFILE and PGSERVICEFILE too); --pass-env NAME keeps one.

    --watch keeps COMMAND running and restarts it (SIGTERM, --grace, SIGKILL) when a value changes:
    read from --from FILE (an output this host receives; no credential needed) or, without it, from
    hep.gg and state as run reads them, every --interval.

    With GITHUB_ACTIONS=true, an ::add-mask:: line for every form of every value goes to stderr
    before COMMAND starts, so GitHub masks whatever COMMAND prints."""
    import shutil
    from pathlib import Path

    from hepinfra import runner
    from hepinfra.github import mask
    from hepinfra.safety.credentials import run_environment
    from hepinfra.watch import Supervisor, parse_interval, read_dotenv

    if from_file is not None and env is not None:
        raise UsageError("-e and --from: the values come from one of them")
    if from_file is None and env is None:
        raise UsageError("run needs -e ENV (the manifest's values) or --from FILE (a rendered dotenv file)")
    seconds = parse_interval(interval or ("2s" if from_file else "30s"), "--interval")
    grace_s, jitter_s = parse_interval(grace, "--grace"), parse_interval(jitter, "--jitter")
    if watch and seconds <= 0:
        raise UsageError("--interval must be more than 0")
    if not watch and (interval is not None or grace != "10s" or jitter != "0s"):
        raise UsageError("--interval, --grace and --jitter are for --watch")
    program = shutil.which(command[0])
    if program is None:
        raise UsageError(f"command not found: {command[0]}")
    manifest = None
    if from_file is not None:
        source = Path(from_file)
        if Path(manifest_file).is_file():  # its credential variables are withheld too
            manifest = runner.Project.open(manifest_file).manifest

        def read() -> dict[str, str]:
            return read_dotenv(source)

    else:
        project = runner.Project.open(manifest_file)
        manifest = project.manifest
        runner.select_environments(manifest, [str(env)])
        refs = [(d.kind, d.key) for d in manifest.declared[str(env)]]

        def read() -> dict[str, str]:
            values: dict[str, str] = {}
            for per_resource in run_async(runner.resource_values(project, str(env), refs)).values():
                values.update(per_resource)
            return values

    environ = run_environment(manifest, os.environ, pass_env)

    def announce(values: dict[str, str]) -> None:
        from hepinfra.safety.redact import register

        for value in values.values():
            register(value)  # nothing hepinfra prints from now on shows them
        if mask.in_actions(os.environ):
            mask.emit(values)  # before COMMAND starts: GitHub then masks whatever it prints

    if watch:
        supervisor = Supervisor([program, *command[1:]], environ, read, seconds, grace_s, jitter_s, on_values=announce)
        sys.exit(supervisor.run())
    values = read()
    announce(values)
    sys.stdout.flush()
    os.execve(program, list(command), {**environ, **values})  # noqa: S606 (no shell, by design)
