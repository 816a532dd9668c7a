"""The executor: runs every change of a plan through its kind's step, with parallelism slots,
events and cancellation.

Owns: running every change of a Plan at once with at most ``parallelism`` API calls in flight
(each through ``KINDS[change.kind].step(action)``), the helpers every step shares (API calls
that journal their intent right before the call while holding its slot, writing a resource's
outputs and recording them in one commit with what is still owed, forgetting), events (each
passes the redactor) and the summary of an interrupted run. Each kind's crash-safety sequence is
in its steps module (``kinds/*_apply.py``).
Must not: decide what to change (the Plan did), know a kind's rules, or let a secret reach an
event, an error or the state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from hepinfra.apply.ledger import Ledger, settled, with_entry
from hepinfra.apply.writer import Failure, OutputWriter, failure_message
from hepinfra.digests import Digester
from hepinfra.errors import HepinfraError, Interrupted, OutputError
from hepinfra.fetch import EnvAccess
from hepinfra.fsutil import fsync_dir
from hepinfra.hepgg import Hepgg
from hepinfra.hepgg.models import DatabaseCredentials
from hepinfra.manifest import Manifest
from hepinfra.outputs import SINKS
from hepinfra.outputs.base import resolve_path
from hepinfra.safety.redact import redact_data
from hepinfra.state.model import JournalEntry, OutputRecord, State
from hepinfra.values import Action, Change, Declared, OutputTarget, Plan, ref_of

Event = dict[str, Any]
# how long a killed run's rotate request may still land at hep.gg: twice the HTTP timeout
SETTLE_S = 30.0
Emit = Callable[[Event], None]
T = TypeVar("T")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Outcome:
    address: str
    action: str
    ok: bool
    message: str = ""
    rotation_window_ms: float | None = None
    verified_ms: float | None = None  # the connection check with the rendered credentials
    hook: dict[str, Any] | None = None  # the after_rotate hook that ran: {"ms": ..., "last_line": ...}
    duration_ms: float = 0.0  # the change's own time: queue waits for a parallelism slot excluded
    queued_ms: float = 0.0
    failures: list[Failure] = field(default_factory=list)  # the steps that failed (render of FILE, ...)

    @property
    def step(self) -> str:
        """What failed: the action itself, or the first failed step after it."""
        return self.failures[0].step if self.failures else self.action


@dataclass
class ApplyResult:
    outcomes: list[Outcome] = field(default_factory=list)
    state_writes: int = 0
    elapsed_ms: float = 0.0  # the execution phase only (after plan and confirmation)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def succeeded(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def rotation_windows(self) -> dict[str, float]:
        return {o.address: o.rotation_window_ms for o in self.outcomes if o.rotation_window_ms is not None}


class Tracker:
    """One change's timing and progress: queue time, and whether a remote step began."""

    def __init__(self) -> None:
        self.queued = 0.0
        self.in_flight = False
        self.early_intent: tuple[str, str] | None = None  # (env, journal id) of an intent journaled before its slot


class _Calls:
    """A change's API calls: each takes one of the executor's slots (waiting for one counts as
    queue time); a mutation journals its intent while holding the slot, right before the call."""

    def __init__(self, client: Any, slots: asyncio.Semaphore, tracker: Tracker) -> None:
        self._client, self._slots, self._tracker = client, slots, tracker

    async def _slot(self) -> None:
        started = time.perf_counter()
        await self._slots.acquire()
        self._tracker.queued += time.perf_counter() - started

    async def reveal(self, database_id: str) -> DatabaseCredentials:
        await self._slot()
        try:
            result: DatabaseCredentials = await self._client.reveal(database_id)
            return result
        finally:
            self._slots.release()

    async def mutate(self, journal: Callable[[], Awaitable[None]] | None, call: Callable[[Any], Awaitable[T]]) -> T:
        await self._slot()
        try:
            if journal is not None:
                await journal()
            self._tracker.in_flight = True
            return await call(self._client)
        finally:
            self._slots.release()


class Executor:
    def __init__(
        self,
        plan: Plan,
        manifest: Manifest,
        ledgers: dict[str, Ledger],
        hepgg: Hepgg,
        access: dict[str, EnvAccess],
        *,
        parallelism: int = 8,
        emit: Emit = lambda event: None,
        settle_s: float = SETTLE_S,
        write_back: bool = False,
    ) -> None:
        self.plan, self.manifest, self.ledgers, self.hepgg, self.access = plan, manifest, ledgers, hepgg, access
        self.parallelism = max(1, parallelism)
        self.settle_s = settle_s
        # --parallelism bounds API calls in flight; journal writes and outputs never hold a slot, so
        # local work overlaps remote work
        self._slots = asyncio.Semaphore(self.parallelism)
        self._emit = emit
        self.writer = OutputWriter(
            manifest.project_dir,
            [t for decls in manifest.declared.values() for d in decls for t in d.outputs],
            write_back=write_back,
        )
        self.rotated: set[str] = set()  # remote ids rotated in this run: never twice
        self._declared = {d.address: d for decls in manifest.declared.values() for d in decls}
        self.trackers: dict[str, Tracker] = {}

    def emit(self, event: Event) -> None:
        self._emit(redact_data(event))

    # --- driving -------------------------------------------------------------------------------------

    async def run(self) -> ApplyResult:
        from hepinfra.kinds import KINDS

        result = ApplyResult()
        finished: dict[str, Outcome] = {}

        async def one(change: Change) -> Outcome:
            started = time.perf_counter()
            tracker = self.trackers.setdefault(change.address, Tracker())
            self.emit({"event": "start", "address": change.address, "action": change.action.value})
            try:
                outcome = cast(Outcome, await KINDS[change.kind].step(change.action)(self, change))
            except (HepinfraError, OSError) as exc:
                outcome = Outcome(change.address, change.action.value, False, failure_message(exc))
            total = time.perf_counter() - started
            outcome.queued_ms = tracker.queued * 1000
            outcome.duration_ms = (total - tracker.queued) * 1000
            finished[change.address] = outcome
            self.emit(_event(outcome))
            return outcome

        started = time.perf_counter()
        self.clear_stale_temps()
        work = [c for c in self.plan.changes if c.action is not Action.NOOP]
        tasks = [asyncio.ensure_future(one(c)) for c in work]
        try:
            result.outcomes = list(await asyncio.gather(*tasks))
        except asyncio.CancelledError:
            from hepinfra.outputs.exec import kill_running

            kill_running()  # a hook or a secret store's CLI never outlives the run (the journal owes it)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for ledger in self.ledgers.values():
                await ledger.settle()
            await self._drop_early_intents(finished)
            raise Interrupted(interrupt_summary(work, finished, self.trackers)) from None
        from hepinfra.apply.after_all import run_once_hooks

        await run_once_hooks(self, result)  # after_rotate_once: identical hooks, once for the run
        for directory in self.writer.touched_dirs:  # once per directory, not once per output
            await asyncio.to_thread(fsync_dir, directory)
        result.state_writes = sum(ledger.writes for ledger in self.ledgers.values())
        result.elapsed_ms = (time.perf_counter() - started) * 1000
        return result

    # --- helpers -------------------------------------------------------------------------------------

    def clear_stale_temps(self) -> None:
        """Temp files a killed apply left beside outputs of the locked environments."""
        files = []
        for env in self.ledgers:
            for decl in self.manifest.declared[env]:
                for target in decl.outputs:
                    try:
                        if target.kind in SINKS:
                            files.append(resolve_path(self.manifest.project_dir, target))
                    except OutputError:
                        continue
        self.writer.clear_stale_temps(files)

    def calls(self, change: Change, client: Any = None) -> _Calls:
        """The change's API calls through the executor's slots: to ``client``, or the databases API."""
        if client is None:
            key = self.access[change.env].key
            assert key is not None
            client = self.hepgg.databases(key)
        tracker = self.trackers.setdefault(change.address, Tracker())
        return _Calls(client, self._slots, tracker)

    def decl(self, change: Change) -> Declared:
        return self._declared[change.address]

    def digester(self, change: Change) -> Digester:
        return self.access[change.env].digester(self.ledgers[change.env].state)

    def targets(self, change: Change, only: tuple[str, ...] | None = None) -> list[OutputTarget]:
        targets = list(self.decl(change).outputs)
        return [t for t in targets if only is None or t.path in only]

    async def journal(self, change: Change, entry: JournalEntry, *, urgent: bool = False, early: bool = False) -> None:
        """Journal ``entry``. ``early``: before waiting for a slot (a create: many intents share one write,
        and an interrupt removes those whose call never started), else right before the call."""
        tracker = self.trackers.setdefault(change.address, Tracker())
        if early:
            tracker.early_intent = (change.env, entry.id)
        else:
            tracker.in_flight = True
        await self.ledgers[change.env].commit(lambda s: with_entry(s, entry), urgent=urgent)

    async def _drop_early_intents(self, finished: dict[str, Outcome]) -> None:
        """After an interrupt: intents journaled ahead of a call that never started are not kept."""
        for address, tracker in self.trackers.items():
            if tracker.early_intent is None or tracker.in_flight or address in finished:
                continue
            env, entry_id = tracker.early_intent

            def drop(s: State, gone: str = entry_id) -> State:
                return s.model_copy(update={"journal": tuple(j for j in s.journal if j.id != gone)})

            await self.ledgers[env].commit(drop)

    async def finish(
        self,
        change: Change,
        value: dict[str, Any],
        secret: str,
        entry: JournalEntry,
        update: Callable[[State], State],
        steps: tuple[str, ...] = (),
    ) -> tuple[list[Failure], float]:
        """Write every output of ``entry`` (each on its own) with the resource's template variable
        ``value`` (``db``, ``id``, ``upload``), and record the result in one commit: ``update`` (the
        resource itself), the records written (holding a keyed digest of ``secret``), and a journal
        that owes only the outputs that failed and the ``steps`` to run after them (verify, hook).
        Returns the failures and when (``time.perf_counter``) the last output was written."""
        from hepinfra.kinds import KINDS

        env, decl = change.env, self.decl(change)
        ledger = self.ledgers[env]
        context = {
            "env": env,
            "key": decl.key,
            "name": decl.name,
            "vars": self.manifest.env_spec(env).vars,
            KINDS[change.kind].var: value,
        }
        digest = self.access[env].digester(ledger.state)
        records, failures = await self.writer.write(
            decl, self.targets(change, entry.outputs), context, digest, ledger.state, digest(secret)
        )
        written_at = time.perf_counter()
        owed = [f.target for f in failures]
        retire = self.retirable(change, ledger.state)
        failures += await self.writer.retire(retire, digest)
        gone = {State.output_id(decl.ref, r.path) for r in retire}

        cipher = self.access[env].cipher

        def record(s: State) -> State:
            s = update(s).model_copy(
                update={"outputs": {k: v for k, v in {**s.outputs, **records}.items() if k not in gone}}
            )
            if cipher is not None and s.crypto is None:  # the digests just recorded may be keyed by it: keep it
                s = s.model_copy(update={"crypto": cipher.crypto})
            return settled(s, decl.ref, owed, entry, steps)

        await ledger.commit(record)
        return failures, written_at

    def keep_digest(self, change: Change, current: str) -> Callable[[State], State]:
        """A state update that sets the held resource's ``value_digest`` to ``current`` (the digest key
        may have changed since it was minted or uploaded: records and value then agree again)."""

        def update(s: State) -> State:
            held = getattr(s, change.kind)
            found = held.get(change.key)
            if found is None or found.value_digest == current:
                return s
            return s.model_copy(
                update={change.kind: {**held, change.key: found.model_copy(update={"value_digest": current})}}
            )

        return update

    def retirable(self, change: Change, state: State) -> list[OutputRecord]:
        ref = ref_of(change.kind, change.key)
        records = (state.outputs.get(State.output_id(ref, path)) for path in change.retire)
        return [r for r in records if r is not None]

    def outcome(self, change: Change, note: str, failures: list[Failure], window: float | None = None) -> Outcome:
        message = note
        if failures:
            message += "; but " + "; ".join(f.describe() for f in failures)
        return Outcome(change.address, change.action.value, not failures, message, window, failures=failures)

    async def forget(self, change: Change) -> Outcome:
        """Any kind: drop the resource, its output records and its journal from state; nothing remote.
        A resource with a remote id (a database) is recorded as forgotten (``State.forgotten``), so
        the plan does not warn about it as an unmanaged database on the account."""
        ref = ref_of(change.kind, change.key)

        def forget(s: State) -> State:
            after = s.model_copy(
                update={
                    change.kind: {k: v for k, v in getattr(s, change.kind).items() if k != change.key},
                    "outputs": {k: v for k, v in s.outputs.items() if v.database != ref},
                    "journal": tuple(j for j in s.journal if j.database != ref),
                }
            )
            forgotten = {**s.forgotten, **({change.database_id: change.name} if change.database_id else {})}
            managed = {getattr(m, "id", None) for section in KINDS for m in getattr(after, section).values()}
            return after.model_copy(update={"forgotten": {i: n for i, n in forgotten.items() if i not in managed}})

        from hepinfra.kinds import KINDS

        await self.ledgers[change.env].commit(forget)
        return Outcome(change.address, change.action.value, True, KINDS[change.kind].forgotten)


def _event(outcome: Outcome) -> Event:
    event: Event = {
        "event": "done" if outcome.ok else "failed",
        "address": outcome.address,
        "action": outcome.action,
        "step": outcome.step,
        "duration_ms": round(outcome.duration_ms, 1),
        "queued_ms": round(outcome.queued_ms, 1),
    }
    if outcome.message:
        event["message"] = outcome.message
    if outcome.failures:
        event["failures"] = [f.as_event() for f in outcome.failures]
    if outcome.rotation_window_ms is not None:
        event["rotation_window_ms"] = round(outcome.rotation_window_ms, 2)
    if outcome.verified_ms is not None:
        event["verified_ms"] = round(outcome.verified_ms, 2)
    if outcome.hook is not None:
        event["hook"] = outcome.hook
    return event


def interrupt_summary(work: list[Change], finished: dict[str, Outcome], trackers: dict[str, Tracker]) -> str:
    """What finished, what was in flight and what never started; the journal's promise is said
    only for the kinds and actions that were in flight (each kind words its own)."""
    from hepinfra.kinds import KINDS

    done = [c.address for c in work if c.address in finished]
    flying = [c for c in work if c.address not in finished and trackers.get(c.address, Tracker()).in_flight]
    started = {c.address for c in flying}
    waiting = [c.address for c in work if c.address not in finished and c.address not in started]

    def some(addresses: list[str]) -> str:
        shown = ", ".join(addresses[:5]) + (f" and {len(addresses) - 5} more" if len(addresses) > 5 else "")
        return f" ({shown})" if addresses else ""

    if flying:
        notes = list(dict.fromkeys(KINDS[c.kind].in_flight(c) for c in flying))
        in_flight = (
            f"{len(flying)} in flight{some([c.address for c in flying])}, which the journal keeps for the "
            f"next apply to settle ({'; '.join(notes)})"
        )
    else:
        in_flight = "nothing in flight"
    tail = "nothing left to start"
    if waiting:
        tail = f"{len(waiting)} not started{some(waiting)}, nothing recorded for them"
    return f"interrupted: {len(done)} finished{some(done)}; {in_flight}; {tail}"
