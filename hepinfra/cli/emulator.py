"""``hepinfra emulator``: the local hep.gg on a port (flags -> config, seeds, serve until a signal)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from hepinfra.cli.options import manifest_option, raw_stdout
from hepinfra.errors import UsageError

_DEFAULT = click.core.ParameterSource.DEFAULT

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


def _server_url(value: str | None, kind: str) -> tuple[str, str] | None:
    """(admin URL, where it came from) for ``--postgres``/``--mariadb``, or None (simulated).
    Credentials never come from argv: the URL is read from HEPINFRA_LOCAL_<ENGINE> or the
    variable ``env:NAME`` names; a URL given on the command line must carry no password."""
    from hepinfra.emulator.engines import ENV_VARS, has_password
    from hepinfra.safety.redact import register

    var, flag = ENV_VARS[kind], f"--{kind}"
    if value is None:
        found = os.environ.get(var, "").strip()
        return (found, var) if found else None
    if value.startswith("env:"):
        return _credential(value, flag), f"{flag} env:{value[4:]}"
    if has_password(value):
        register(value)
        raise UsageError(
            f"{flag}: a password on the command line shows in the process list; "
            f"put the admin URL in {var} (or pass {flag} env:NAME)"
        )
    return value, flag


@click.group(invoke_without_command=True, subcommand_metavar="[reset [--yes] [-f FILE]]")
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
@click.option(
    "--postgres",
    "postgres_url",
    default=None,
    metavar="env:NAME|URL",
    help="Make postgres databases real on this PostgreSQL server. Its admin URL "
    "(postgresql://USER:PASSWORD@HOST:PORT/DB) is read from HEPINFRA_LOCAL_POSTGRES (the default when set) "
    "or from the variable env:NAME names; a URL here must carry no password (trust auth).",
)
@click.option(
    "--mariadb",
    "mariadb_url",
    default=None,
    metavar="env:NAME|URL",
    help="Make mariadb databases real on this MariaDB/MySQL server. Its admin URL "
    "(mysql://root:PASSWORD@HOST:PORT/) is read from HEPINFRA_LOCAL_MARIADB (the default when set) "
    "or from the variable env:NAME names; a URL here must carry no password.",
)
@click.option(
    "--role-privilege/--no-role-privilege",
    default=False,
    envvar="HEPINFRA_LOCAL_ROLE_PRIVILEGE",
    show_default=True,
    help="Real servers only: each database's hep.gg user may make roles (PostgreSQL CREATEROLE, MariaDB CREATE "
    "USER and GRANT OPTION on its database), as rotation: alternating needs. Also HEPINFRA_LOCAL_ROLE_PRIVILEGE=1.",
)
@click.pass_context
def emulator(ctx: click.Context, /, **opts: Any) -> None:
    """Run the local hep.gg (all three APIs on one port) until SIGINT/SIGTERM.

    Databases are simulated, unless a real server is given for their engine (--postgres,
    --mariadb, or HEPINFRA_LOCAL_POSTGRES / HEPINFRA_LOCAL_MARIADB in the environment): then
    each create makes a real database and login, Reveal returns its password, Rotate changes
    it on the server (the old one stops working at once), and connection strings point there.
    Passwords are never taken from the command line. Needs pip install 'hepinfra[verify]'.

    'hepinfra emulator reset' clears a manifest's local sandbox instead (see its --help).
    """
    if ctx.invoked_subcommand is not None:  # reset: the serving options mean nothing to it
        given = [p.opts[0] for p in ctx.command.params if ctx.get_parameter_source(p.name or "") is not _DEFAULT]
        if given:
            raise UsageError(f"{given[0]} is an option of the emulator itself, not of 'emulator reset'")
        return
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
    try:
        Path(opts["data_dir"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UsageError(f"--data {opts['data_dir']}: cannot keep the emulator's world there: {exc.strerror}") from None
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
    servers = _servers(opts["postgres_url"], opts["mariadb_url"])
    config = EmulatorConfig(
        engines=engines,
        password_chars=opts["password_chars"] or None,
        password_length=opts["password_length"],
        db_host=opts["db_host"],
        faults=faults,
        seed=opts["fault_seed"],
        servers=servers,
        role_privilege=opts["role_privilege"],
    )
    try:
        app = build_app(Path(opts["data_dir"]), config, seeds, slots=opts["slots"])
    except OSError as exc:
        raise UsageError(f"--data {opts['data_dir']}: cannot keep the emulator's world there: {exc.strerror}") from None

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
        for kind, server in servers.items():
            click.echo(f"{kind} databases are real, on the server at {server.address}")
        sys.stdout.flush()

    serve_forever(app, opts["host"], opts["port"], announce=announce)


def _servers(postgres: str | None, mariadb: str | None) -> dict[str, Any]:
    """The real servers asked for, each reached once now (an error names where its URL came from)."""
    from hepinfra.emulator.engines import connect

    servers = {}
    for kind, value in (("postgres", postgres), ("mariadb", mariadb)):
        found = _server_url(value, kind)
        if found is not None:
            servers[kind] = connect(kind, *found)
    return servers


@emulator.command("reset")
@manifest_option
@click.option("--yes", "yes", is_flag=True, help="Do not ask (needed when not run on a terminal).")
def reset(manifest_file: str, yes: bool) -> None:
    """Clear the local hep.gg of a manifest (hepgg: {url: local}: its databases, ids, uploads and
    credentials under .hepinfra/local) and the manifest's state, after asking. Refused for a
    manifest whose hep.gg is not local, and while a run holds a lock."""
    from hepinfra import runner, sandbox

    project = runner.Project.open(manifest_file)
    found = sandbox.sandbox_of(project, os.environ)
    if not yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UsageError(
                f"emulator reset would clear {found.describe()}; not a terminal, so it cannot ask: pass --yes "
                "(nothing was cleared)"
            )
        click.echo(f"This clears {found.describe()}.")
        click.echo("Outputs already written stay as they are; the next apply creates everything again.")
        answer = click.prompt("Clear it? Only 'yes' will be accepted", default="", show_default=False)
        if answer.strip() != "yes":
            click.echo("Nothing was cleared.")
            return
    cleared = sandbox.reset(project, found)
    envs = f"the state of {', '.join(cleared)}" if cleared else "no state (there was none)"
    click.echo(f"Cleared the local hep.gg ({found.world}) and {envs}; the next apply creates everything again.")
