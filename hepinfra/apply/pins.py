"""A saved plan's pins: refuse it when the state or hep.gg moved on since it was made.

Owns: comparing each environment's lineage, serial and List digest with the plan's.
Must not: change anything.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hepinfra.errors import ApiError, StalePlanError
from hepinfra.fetch import EnvAccess
from hepinfra.hepgg import Hepgg
from hepinfra.hepgg.models import DatabaseSummary
from hepinfra.manifest import Manifest
from hepinfra.state.model import State
from hepinfra.values import Action, Change, Plan, remote_digest


def check_pins(plan: Plan, states: dict[str, State | None], remote: dict[str, str | None]) -> None:
    """Refuse a saved plan whose state or remote moved on since it was made; say what changed."""
    for env, pin in plan.environments.items():
        state = states.get(env)
        lineage, serial = (state.lineage, state.serial) if state else (None, 0)
        if lineage != pin.lineage and pin.lineage is not None:
            raise StalePlanError(
                f"the state of '{env}' is another lineage than the plan's ({lineage} vs {pin.lineage})",
                hint="make a new plan",
            )
        if serial != pin.serial:
            raise StalePlanError(
                f"the state of '{env}' changed since the plan was made (serial {pin.serial} -> {serial})",
                hint="make a new plan; a plan file applies once",
            )
        if pin.remote_digest is not None and remote.get(env) != pin.remote_digest:
            raise StalePlanError(
                f"the databases on hep.gg for '{env}' changed since the plan was made", hint="make a new plan"
            )


async def current_remote(
    hepgg: Hepgg, access: dict[str, EnvAccess], envs: list[str]
) -> dict[str, list[DatabaseSummary] | None]:
    """List each environment's databases now (None where it cannot be listed)."""

    async def one(env: str) -> list[DatabaseSummary] | None:
        key = access[env].key
        if key is None:
            return None if access[env].needs_key else []  # no databases: nothing to list
        try:
            return await hepgg.databases(key).list()
        except ApiError:
            return None

    return dict(zip(envs, await asyncio.gather(*(one(e) for e in envs)), strict=True))


def remote_digests(rows: dict[str, list[DatabaseSummary] | None]) -> dict[str, str | None]:
    return {env: (remote_digest(found) if found is not None else None) for env, found in rows.items()}


def check_changes(
    plan: Plan, manifest: Manifest, states: dict[str, State | None], rows: dict[str, list[DatabaseSummary] | None]
) -> None:
    """A saved plan is data from disk: every change must be one this manifest, the pinned state and
    hep.gg's List can have produced. Above all, a database id is never taken on the plan's word (an
    edited id would send one database's credentials into another's outputs, or rotate a stranger)."""
    declared = {d.address: d for decls in manifest.declared.values() for d in decls}

    def refuse(change: Change, why: str) -> StalePlanError:
        return StalePlanError(
            f"the saved plan's change of {change.address} {why}; it was not made from this manifest and state "
            "(edited?)",
            hint="make a new plan",
        )

    from hepinfra.kinds import KINDS
    from hepinfra.moves import plan_moves
    from hepinfra.values import ref_of

    seen: set[str] = set()
    moved: dict[str, State | None] = {}
    for change in plan.changes:
        if change.address in seen:
            raise refuse(change, "appears twice")
        seen.add(change.address)
        if change.env not in plan.environments:
            raise refuse(change, "is for an environment the plan does not pin")
        if change.kind not in KINDS or change.address != f"{change.env}/{change.kind}.{change.key}":
            raise refuse(change, "has an address that does not match its environment, kind and key")
        state = states.get(change.env)
        if change.action is Action.MOVE:
            if not _move_planned(change, manifest, state, declared):
                raise refuse(change, "is a move no moved: entry of this manifest gives the pinned state")
            continue
        if change.env not in moved:  # every other change is checked against the state after the renames
            moved[change.env] = plan_moves(manifest, change.env, state)[2]
        state = moved[change.env]
        decl = declared.get(change.address)
        ref = ref_of(change.kind, change.key)
        if change.action is not Action.FORGET:
            if decl is None or (decl.name, decl.engine) != (change.name, change.engine):
                raise refuse(change, "does not match the manifest's declaration")
            if not {o.path for o in change.outputs} <= {t.path for t in decl.outputs}:
                raise refuse(change, "writes outputs the manifest does not declare")
            records = {r.path for r in state.outputs.values() if r.database == ref} if state else set()
            if not set(change.retire) <= records:
                raise refuse(change, "retires outputs the state has no record of")
        if not KINDS[change.kind].needs_database_key:  # no remote id: what state holds decides
            held = state is not None and change.key in getattr(state, change.kind)
            if change.database_id is not None or change.action is Action.ADOPT:
                raise refuse(change, "names a remote id, which this kind has none of")
            if change.action is Action.FORGET and (decl is not None or not held):
                raise refuse(change, "forgets a resource that is declared or not managed")
            if change.action is Action.CREATE and held:
                raise refuse(change, "creates a resource the pinned state already manages")
            if change.action in (Action.ROTATE, Action.RENDER, Action.NOOP) and not held:
                raise refuse(change, "changes a resource the pinned state does not manage")
            continue
        managed = state.databases.get(change.key) if state else None
        listed = {d.id: d for d in rows.get(change.env) or []}
        if change.action is Action.FORGET:
            if decl is not None or managed is None or managed.id != change.database_id:
                raise refuse(change, "forgets a database that is declared or not managed under that id")
            continue
        if change.action is Action.CREATE:
            ok = change.database_id is None
        elif change.action is Action.ADOPT:
            found = listed.get(change.database_id or "")
            ok = found is not None and found.name == change.name
        else:  # rotate, render, noop: the managed database, as the pinned state knows it
            ok = managed is not None and managed.id == change.database_id and change.database_id in listed
        if not ok:
            raise refuse(change, "names a database id that the pinned state and hep.gg do not give it")


def _move_planned(change: Change, manifest: Manifest, state: State | None, declared: dict[str, Any]) -> bool:
    """A saved plan's move: a ``moved:`` entry of this manifest, from a resource the pinned state holds (its
    database id as state knows it) to a declared one the state does not hold."""
    held = getattr(state, change.kind) if state is not None else {}
    managed = held.get(change.key)
    target = declared.get(change.moved_to or "")
    entry = any(
        (m.kind, m.source) == (change.kind, change.key)
        and m.applies_to(change.env)
        and f"{change.env}/{m.kind}.{m.target}" == change.moved_to
        for m in manifest.moves
    )
    return (
        entry
        and managed is not None
        and target is not None
        and target.key not in held
        and (target.name, target.engine) == (change.name, change.engine)
        and getattr(managed, "id", None) == change.database_id
    )


def check_same(saved: Plan, fresh: Plan, where: str) -> None:
    """A saved plan is applied only where planning again from the manifest, state and hep.gg gives the
    same change set (``changeset.change_set``): an edited action, reason, output or retire is refused."""
    from hepinfra.changeset import change_set

    mine = {c["address"]: c for c in change_set(saved)}
    now = {c["address"]: c for c in change_set(fresh)}
    for address in sorted(mine.keys() | now.keys()):
        before, after = mine.get(address), now.get(address)
        if before == after:
            continue
        if before is None or after is None:
            what = (
                f"plans no change of {address}, which a plan made now would {after['action'] if after else ''}"
                if before is None
                else f"plans to {before['action']} {address}, which a plan made now does not"
            )
        else:
            field = next(k for k in before if before[k] != after.get(k))
            what = f"plans {before['action']} of {address}, which a plan made now does not give ({field} differs)"
        raise StalePlanError(
            f"{where}: the saved plan {what}; nothing was applied (edited, or the world changed since)",
            hint="make a new plan",
        )
