"""The apply steps of the ``databases`` kind: create, adopt, rotate, render.

Crash safety, by construction (each intent is journaled right before its remote call, while
holding the call's slot, so a step that never started is never journaled):
- create: intent (name) durable -> POST -> outputs, each on its own -> database, records and
  the outputs still owed. Killed after the POST: the next plan finds the name and adopts it.
- rotate: Reveal (the "before" digest, never stale) -> intent durable -> POST rotate -> every
  output attempted -> rotation recorded done, only failed outputs owed. Killed after the POST:
  the next plan finishes it with Reveal against the before digest, never a second rotate.
- render: Reveal -> intent (outputs) durable -> files -> records. Killed: rendered again.
Must not: rotate a database twice in one run, or let a password reach an event, error or state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hepinfra.apply.executor import Outcome, Tracker
from hepinfra.apply.executor import now as _now
from hepinfra.apply.ledger import with_entry
from hepinfra.apply.writer import Failure
from hepinfra.errors import ApiError, OutputError
from hepinfra.hepgg.models import DatabaseCredentials
from hepinfra.outputs.base import db_context
from hepinfra.plan import Action, Change
from hepinfra.state.model import JournalEntry, ManagedDatabase, State

if TYPE_CHECKING:
    from hepinfra.apply.executor import Executor


async def _finish(
    ex: Executor,
    change: Change,
    creds: DatabaseCredentials,
    entry: JournalEntry,
    update_db: Callable[[ManagedDatabase | None], ManagedDatabase],
) -> tuple[list[Failure], float]:
    def update(s: State) -> State:
        return s.model_copy(update={"databases": {**s.databases, change.key: update_db(s.databases.get(change.key))}})

    return await ex.finish(change, db_context(creds), creds.password.get_secret_value(), entry, update)


async def create(ex: Executor, change: Change) -> Outcome:
    outputs = tuple(t.path for t in ex.targets(change))
    intent = JournalEntry(op="create", database=change.key, name=change.name, started_at=_now(), outputs=outputs)
    await ex.journal(change, intent, urgent=True, early=True)  # a whole batch of intents in one write
    creds = await ex.calls(change).mutate(None, lambda c: c.create(change.name, change.engine))
    now = _now()
    managed = ManagedDatabase(
        key=change.key,
        name=creds.name,
        id=creds.id,
        engine=creds.engine,
        created_at=creds.created_at or now,
        managed_since=now,
        rotated_at=now,
    )
    owed = intent.model_copy(update={"op": "render", "database_id": creds.id})
    failures, _ = await _finish(ex, change, creds, owed, lambda db: db or managed)
    note = "created (answer lost; found by name)" if creds.recovered else "created"
    return ex.outcome(change, note, failures)


async def adopt(ex: Executor, change: Change) -> Outcome:
    assert change.database_id is not None
    creds = await ex.calls(change).reveal(change.database_id)
    now = _now()
    intent = JournalEntry(
        op="render",
        database=change.key,
        name=change.name,
        database_id=creds.id,
        started_at=now,
        outputs=tuple(t.path for t in ex.targets(change)),
    )
    adopted = ManagedDatabase(
        key=change.key,
        name=creds.name,
        id=creds.id,
        engine=creds.engine,
        created_at=creds.created_at,
        managed_since=now,
        adopted=True,
    )

    def take_over(s: State) -> State:
        journal = tuple(j for j in s.journal if j.database != change.key)
        return with_entry(
            s.model_copy(update={"databases": {**s.databases, change.key: adopted}, "journal": journal}), intent
        )

    ex.trackers.setdefault(change.address, Tracker()).in_flight = True
    await ex.ledgers[change.env].commit(take_over)
    failures, _ = await _finish(ex, change, creds, intent, lambda db: db or adopted)
    if change.rotate_after_adopt and not failures:
        rotated = await rotate(ex, change.model_copy(update={"action": Action.ROTATE}))
        rotated.action = change.action.value
        rotated.message = "adopted, then " + rotated.message
        return rotated
    note = "adopted" + (
        "; the requested rotation waits until its outputs can be written"
        if failures and change.rotate_after_adopt
        else ""
    )
    return ex.outcome(change, note, failures)


async def rotate(ex: Executor, change: Change) -> Outcome:
    """Rotate once. The "before" digest comes from a Reveal right before the call, so it cannot be
    stale (a rotation in the dashboard, a changed key). An interrupted or unanswered rotation is
    settled by comparing the revealed password with it: changed means it happened (finish: write
    outputs); unchanged means it never reached hep.gg (rotate now: the first rotation, not a second)."""
    assert change.database_id is not None
    if change.database_id in ex.rotated:
        return Outcome(change.address, change.action.value, False, "refused: already rotated in this run")
    ex.rotated.add(change.database_id)
    ledger = ex.ledgers[change.env]
    calls = ex.calls(change)
    digest = ex.access[change.env].digester(ledger.state)
    entry = next((j for j in ledger.state.pending(change.key) if j.op == "rotate"), None)
    creds: DatabaseCredentials | None = None
    note = "rotated"
    finished_earlier = False  # the rotation happened in an earlier run: keep its time
    revealed = await calls.reveal(change.database_id)
    now_digest = digest(revealed.password.get_secret_value())
    if change.finish_rotation and entry is not None and now_digest == entry.password_digest:
        # unchanged: it never reached hep.gg, or it is still on its way (a killed run's request can
        # land late): wait until no request of that run can still be in flight, then look again
        wait = ex.settle_s - (_now() - entry.started_at).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
            revealed = await calls.reveal(change.database_id)
            now_digest = digest(revealed.password.get_secret_value())
    if change.finish_rotation and entry is not None:
        if entry.password_digest is None or now_digest != entry.password_digest:
            # changed, or no digest to tell (an older state): finish, never risk a second rotation
            creds, note = revealed, "finished an interrupted rotation (Reveal, no second rotate)"
            finished_earlier = True
        else:
            note = "the interrupted rotation never reached hep.gg: rotated now"
    if creds is None:
        entry = JournalEntry(
            op="rotate",
            database=change.key,
            name=change.name,
            database_id=change.database_id,
            started_at=_now(),
            outputs=tuple(t.path for t in ex.targets(change)),
            password_digest=now_digest,
        )
        intent = entry
        attempts = 0
        while creds is None:
            attempts += 1
            answer = await calls.mutate(
                lambda: ex.journal(change, intent, urgent=True), lambda c: c.rotate(change.database_id)
            )
            if not answer.recovered or digest(answer.password.get_secret_value()) != intent.password_digest:
                creds = answer
                if answer.recovered:
                    note = "rotated (answer lost; current password revealed)"
            elif attempts >= 3:
                raise ApiError(
                    f"{change.address}: the rotation could not be confirmed after {attempts} tries",
                    hint="run the apply again; the journal keeps it pending",
                )
    assert entry is not None
    rotated_at = entry.started_at if finished_earlier else _now()
    # the old password is dead from here: write every output before anything else; the rotation is
    # recorded done whatever the outputs do, and only the failed ones stay owed
    failures, window = await _finish(ex, change, creds, entry, lambda db: _rotated(db, rotated_at))
    return ex.outcome(change, note, failures, window)


async def render(ex: Executor, change: Change) -> Outcome:
    assert change.database_id is not None
    paths = tuple(o.path for o in change.outputs)
    if paths:
        creds = await ex.calls(change).reveal(change.database_id)
        intent = JournalEntry(
            op="render",
            database=change.key,
            name=change.name,
            database_id=change.database_id,
            started_at=_now(),
            outputs=paths,
        )
        await ex.journal(change, intent)
        failures, _ = await _finish(ex, change, creds, intent, lambda db: db or _missing(change))
    else:
        ledger = ex.ledgers[change.env]
        retire = ex.retirable(change, ledger.state)
        failures = await ex.writer.retire(retire, ex.access[change.env].digester(ledger.state))
        gone = {State.output_id(change.key, r.path) for r in retire}
        await ex.ledgers[change.env].commit(
            lambda s: s.model_copy(update={"outputs": {k: v for k, v in s.outputs.items() if k not in gone}})
        )
    return ex.outcome(change, f"rendered {len(paths)} output(s)", failures)


def _rotated(db: ManagedDatabase | None, at: datetime) -> ManagedDatabase:
    assert db is not None
    return db.model_copy(update={"rotated_at": at, "rotations": db.rotations + 1})


def _missing(change: Change) -> ManagedDatabase:
    raise OutputError(f"{change.address}: not in state any more; make a new plan")


async def value_of(
    hub: Any, access: Any, managed: ManagedDatabase, decl: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """By Reveal: hep.gg is the password store."""
    from hepinfra.errors import UsageError

    if access.key is None:
        raise UsageError(f"no database key for environment '{access.env}': export {access.source}")
    value = db_context(await hub.databases(access.key).reveal(managed.id))
    return value, {f: value[f] for f in ("connection_string", "host", "port", "db_name", "user", "password")}


STEPS = {
    Action.CREATE: create,
    Action.ADOPT: adopt,
    Action.ROTATE: rotate,
    Action.RENDER: render,
    Action.FORGET: lambda ex, change: ex.forget(change),
}
