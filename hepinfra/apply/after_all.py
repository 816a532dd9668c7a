"""``after_rotate_once``: identical ``after_rotate`` hooks of the databases rotated in one run run
once, after every change of the run, with ``HEPINFRA_ADDRESSES`` listing those databases.

Each database's hook is journaled as owed (a ``hook`` entry) by its own rotation and stays owed
until the one run succeeds, so a kill before it (or a failure of it) runs it on the next apply,
again once for the group. A database whose outputs or verification are still owed is left out:
its hook waits for them, as a per-database hook does.

Owns: grouping (the same argv, timeout, pass_env, working directory) and recording the result.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from hepinfra.crashpoints import kill_point
from hepinfra.errors import OutputError

if TYPE_CHECKING:
    from hepinfra.values import Declared


async def run_once_hooks(ex: Any, result: Any) -> None:
    """``ex``: the Executor (its ledgers, manifest, emit); ``result``: its ApplyResult so far."""
    from hepinfra.apply.hooks import run_hook
    from hepinfra.apply.ledger import without_steps
    from hepinfra.apply.writer import Failure
    from hepinfra.daemon import in_daemon_thread

    groups: dict[tuple[Any, ...], list[Declared]] = {}
    for env, ledger in ex.ledgers.items():
        declared = {d.address: d for d in ex.manifest.declared.get(env, ())}
        owed: dict[str, set[str]] = {}
        for entry in ledger.state.journal:
            owed.setdefault(entry.database, set()).add(entry.op)
        for ref, ops in owed.items():
            decl = declared.get(f"{env}/databases.{ref}")
            waiting = ops & {"create", "rotate", "render", "verify"}  # its hook waits for them
            if decl is None or not decl.hook_once or "hook" not in ops or waiting:
                continue
            key = (decl.after_rotate, decl.after_rotate_timeout, decl.hook_pass_env, decl.hook_scrub)
            groups.setdefault(key, []).append(decl)
    by_address = {o.address: o for o in result.outcomes}
    for decls in groups.values():
        decls.sort(key=lambda d: d.address)
        kill_point("hook")
        try:
            ran = await in_daemon_thread(run_hook, decls[0], ex.manifest.project_dir, [], tuple(decls))
        except OutputError as exc:
            ex.emit(_event(decls, False, f"after_rotate failed: {exc.message}; it stays owed by each"))
            for decl in decls:
                outcome = by_address.get(decl.address)
                if outcome is not None:
                    outcome.ok = False
                    outcome.failures.append(Failure("after_rotate", decl.after_rotate[0], exc.message))
                    outcome.message = f"{outcome.message}; after_rotate (once for {len(decls)}) failed: {exc.message}"
            continue
        ex.emit(_event(decls, True, ran.describe(), ran.as_event()))
        for decl in decls:
            await ex.ledgers[decl.env].commit(functools.partial(without_steps, database=decl.ref, done=["hook"]))
            outcome = by_address.get(decl.address)
            if outcome is not None:
                outcome.hook = {**ran.as_event(), "once_for": len(decls)}
                outcome.message = f"{outcome.message}; {ran.describe()} (once for {len(decls)} database(s))"


def _event(decls: list[Declared], ok: bool, message: str, hook: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``after_rotate_once`` event of ``apply --json`` (its own line in text: not a change)."""
    event: dict[str, Any] = {"event": "after_rotate_once", "addresses": [d.address for d in decls], "ok": ok}
    event["message"] = message
    if hook is not None:
        event["hook"] = hook
    return event
