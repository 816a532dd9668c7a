"""``hepinfra status`` (see ``hepinfra.status``)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from hepinfra.cli.options import manifest_option, run_async


@click.command()
@manifest_option
@click.option("-e", "--env", "envs", multiple=True, metavar="ENV", help="Limit to this environment (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: every row with its fields.")
@click.option(
    "--refresh",
    is_flag=True,
    help="Also read hep.gg and the outputs back (a refreshing plan): outputs' health as the plan sees it.",
)
def status(manifest_file: str, envs: tuple[str, ...], as_json: bool, refresh: bool) -> None:
    """One row per resource: last rotated, next due (or overdue), steps an interrupted apply owes,
    the last verify, and the outputs' health. From state alone unless --refresh."""
    from hepinfra import runner
    from hepinfra import status as status_mod

    project = runner.Project.open(manifest_file)
    selected = runner.select_environments(project.manifest, envs)
    plan = None
    if refresh:

        async def go() -> Any:
            async with project.hepgg() as hub:
                rotate = runner.parse_rotate(project.manifest, selected, ())
                return await runner.make(project, hub, selected, refresh=True, rotate=rotate)

        plan, _, states = run_async(go())
    else:
        states = project.states(selected)
    now = datetime.now(UTC)
    found = status_mod.rows({e: project.manifest.declared[e] for e in selected}, states, now, plan)
    if as_json:
        doc = {"refreshed": refresh, "at": now.isoformat(), "resources": [r.as_json() for r in found]}
        click.echo(json.dumps(doc, sort_keys=True))
        return
    table = [status_mod.columns(r, now) for r in found]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        grid = Table(*status_mod.HEADERS, title="state" + (" and a refreshing plan" if refresh else " only"))
        for row, cells in zip(found, table, strict=True):
            style = "red" if row.overdue or row.verify_ok is False or row.owed else None
            grid.add_row(*cells, style=style)
        Console().print(grid)
        return
    widths = [max(len(h), *(len(c[i]) for c in table)) for i, h in enumerate(status_mod.HEADERS)]
    for cells in [status_mod.HEADERS, *table]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
