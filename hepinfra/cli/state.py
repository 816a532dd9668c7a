"""``hepinfra state ...``: inspect and repair state (no secret in plain text: ids only encrypted)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from hepinfra.cli.options import env_option, lock_timeout_option, manifest_option, parse_address, parse_timeout
from hepinfra.errors import UsageError

if TYPE_CHECKING:
    from hepinfra.state.model import State

# --- state ---------------------------------------------------------------------------------------


@click.group()
def state() -> None:
    """Inspect and repair state (no secret in plain text: ids are kept encrypted)."""


@state.command("list")
@manifest_option
@env_option
def state_list(manifest_file: str, envs: tuple[str, ...]) -> None:
    """List managed resources: address, then a database's platform name, id and engine; an id's type;
    an upload's file and URL."""
    from hepinfra import runner
    from hepinfra.safety.paths import shown

    project = runner.Project.open(manifest_file)
    for env in runner.select_environments(project.manifest, envs):
        current = project.backend.read(env)
        if current is None:
            continue
        rows: list[tuple[str, ...]] = [(f"{env}/databases.{k}", d.name, d.id, d.engine) for k, d in sorted(
            current.databases.items())]  # fmt: skip
        rows += [(f"{env}/ids.{k}", i.type) for k, i in sorted(current.ids.items())]
        rows += [(f"{env}/uploads.{k}", u.file, u.url) for k, u in sorted(current.uploads.items())]
        for fields in rows:  # state is input: escaped, one line each
            click.echo("\t".join(shown(str(f), 200) for f in fields))


@state.command("show")
@manifest_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default=None,
    help="text (the default on a terminal) or json (the default otherwise: a pipe, a file).",
)
@click.argument("address")
def state_show(manifest_file: str, fmt: str | None, address: str) -> None:
    """Show one managed resource and its output records (digests only; an id's value stays encrypted)."""
    import json
    import sys

    from hepinfra import runner
    from hepinfra.values import ref_of

    project = runner.Project.open(manifest_file)
    env, kind, key = parse_address(project.manifest, project.manifest.environments, address)
    current = project.backend.read(env)
    managed = getattr(current, kind).get(key) if current is not None else None
    if current is None or managed is None:
        raise UsageError(f"{address}: not in the state of environment '{env}'")
    ref = ref_of(kind, key)
    out = {
        "address": f"{env}/{kind}.{key}",
        kind.removesuffix("s"): managed.model_dump(mode="json"),
        "outputs": [r.model_dump(mode="json") for r in current.outputs.values() if r.database == ref],
        "journal": [j.model_dump(mode="json") for j in current.pending(ref)],
    }
    if (fmt or ("text" if sys.stdout.isatty() else "json")) == "text":
        from hepinfra.cli.state_show import show_text

        click.echo(show_text(out), nl=False)
        return
    click.echo(json.dumps(out, indent=2, sort_keys=True))


@state.command("rm")
@manifest_option
@lock_timeout_option
@click.argument("addresses", nargs=-1, required=True)
def state_rm(manifest_file: str, lock_timeout: str, addresses: tuple[str, ...]) -> None:
    """Stop managing resources (databases and uploads stay on hep.gg; outputs stay where they are)."""
    from hepinfra import runner

    project = runner.Project.open(manifest_file)
    targets = [parse_address(project.manifest, project.manifest.environments, a) for a in addresses]
    for env, kind, key in runner.remove_from_state(project, targets, parse_timeout(lock_timeout)):
        where = {"databases": "the database stays on hep.gg", "uploads": "the file stays published at its URL"}
        click.echo(f"Removed {env}/{kind}.{key} from state; {where.get(kind, 'its value is gone from state')}.")


@state.command("mv")
@manifest_option
@lock_timeout_option
@click.argument("source")
@click.argument("destination")
def state_mv(manifest_file: str, lock_timeout: str, source: str, destination: str) -> None:
    """Rename a resource in state (as a moved: entry does at apply): same environment and kind; nothing
    changes on hep.gg, nothing is rotated; its history and output records are kept."""
    from hepinfra import runner
    from hepinfra.cli.options import run_async
    from hepinfra.state_mv import state_mv as move

    project = runner.Project.open(manifest_file)
    envs = project.manifest.environments
    src = parse_address(project.manifest, envs, source)
    if "/" not in destination:  # DST in SRC's environment
        destination = f"{src[0]}/{destination}"
    dst = parse_address(project.manifest, envs, destination)
    stored = run_async(move(project, src, dst, parse_timeout(lock_timeout)))
    click.echo(
        f"Moved {src[0]}/{src[1]}.{src[2]} to {dst[0]}/{dst[1]}.{dst[2]} in state (serial {stored.serial}); "
        "nothing changed on hep.gg."
    )


@state.command("rekey")
@manifest_option
@env_option
@lock_timeout_option
def state_rekey(manifest_file: str, envs: tuple[str, ...], lock_timeout: str) -> None:
    """Seal every value state keeps sealed (ids) again under a new HEPINFRA_STATE_KEY, opened with
    HEPINFRA_STATE_KEY_OLD: per environment, under its lock, all or nothing, one new serial each.
    The values do not change; a later run with the old key is refused."""
    import os

    from hepinfra import runner
    from hepinfra.state_rekey import Rekeyed
    from hepinfra.state_rekey import state_rekey as rekey

    project = runner.Project.open(manifest_file)

    def report(done: Rekeyed) -> None:
        if done.status == "rekeyed":
            click.echo(
                f"Re-sealed the state of '{done.env}' under the new key: {done.sealed} value(s) "
                f"(serial {done.serial}); the previous version is its backup."
            )
        elif done.status == "already":
            click.echo(f"Already under the new key: the state of '{done.env}' (a rekey that stopped partway); skipped.")
        else:
            click.echo(f"Nothing sealed in the state of '{done.env}'; skipped.")

    rekey(project, envs, parse_timeout(lock_timeout), dict(os.environ), report)


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
@click.option("--force", is_flag=True, help="Clear it even though its holder is still running.")
@click.argument("lock_id")
def state_unlock(manifest_file: str, env: str, lock_id: str, force: bool) -> None:
    """Clear a stuck lock by its id (the lock error names it)."""
    from hepinfra import runner
    from hepinfra.errors import LockError

    project = runner.Project.open(manifest_file)
    runner.select_environments(project.manifest, [env])
    holder = project.backend.lock_holder(env)
    if not force and holder is not None and holder.id == lock_id and project.backend.holder_alive(env):
        raise LockError(
            f"the lock of environment '{env}' is held by a process that is still running: {holder.describe()}",
            hint="stop that run (Ctrl-C or SIGTERM unwinds it and releases the lock), or add --force: its "
            "state writes would then race with the next run's",
        )
    project.backend.unlock(env, lock_id, force=force)
    click.echo(f"Unlocked the state of '{env}'.")


@state.command("migrate")
@manifest_option
@lock_timeout_option
@click.option(
    "--from",
    "source",
    type=click.Choice(["local"]),
    required=True,
    help="Where the state is now: local (.hepinfra/state next to the manifest).",
)
@click.option("--force", is_flag=True, help="Overwrite environments the target already holds a state for.")
def state_migrate(manifest_file: str, lock_timeout: str, source: str, force: bool) -> None:
    """Copy every environment's state to the manifest's state: backend (lineage and serial kept)."""
    from hepinfra import runner

    project = runner.Project.open(manifest_file)

    def report(env: str, stored: State, copied: bool) -> None:
        done = "Copied the state of" if copied else "Already there: the state of"
        click.echo(
            f"{done} '{env}' (lineage {stored.lineage}, serial {stored.serial}, "
            f"{len(stored.databases)} database(s)) to {project.backend.where}."
        )

    runner.migrate_state(project, force=force, timeout=parse_timeout(lock_timeout), report=report)
    click.echo("The local files stay in .hepinfra/state; remove them once the new backend has served a run.")
