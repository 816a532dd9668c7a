"""The apply steps of the ``databases`` kind: create, adopt, rotate, render.

Crash safety, by construction (each intent is journaled right before its remote call, while
holding the call's slot, so a step that never started is never journaled):
- create: intent (name) durable -> POST -> outputs, each on its own -> database, records and
  the outputs still owed. Killed after the POST: the next plan finds the name and adopts it.
- rotate: Reveal (the "before" digest, never stale) -> intent durable -> consumers held (a pooler's
  output: ``apply.cutover``; cannot: the intent goes, nothing rotated) -> POST rotate -> every
  output attempted (a held output's write completes its cut-over) -> rotation recorded done, only
  failed outputs owed. Killed after the POST: the next plan finishes it with Reveal against the
  before digest, never a second rotate; killed before it, the next apply rotates (holding again).
- render: Reveal -> intent (outputs) durable -> files -> records. Killed: rendered again.
Must not: rotate a database twice in one run, or let a password reach an event, error or state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hepinfra.apply import cutover
from hepinfra.apply.executor import Outcome, Tracker
from hepinfra.apply.executor import now as _now
from hepinfra.apply.ledger import with_entry, without_steps
from hepinfra.apply.moves import move
from hepinfra.apply.writer import Failure, failure_message
from hepinfra.crashpoints import kill_point
from hepinfra.errors import ApiError, HepinfraError, NameTakenError, OutputError
from hepinfra.hepgg.databases import LATE_S
from hepinfra.hepgg.models import DatabaseCredentials
from hepinfra.kinds import alternating_apply
from hepinfra.kinds.rules import render_note
from hepinfra.outputs.base import db_context
from hepinfra.state.model import JournalEntry, ManagedDatabase, State
from hepinfra.values import Action, Change, OutputTarget

if TYPE_CHECKING:
    from hepinfra.apply.executor import Executor
    from hepinfra.apply.hooks import HookRun
    from hepinfra.digests import Digester


async def _finish(
    ex: Executor,
    change: Change,
    creds: DatabaseCredentials,
    entry: JournalEntry,
    update_db: Callable[[ManagedDatabase | None], ManagedDatabase],
    *,
    hook: bool = False,
) -> tuple[list[Failure], After, float]:
    """The rest of the sequence after the remote step: every output (recorded with the ``verify`` and
    ``hook`` steps still owed, in one durable write) -> verify -> the after_rotate hook (``hook``).
    Each step is journaled until it is done, so a run killed anywhere resumes at the first unfinished
    one. Returns the failures, what ran after the outputs (the verification's ms, the hook), and when
    (perf_counter) consumers got working credentials: the outputs written, or with verify, the check
    passed."""
    decl = ex.decl(change)
    steps = (("verify",) if decl.verify else ()) + (("hook",) if hook and decl.after_rotate else ())

    def update(s: State) -> State:
        return s.model_copy(update={"databases": {**s.databases, change.key: update_db(s.databases.get(change.key))}})

    kill_point("outputs")
    failures, written_at = await ex.finish(
        change, db_context(creds), creds.password.get_secret_value(), entry, update, steps
    )
    if any(f.step == "render" for f in failures) or not steps:
        return failures, After(), written_at  # an output failed: verify and hook stay owed until all are written
    after = await _after(ex, change, creds, steps, failures)
    return failures, after, after.verified_at or written_at


@dataclass(frozen=True)
class After:
    """What ran after the outputs: the verification (its ms, and when it passed) and the hook."""

    verified_ms: float | None = None
    verified_at: float | None = None
    hook: HookRun | None = None


async def _after(
    ex: Executor, change: Change, creds: DatabaseCredentials, steps: tuple[str, ...], failures: list[Failure]
) -> After:
    """Run the owed ``steps`` (verify, then hook), record those done; failures are appended."""
    from hepinfra.apply.hooks import run_hook
    from hepinfra.daemon import in_daemon_thread
    from hepinfra.verify import VerifyError

    decl = ex.decl(change)
    done: list[str] = []
    verified_ms = verified_at = None
    ran: HookRun | None = None
    kill_point("verify")
    if "verify" in steps:
        try:
            verified_ms = await _verify(ex, change, creds)
            verified_at = time.perf_counter()
            done.append("verify")
        except VerifyError as exc:
            failures.append(Failure("verify", decl.name, str(exc)))
    if "hook" in steps and decl.hook_once:
        pass  # after_rotate_once: stays owed; apply.after_all runs it once, after every change of the run
    elif "hook" in steps and "verify" not in [f.step for f in failures]:
        kill_point("hook")
        try:
            values = [creds.password.get_secret_value(), creds.connection_string.get_secret_value()]
            ran = await in_daemon_thread(run_hook, decl, ex.manifest.project_dir, values)
            done.append("hook")
            kill_point("done")
        except OutputError as exc:
            failures.append(Failure("after_rotate", decl.after_rotate[0], exc.message))
    if done or "verify" in steps:
        checked = "verify" in steps
        ok = "verify" in done

        def record(s: State) -> State:
            s = without_steps(s, decl.ref, done)
            db = s.databases.get(decl.key)
            if not checked or db is None:
                return s
            last = {"verified_at": _now(), "verify_ok": ok, "verify_ms": verified_ms if ok else None}
            return s.model_copy(update={"databases": {**s.databases, decl.key: db.model_copy(update=last)}})

        await ex.ledgers[change.env].commit(record)
    return After(verified_ms, verified_at, ran)


async def _verify(ex: Executor, change: Change, creds: DatabaseCredentials) -> float:
    """Log in with the credentials of every connection string the outputs hold, at the host and port
    of hep.gg's connection string for the database (a rendered URL pointing elsewhere is not dialled)."""
    from hepinfra.verify import check_all, connection_strings, rendered_texts

    decl = ex.decl(change)
    db = db_context(creds)
    context = {
        "env": decl.env,
        "key": decl.key,
        "name": decl.name,
        "vars": ex.manifest.env_spec(decl.env).vars,
        "db": db,
    }
    urls = connection_strings(decl.engine, rendered_texts(decl.outputs, context)) or [db["connection_string"]]
    return await check_all(decl.engine, urls, db["connection_string"], decl.verify_timeout)


async def create(ex: Executor, change: Change) -> Outcome:
    outputs = tuple(t.path for t in ex.targets(change))
    ours = any(j.op == "create" for j in ex.ledgers[change.env].state.pending(change.key))  # an earlier run's
    intent = JournalEntry(op="create", database=change.key, name=change.name, started_at=_now(), outputs=outputs)
    await ex.journal(change, intent, urgent=True, early=True)  # a whole batch of intents in one write
    try:
        creds = await ex.calls(change).mutate(None, lambda c: c.create(change.name, change.engine))
    except NameTakenError:  # it exists although the plan's List did not show it: settle by name, never fail
        creds = await ex.calls(change).mutate(None, lambda c: c.await_listed(change.name, change.engine, LATE_S))
    now = _now()
    foreign = creds.taken and not ours  # made elsewhere after the plan: adopted, as the plan would have
    managed = ManagedDatabase(
        key=change.key,
        name=creds.name,
        id=creds.id,
        engine=creds.engine,
        created_at=creds.created_at or now,
        managed_since=now,
        rotated_at=None if foreign else (creds.created_at or now) if creds.taken else now,
        adopted=foreign,
    )
    owed = intent.model_copy(update={"op": "render", "database_id": creds.id})
    failures, after, _ = await _finish(ex, change, creds, owed, lambda db: db or managed)
    if creds.taken:
        note = (
            "created by an interrupted earlier run (its create landed late: 409, found by name)"
            if ours
            else "adopted (the name was created after the plan: 409, found by name)"
        )
    else:
        note = "created (answer lost; found by name)" if creds.recovered else "created"
    if _alternating(ex, change) and not failures:
        return await _then_switch(ex, change, note)
    return _outcome(ex, change, note, failures, after=after)


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
    failures, after, _ = await _finish(ex, change, creds, intent, lambda db: db or adopted)
    if _alternating(ex, change) and not failures:
        return await _then_switch(ex, change, "adopted")
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
    return _outcome(ex, change, note, failures, after=after)


async def rotate(ex: Executor, change: Change) -> Outcome:
    """Rotate once. The "before" digest comes from a Reveal right before the call, so it cannot be
    stale (a rotation in the dashboard, a changed key). An interrupted or unanswered rotation is
    settled by comparing the revealed password with it: changed means it happened (finish: write
    outputs); unchanged means it never reached hep.gg (rotate now: the first rotation, not a second)."""
    assert change.database_id is not None
    if change.database_id in ex.rotated:
        return Outcome(change.address, change.action.value, False, "refused: already rotated in this run")
    if _alternating(ex, change):
        return await alternating_apply.rotate(ex, change, ROLE_STEPS)
    ex.rotated.add(change.database_id)
    ledger = ex.ledgers[change.env]
    calls = ex.calls(change)
    digest = ex.access[change.env].digester(ledger.state)
    entry = next((j for j in ledger.state.pending(change.key) if j.op == "rotate"), None)
    creds: DatabaseCredentials | None = None
    note = "rotated"
    finished_earlier = False  # the rotation happened in an earlier run: keep its time
    revealed = await calls.reveal(change.database_id)
    answered = time.perf_counter()  # the window: from the answer that made the old password dead
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
        held: list[OutputTarget] = []  # outputs whose consumers are held across the rotate (a pooler paused)

        async def journal_then_hold() -> None:
            await ex.journal(change, intent, urgent=True)
            try:
                held[:] = await cutover.hold(change.address, ex.targets(change))
            except OutputError:  # nothing rotated: the intent goes, the change fails
                await ledger.commit(lambda s: s.model_copy(update={"journal": tuple(
                    j for j in s.journal if j.id != intent.id)}))  # fmt: skip
                raise

        while creds is None:
            attempts += 1
            try:
                answer = await calls.mutate(journal_then_hold, lambda c: c.rotate(change.database_id))
            except HepinfraError:
                await _release_unless_rotated(ex, change, held, digest, intent.password_digest)
                raise
            answered = time.perf_counter()
            if not answer.recovered or digest(answer.password.get_secret_value()) != intent.password_digest:
                creds = answer
                if answer.recovered:
                    note = "rotated (answer lost; current password revealed)"
            elif attempts >= 3:  # each answer was the old password (revealed): nothing changed
                await cutover.release(held)
                raise ApiError(
                    f"{change.address}: the rotation could not be confirmed after {attempts} tries",
                    hint="run the apply again; the journal keeps it pending",
                )
    assert entry is not None
    rotated_at = entry.started_at if finished_earlier else _now()
    # the old password is dead from here: write every output before anything else; the rotation is
    # recorded done whatever the outputs do, and only the failed ones stay owed
    failures, after, ended = await _finish(ex, change, creds, entry, lambda db: _rotated(db, rotated_at), hook=True)
    window = (ended - answered) * 1000  # the rotate answer -> outputs written (with verify: -> verified)
    return _outcome(ex, change, note, failures, window, after)


async def render(ex: Executor, change: Change) -> Outcome:
    """Write the outputs the plan names, then run what an earlier apply still owes: a verification
    (its outputs were written, the check did not pass or never ran) and an after_rotate hook. None
    of it rotates: a rotation is never repeated for a failed step after it."""
    assert change.database_id is not None
    paths = tuple(o.path for o in change.outputs)
    ledger = ex.ledgers[change.env]
    decl = ex.decl(change)
    owed = {j.op for j in ledger.state.pending(change.key)} & {"verify", "hook"}
    wanted = {"verify": decl.verify, "hook": bool(decl.after_rotate)}
    dropped = sorted(s for s in owed if not wanted[s])  # verify: or after_rotate: removed since: not owed
    ran = sorted(s for s in owed if wanted[s])
    failures: list[Failure] = []
    after = After()
    if dropped and not paths:
        await ledger.commit(lambda s: without_steps(s, decl.ref, dropped))
    if paths or ran:
        creds = await ex.calls(change).reveal(change.database_id)
        held = ledger.state.databases.get(change.key)  # an alternating database's outputs carry its role
        creds = alternating_apply.carried_creds(ex.access[change.env].cipher, ledger.state.lineage, held, creds)
        intent = JournalEntry(
            op="render",
            database=change.key,
            name=change.name,
            database_id=change.database_id,
            started_at=_now(),
            outputs=paths,
        )
        if paths:  # the outputs, then verify (if on) and the hook (if owed and still declared)
            await ex.journal(change, intent)
            failures, after, _ = await _finish(ex, change, creds, intent, lambda db: db or _missing(change),
                                               hook="hook" in ran)  # fmt: skip
        else:
            after = await _after(ex, change, creds, tuple(s for s in ("verify", "hook") if s in ran), failures)
    if change.retire and not paths:
        retire = ex.retirable(change, ledger.state)
        failures += await ex.writer.retire(retire, ex.access[change.env].digester(ledger.state))
        gone = {State.output_id(change.key, r.path) for r in retire}
        await ledger.commit(
            lambda s: s.model_copy(update={"outputs": {k: v for k, v in s.outputs.items() if k not in gone}})
        )
    parts = [render_note(change)] if paths or change.retire else []
    if not paths:  # what an earlier apply owed, run again: said here as the plan said it
        if after.verified_ms is not None:
            parts.append("verified again")
        if after.hook is not None:
            parts.append(f"ran its after_rotate hook again in {after.hook.ms:.0f} ms: {after.hook.last_line}")
    if dropped:
        parts.append("owed " + " and ".join(dropped) + " dropped (no longer in the manifest)")
    note = "; ".join(p for p in parts if p) or "nothing left to do"
    if not paths:
        return _outcome(ex, change, note, failures, ran=after)
    return _outcome(ex, change, note, failures, after=after)


def _outcome(
    ex: Executor,
    change: Change,
    note: str,
    failures: list[Failure],
    window: float | None = None,
    after: After | None = None,
    *,
    ran: After | None = None,
) -> Outcome:
    """``after``: verify and hook, said after ``note``; ``ran``: the same, already said in ``note``
    (only recorded in the outcome and its event)."""
    done = after or ran or After()
    if after is not None and after.verified_ms is not None:
        note += "; verified"
    if after is not None and after.hook is not None:
        note += "; " + after.hook.describe()
    outcome = ex.outcome(change, note, failures, window)
    outcome.verified_ms = done.verified_ms
    outcome.hook = done.hook.as_event() if done.hook is not None else None
    return outcome


async def _release_unless_rotated(
    ex: Executor, change: Change, held: list[OutputTarget], digest: Digester, before: str | None
) -> None:
    """The rotate call failed: if hep.gg still has the password of before (Reveal), nothing changed and
    the held consumers go as they were; if it changed, or cannot be told, they stay held until the next
    apply finishes the rotation (its outputs complete the cut-over)."""
    if not held:
        return
    assert change.database_id is not None
    try:
        now = await ex.calls(change).reveal(change.database_id)
    except HepinfraError:
        return
    if digest(now.password.get_secret_value()) == before:
        await cutover.release(held)


def _rotated(db: ManagedDatabase | None, at: datetime) -> ManagedDatabase:
    assert db is not None
    return db.model_copy(update={"rotated_at": at, "rotations": db.rotations + 1})


def _missing(change: Change) -> ManagedDatabase:
    raise OutputError(f"{change.address}: not in state any more; make a new plan")


async def value_of(hub: Any, access: Any, managed: ManagedDatabase, decl: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """By Reveal: hep.gg is the password store."""
    from hepinfra.errors import UsageError

    if access.key is None:
        raise UsageError(f"no database key for environment '{access.env}': export {access.source}")
    creds = await hub.databases(access.key).reveal(managed.id)
    lineage = access.cipher.lineage if access.cipher is not None else None
    value = db_context(alternating_apply.carried_creds(access.cipher, lineage or "", managed, creds))
    return value, {f: value[f] for f in ("connection_string", "host", "port", "db_name", "user", "password")}


def _alternating(ex: Executor, change: Change) -> bool:
    """``rotation: alternating`` (``kinds.alternating_apply``), unless a single rotation is still to finish."""
    pending = ex.ledgers[change.env].state.pending(change.key)
    return ex.decl(change).rotation == "alternating" and not any(j.op == "rotate" for j in pending)


async def _then_switch(ex: Executor, change: Change, note: str) -> Outcome:
    """A database just created or adopted, switched to its alternating roles."""
    held = ex.ledgers[change.env].state.databases[change.key]
    switch = change.model_copy(update={"action": Action.ROTATE, "database_id": held.id})
    try:
        switched = await alternating_apply.rotate(ex, switch, ROLE_STEPS)
    except HepinfraError as exc:  # created or adopted: said, and the switch is planned again next time
        return ex.outcome(change, note, [Failure("switch to alternating roles", change.name, failure_message(exc))])
    switched.action = change.action.value
    switched.message = f"{note}, then {switched.message}" if switched.ok else f"{note}; but {switched.message}"
    return switched


ROLE_STEPS = alternating_apply.Steps(finish=_finish, after=_after, outcome=_outcome, nothing_after=After)
rekeyed = alternating_apply.rekeyed  # state rekey: the roles' sealed passwords (Kind.rekeyed)


async def counted_rotate(ex: Executor, change: Change) -> Outcome:
    """``rotate``, counting the database's failed rotations in a row (``ManagedDatabase.failed_rotations``:
    at ``max_failed_rotations`` the plan holds a due rotation; one that happens sets it back to 0). A
    rotate hep.gg answered with a refusal (4xx: nothing changed) also leaves the journal, so the next
    plan sees a due rotation (which it may hold), not an interrupted one it must finish."""
    ledger = ex.ledgers[change.env]
    before = ledger.state.databases.get(change.key)
    journaled = {j.id for j in ledger.state.journal}
    try:
        outcome = await rotate(ex, change)
    except HepinfraError as exc:
        refused = isinstance(exc, ApiError) and exc.status is not None and 400 <= exc.status < 500
        with contextlib.suppress(HepinfraError):  # the rotation's own error is the one said
            await ledger.commit(lambda s: _failed_rotation(s, change.key, journaled if refused else None))
        raise
    after = ledger.state.databases.get(change.key)
    if after is not None and after.failed_rotations and (before is None or after.rotations != before.rotations):
        await ledger.commit(lambda s: _failed_rotation(s, change.key, None, reset=True))
    return outcome


def _failed_rotation(s: State, key: str, journaled: set[str] | None, *, reset: bool = False) -> State:
    """One more failed rotation of ``key`` (or none, ``reset``); ``journaled``: the journal's entries before
    a rotate that hep.gg refused: the rotate intent it added since goes (that rotation never happened)."""
    db = s.databases.get(key)
    if db is None:
        return s
    failed = 0 if reset else db.failed_rotations + 1
    update: dict[str, Any] = {"databases": {**s.databases, key: db.model_copy(update={"failed_rotations": failed})}}
    if journaled is not None:
        update["journal"] = tuple(
            j for j in s.journal if not (j.database == key and j.op == "rotate" and j.id not in journaled)
        )
    return s.model_copy(update=update)


STEPS = {
    Action.CREATE: create,
    Action.ADOPT: adopt,
    Action.ROTATE: counted_rotate,
    Action.RENDER: render,
    Action.FORGET: lambda ex, change: ex.forget(change),
    Action.MOVE: move,
}
