"""``hepinfra import`` and ``hepinfra init`` (see ``hepinfra.onboard``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from hepinfra.cli.options import manifest_option, run_async
from hepinfra.errors import UsageError


@click.command("import")
@manifest_option
@click.option("-e", "--env", "env", required=True, metavar="ENV", help="The environment whose account is listed.")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    help="Write the fragment to this new file (never over an existing one) instead of stdout.",
)
def import_command(manifest_file: str, env: str, out: str | None) -> None:
    """Declare the databases an account already has: a manifest fragment (engine, and name: where the
    key differs) that the next apply adopts without rotating."""
    from hepinfra import onboard, runner
    from hepinfra.fetch import database_access

    project = runner.Project.open(manifest_file)
    manifest = project.manifest
    runner.select_environments(manifest, [env])
    target = Path(out) if out else None
    if target is not None and (target.exists() or target.is_symlink()):
        raise UsageError(f"--out {out}: the file exists; nothing was written (choose a new file)")

    async def listed() -> list[onboard.Row]:
        async with project.hepgg() as hub:
            access = database_access(manifest, env, hub)
            if access.key is None:
                raise UsageError(f"no database key for environment '{env}': export {access.source}")
            rows = await hub.databases(access.key).list()
        return [onboard.Row(r.name, r.engine) for r in rows]

    rows = run_async(listed())
    declared = {d.name for d in manifest.declared[env] if d.kind == "databases"}
    result = onboard.fragment(
        env,
        rows,
        declared_names=declared,
        keys_taken=set(manifest.model.section("databases")),
        scoped=len(manifest.model.environments) > 1,
        source=manifest.path.name,
    )
    if target is None:
        click.echo(result.text, nl=False)
    else:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(target, flags, 0o644)
        except OSError as exc:
            raise UsageError(f"--out {out}: cannot create it ({exc.strerror})") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(result.text)
    click.echo(f"{result.declared} database(s) to adopt from environment '{env}'", err=True)
    for why in result.skipped:
        click.echo(f"left out: {why}", err=True)


@click.command()
@click.option(
    "--env",
    "envs",
    multiple=True,
    metavar="ENV",
    help="An environment (repeatable; default: staging and production, asked on a terminal).",
)
@click.option("--url", default="https://hep.gg", show_default=True, help="hep.gg's URL (local: the embedded one).")
@click.option("--ci", type=click.Choice(["github", "none"]), default="github", show_default=True, help="CI workflow.")
@click.option("--dir", "directory", default=".", type=click.Path(file_okay=False), help="Where to scaffold.")
def init(envs: tuple[str, ...], url: str, ci: str, directory: str) -> None:
    """Scaffold a project: hepinfra.yaml, .gitignore entries and a CI workflow (asks nothing on a
    non-terminal; never overwrites a file)."""
    import re

    from hepinfra import onboard

    root = Path(directory)
    manifest = root / "hepinfra.yaml"
    workflow = root / ".github" / "workflows" / "hepinfra.yaml"
    if manifest.exists() or manifest.is_symlink():
        raise UsageError(f"{manifest}: a manifest is already there; nothing was written")
    if not envs and sys.stdin.isatty() and sys.stdout.isatty():
        answer = click.prompt("Environments (comma-separated)", default="staging,production")
        envs = tuple(e.strip() for e in answer.split(",") if e.strip())
    envs = envs or ("staging", "production")
    bad = [e for e in envs if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", e)]
    if bad:
        raise UsageError(f"--env {bad[0][:40]!r}: an environment is letters, digits, '-' and '_'")
    if url != "local" and not url.startswith("https://"):
        raise UsageError("--url: https://… or local")
    wrote = []
    root.mkdir(parents=True, exist_ok=True)
    _create(manifest, onboard.manifest_text(envs, url))
    wrote.append(str(manifest))
    ignore = root / ".gitignore"
    present = ignore.read_text(encoding="utf-8").splitlines() if ignore.is_file() else []
    missing = [line for line in onboard.GITIGNORE if line not in present]
    if missing:
        with ignore.open("a", encoding="utf-8") as f:
            f.write(("\n" if present and present[-1] != "" else "") + "\n".join(missing) + "\n")
        wrote.append(f"{ignore} (+{len(missing)})")
    if ci == "github" and not workflow.exists():
        workflow.parent.mkdir(parents=True, exist_ok=True)
        _create(workflow, onboard.WORKFLOW)
        wrote.append(str(workflow))
    for line in wrote:
        click.echo(f"wrote {line}")
    click.echo("next: export HEPGG_DB_KEY (or HEPGG_DB_KEY_<ENV>), then 'hepinfra plan'")


def _create(path: Path, text: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise UsageError(f"{path}: cannot create it ({exc.strerror})") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
