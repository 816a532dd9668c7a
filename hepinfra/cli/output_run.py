"""``output`` and ``run``: values on explicit request (the one place a secret is printed), and a
command run with them in its environment (never its arguments), without hepinfra's own credentials
(``safety.credentials.run_environment``) unless ``--pass-env`` names one."""

from __future__ import annotations

import os
import sys

import click

from hepinfra.cli.options import manifest_option, parse_address, raw_stdout, run_async
from hepinfra.errors import UsageError

# --- output / run --------------------------------------------------------------------------------


@click.command()
@manifest_option
@click.argument("address")
@click.option("--format", "fmt", type=click.Choice(["dotenv", "json", "shell"]), default="dotenv", show_default=True)
def output(manifest_file: str, address: str, fmt: str) -> None:
    """Print one resource's values (ENV/databases.KEY, ENV/ids.KEY, ENV/uploads.KEY), secrets included:
    only on explicit request, never logged."""
    import json
    import shlex

    from hepinfra import runner
    from hepinfra.templates import dotenv_quote

    project = runner.Project.open(manifest_file)
    env, kind, key = parse_address(project.manifest, project.manifest.environments, address)
    found = [d for d in project.manifest.declared[env] if (d.kind, d.key) == (kind, key)]
    if not found:
        raise UsageError(f"{address}: no {kind.removesuffix('s')} '{key}' is declared in environment '{env}'")
    values = run_async(runner.resource_values(project, env, [(kind, key)]))[found[0].ref]
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


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@manifest_option
@click.option("-e", "--env", "env", required=True, help="The environment whose values to pass.")
@click.option(
    "--pass-env",
    "pass_env",
    multiple=True,
    metavar="NAME",
    help="Keep this one of hepinfra's credentials in COMMAND's environment (repeatable); without it, every "
    "HEPGG_*, HEPINFRA_STATE_* and HEPINFRA_LOCAL_* variable and every credential variable the manifest "
    "names is removed.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(manifest_file: str, env: str, pass_env: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Run COMMAND with the environment's rendered dotenv values in its environment (never its arguments).

    COMMAND keeps your environment except hepinfra's credentials: HEPGG_*, HEPINFRA_STATE_*,
    HEPINFRA_LOCAL_* and the variables the manifest's db_key_env, id_username_env, id_token_env,
    upload_token_env and the state block's url_env name (with the postgres state backend, libpq's
    PGPASSWORD, PGPASSFILE and PGSERVICEFILE too); --pass-env NAME keeps one."""
    import shutil

    from hepinfra import runner
    from hepinfra.safety.credentials import run_environment

    project = runner.Project.open(manifest_file)
    runner.select_environments(project.manifest, [env])
    refs = [(d.kind, d.key) for d in project.manifest.declared[env]]
    values: dict[str, str] = {}
    for per_resource in run_async(runner.resource_values(project, env, refs)).values():
        values.update(per_resource)
    program = shutil.which(command[0])
    if program is None:
        raise UsageError(f"command not found: {command[0]}")
    sys.stdout.flush()
    environ = run_environment(project.manifest, os.environ, pass_env)
    os.execve(program, list(command), {**environ, **values})  # noqa: S606 (no shell, by design)
