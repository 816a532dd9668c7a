"""Executes a Plan: one handler per action, bounded concurrency, the journal. Never re-diffs.

Owns: the Ledger (group commit of state changes: every intent is durable before its remote
call, several concurrent intents share one fsync'd write made off the event loop), the
handlers, output writing with per-file locks, Git-tracked refusal, rotation windows, events.
Must not: decide what to change (the Plan did), rotate a database twice in one run, or let a
secret reach an event, an error or the state.

Crash safety, by construction:
- create: intent (name) durable -> POST -> database + "render" intent -> outputs -> records.
  Killed after the POST: the next plan finds the name in List and adopts it.
- rotate: intent (id, outputs) durable -> POST rotate -> outputs written at once -> records.
  Killed after the POST: the next plan finishes it with Reveal, never a second rotate.
- render: intent (outputs) durable -> files (atomic) -> records. Killed: rendered again.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hepinfra.errors import ApiError, HepinfraError, OutputError, StalePlanError
from hepinfra.fetch import EnvAccess
from hepinfra.fsutil import fsync_dir, remove_stale_temps_of
from hepinfra.hepgg import Hepgg
from hepinfra.hepgg.models import DatabaseCredentials
from hepinfra.manifest import DeclaredDatabase, Manifest, OutputTarget
from hepinfra.outputs import SINKS
from hepinfra.outputs.base import db_context, resolve_path
from hepinfra.plan import Action, Change, Plan, remote_digest
from hepinfra.state.backend import Backend
from hepinfra.state.model import JournalEntry, ManagedDatabase, OutputRecord, State

Event = dict[str, Any]
COALESCE_URGENT_S = 0.002  # an intent gates an API call: write almost at once
COALESCE_S = 0.02  # results gate nothing (the journal covers a crash before them): batch more
Emit = Callable[[Event], None]


def _now() -> datetime:
    return datetime.now(UTC)


class Ledger:
    """One environment's state in memory, made durable by group commit."""

    def __init__(self, backend: Backend, env: str, state: State) -> None:
        self.backend, self.env, self.state = backend, env, state
        self._generation = 0
        self._written = 0
        self._writer: asyncio.Task[None] | None = None
        self._urgent = False
        self.writes = 0

    async def commit(self, mutate: Callable[[State], State], *, urgent: bool = False) -> None:
        """Apply ``mutate`` and return once a write that includes it is durable.

        ``urgent`` for intents that gate an API call; other commits wait a little longer so
        that more of them share one write.
        """
        self.state = mutate(self.state)
        self._urgent = self._urgent or urgent
        self._generation += 1
        mine = self._generation
        while self._written < mine:
            if self._writer is None:
                self._writer = asyncio.create_task(self._write())
            writer = self._writer
            await asyncio.shield(writer)

    async def _write(self) -> None:
        # let the changes finishing around now share this fsync; an urgent intent cuts the wait short
        waited = 0.0
        while waited < COALESCE_S and not self._urgent:
            await asyncio.sleep(COALESCE_URGENT_S)
            waited += COALESCE_URGENT_S
        if self._urgent:
            await asyncio.sleep(COALESCE_URGENT_S)
        self._urgent = False
        generation, snapshot = self._generation, self.state
        try:
            stored = await asyncio.to_thread(self.backend.write, self.env, snapshot)
            self.writes += 1
            # keep the serial the backend assigned; later mutations build on it
            self.state = self.state.model_copy(update={"serial": stored.serial, "lineage": stored.lineage})
            self._written = generation
        finally:
            self._writer = None


@dataclass
class Outcome:
    address: str
    action: str
    ok: bool
    message: str = ""
    rotation_window_ms: float | None = None
    duration_ms: float = 0.0


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


def tracked_files(project_dir: Path) -> set[str]:
    """Paths Git tracks under the project directory (relative to it); empty outside a repository."""
    try:
        proc = subprocess.run(["git", "-C", str(project_dir), "ls-files", "-z"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    if proc.returncode != 0:
        return set()
    return {p for p in proc.stdout.decode(errors="replace").split("\0") if p}


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
    ) -> None:
        self.plan, self.manifest, self.ledgers, self.hepgg, self.access = plan, manifest, ledgers, hepgg, access
        self.parallelism = max(1, parallelism)
        # --parallelism bounds API calls in flight; journal writes and outputs never hold a slot, so
        # every intent is journaled in the first batched write and local work overlaps remote work
        self._slots = asyncio.Semaphore(self.parallelism)
        self.emit = emit
        self._file_locks: dict[Path, asyncio.Lock] = {}
        self._touched_dirs: set[Path] = set()
        self._rotated: set[str] = set()
        self._tracked: set[str] | None = None
        self._declared = {d.address: d for decls in manifest.declared.values() for d in decls}

    # --- driving -------------------------------------------------------------------------------------

    async def run(self) -> ApplyResult:
        result = ApplyResult()
        handlers: dict[Action, Callable[[Change], Awaitable[Outcome]]] = {
            Action.CREATE: self.create,
            Action.ADOPT: self.adopt,
            Action.ROTATE: self.rotate,
            Action.RENDER: self.render,
            Action.FORGET: self.forget,
        }

        async def one(change: Change) -> Outcome:
            started = time.perf_counter()
            self.emit({"event": "start", "address": change.address, "action": change.action.value})
            try:
                self.preflight(change)  # refuse before any API call, never after a rotation
                outcome = await handlers[change.action](change)
            except (HepinfraError, OSError) as exc:
                message = exc.message if isinstance(exc, HepinfraError) else f"{type(exc).__name__}: {exc.strerror}"
                outcome = Outcome(change.address, change.action.value, False, message)
            outcome.duration_ms = (time.perf_counter() - started) * 1000
            event: Event = {
                "event": "done" if outcome.ok else "failed",
                "address": outcome.address,
                "action": outcome.action,
                "duration_ms": round(outcome.duration_ms, 1),
            }
            if outcome.message:
                event["message"] = outcome.message
            if outcome.rotation_window_ms is not None:
                event["rotation_window_ms"] = round(outcome.rotation_window_ms, 2)
            self.emit(event)
            return outcome

        started = time.perf_counter()
        self.clear_stale_temps()
        work = [c for c in self.plan.changes if c.action is not Action.NOOP]
        result.outcomes = list(await asyncio.gather(*(one(c) for c in work)))
        for directory in self._touched_dirs:  # once per directory, not once per output
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
                        files.append(resolve_path(self.manifest.project_dir, target))
                    except OutputError:
                        continue
        remove_stale_temps_of(files)

    def preflight(self, change: Change) -> None:
        """Checks that need no API call: every output this change writes is inside the project (or
        allowed outside) and not tracked by Git (or allowed). A refusal here costs no remote call."""
        if change.action is Action.FORGET:
            return
        for target in self._targets(change):
            self._check_tracked(target, resolve_path(self.manifest.project_dir, target))

    def _client(self, env: str) -> _Slotted:
        key = self.access[env].key
        assert key is not None
        return _Slotted(self.hepgg.databases(key), self._slots)

    def _decl(self, change: Change) -> DeclaredDatabase:
        return self._declared[change.address]

    def _targets(self, change: Change, only: tuple[str, ...] | None = None) -> list[OutputTarget]:
        targets = list(self._decl(change).outputs)
        return [t for t in targets if only is None or t.path in only]

    def _check_tracked(self, target: OutputTarget, file: Path) -> None:
        if target.allow_tracked:
            return
        if self._tracked is None:
            self._tracked = tracked_files(self.manifest.project_dir)
        try:
            relative = str(file.relative_to(self.manifest.project_dir))
        except ValueError:
            relative = None
        tracked = relative in self._tracked if relative is not None else _tracked_outside(file)
        if tracked:
            raise OutputError(
                f"{target.path}: the file is tracked by Git; writing a secret into it would commit the secret",
                hint="run 'git rm --cached' on it and add it to .gitignore, or set allow_tracked: true on the output",
            )

    async def _write_outputs(
        self, change: Change, creds: DatabaseCredentials, targets: list[OutputTarget]
    ) -> dict[str, OutputRecord]:
        """Write outputs (each file under its own lock) and return their records."""
        env, decl = change.env, self._decl(change)
        digest = self.access[env].digester(self.ledgers[env].state)
        context = {
            "env": env,
            "key": decl.key,
            "name": decl.name,
            "vars": self.manifest.env_spec(env).vars,
            "db": db_context(creds),
        }
        password_digest = digest(creds.password.get_secret_value())
        records: dict[str, OutputRecord] = {}
        for target in targets:
            file = resolve_path(self.manifest.project_dir, target)  # checked in preflight
            lock = self._file_locks.setdefault(file, asyncio.Lock())
            async with lock:  # fsync off the event loop, so other changes go on meanwhile
                written = await asyncio.to_thread(SINKS[target.kind].write, file, target, context, digest)
            self._touched_dirs.add(file.parent)
            records[State.output_id(decl.key, target.path)] = OutputRecord(
                database=decl.key,
                path=target.path,
                kind=target.kind,
                digest=written,
                password_digest=password_digest,
                definition_digest=target.definition_digest,
                keys=tuple(k for k, _ in target.keys),
                written_at=_now(),
            )
        return records

    async def _retire(self, change: Change) -> None:
        if not change.retire:
            return
        state = self.ledgers[change.env].state
        for path in change.retire:
            record = state.outputs.get(State.output_id(change.key, path))
            if record is None:
                continue
            file = Path(path) if Path(path).is_absolute() else self.manifest.project_dir / path
            async with self._file_locks.setdefault(file, asyncio.Lock()):
                SINKS[record.kind].retire(file, record.keys)
        gone = {State.output_id(change.key, p) for p in change.retire}
        await self.ledgers[change.env].commit(
            lambda s: s.model_copy(update={"outputs": {k: v for k, v in s.outputs.items() if k not in gone}})
        )

    async def _finish(
        self,
        change: Change,
        creds: DatabaseCredentials,
        entry: JournalEntry,
        update_db: Callable[[ManagedDatabase | None], ManagedDatabase],
    ) -> tuple[dict[str, OutputRecord], float]:
        """Write the outputs of ``entry`` and record everything; returns records and ms spent writing."""
        started = time.perf_counter()
        records = await self._write_outputs(change, creds, self._targets(change, entry.outputs))
        window = (time.perf_counter() - started) * 1000
        await self.ledgers[change.env].commit(
            lambda s: s.model_copy(
                update={
                    "databases": {**s.databases, change.key: update_db(s.databases.get(change.key))},
                    "outputs": {**s.outputs, **records},
                    "journal": tuple(j for j in s.journal if j.database != change.key),
                }
            )
        )
        await self._retire(change)
        return records, window

    # --- handlers ------------------------------------------------------------------------------------

    async def create(self, change: Change) -> Outcome:
        ledger = self.ledgers[change.env]
        outputs = tuple(t.path for t in self._targets(change))
        intent = JournalEntry(op="create", database=change.key, name=change.name, started_at=_now(), outputs=outputs)
        await ledger.commit(lambda s: s.model_copy(update={"journal": (*s.journal, intent)}), urgent=True)
        creds = await self._client(change.env).create(change.name, change.engine)
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
        try:
            await self._finish(change, creds, owed, lambda db: db or managed)
        except Exception:
            # outputs failed: the database exists, so record it, with its outputs owed
            await ledger.commit(
                lambda s: s.model_copy(
                    update={
                        "databases": {**s.databases, change.key: managed},
                        "journal": tuple(owed if j.id == intent.id else j for j in s.journal),
                    }
                )
            )
            raise
        note = "created (answer lost; found by name)" if creds.recovered else "created"
        return Outcome(change.address, change.action.value, True, note)

    async def adopt(self, change: Change) -> Outcome:
        assert change.database_id is not None
        ledger = self.ledgers[change.env]
        creds = await self._client(change.env).reveal(change.database_id)
        now = _now()
        intent = JournalEntry(
            op="render",
            database=change.key,
            name=change.name,
            database_id=creds.id,
            started_at=now,
            outputs=tuple(t.path for t in self._targets(change)),
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
        await ledger.commit(
            lambda s: s.model_copy(
                update={
                    "databases": {**s.databases, change.key: adopted},
                    "journal": (*tuple(j for j in s.journal if j.database != change.key), intent),
                }
            )
        )
        await self._finish(change, creds, intent, lambda db: db or adopted)
        if change.rotate_after_adopt:
            rotated = await self.rotate(change.model_copy(update={"action": Action.ROTATE}))
            rotated.action = change.action.value
            rotated.message = "adopted, then rotated"
            return rotated
        return Outcome(change.address, change.action.value, True, "adopted")

    async def _password_digest(self, change: Change) -> str:
        """Keyed digest of the password now: from the output records, or one Reveal when they cannot say."""
        state = self.ledgers[change.env].state
        digests = {r.password_digest for r in state.outputs.values() if r.database == change.key}
        if len(digests) == 1:
            return digests.pop()
        assert change.database_id is not None
        creds = await self._client(change.env).reveal(change.database_id)
        return self.access[change.env].digester(state)(creds.password.get_secret_value())

    async def rotate(self, change: Change) -> Outcome:
        """Rotate once. An interrupted or unanswered rotation is settled by comparing the revealed password
        with the digest recorded before it: changed means it happened (finish: write outputs); unchanged
        means it never reached hep.gg (rotate now, which is the first rotation, not a second)."""
        assert change.database_id is not None
        if change.database_id in self._rotated:
            return Outcome(change.address, change.action.value, False, "refused: already rotated in this run")
        self._rotated.add(change.database_id)
        ledger = self.ledgers[change.env]
        client = self._client(change.env)
        digest = self.access[change.env].digester(ledger.state)
        entry = next((j for j in ledger.state.pending(change.key) if j.op == "rotate"), None)
        creds: DatabaseCredentials | None = None
        note = "rotated"
        finished_earlier = False  # the rotation happened in an earlier run: keep its time
        if change.finish_rotation and entry is not None:
            revealed = await client.reveal(change.database_id)
            if entry.password_digest is None or digest(revealed.password.get_secret_value()) != entry.password_digest:
                # changed, or no digest to tell (an older state): finish, never risk a second rotation
                creds, note = revealed, "finished an interrupted rotation (Reveal, no second rotate)"
                finished_earlier = True
            else:
                note = "the interrupted rotation never reached hep.gg: rotated now"
        if entry is None:
            entry = JournalEntry(
                op="rotate",
                database=change.key,
                name=change.name,
                database_id=change.database_id,
                started_at=_now(),
                outputs=tuple(t.path for t in self._targets(change)),
                password_digest=await self._password_digest(change),
            )
            new_entry = entry
            await ledger.commit(
                lambda s: s.model_copy(
                    update={
                        "journal": (
                            *tuple(j for j in s.journal if not (j.database == change.key and j.op == "rotate")),
                            new_entry,
                        ),
                    }
                ),
                urgent=True,
            )
        assert entry is not None
        attempts = 0
        while creds is None:
            attempts += 1
            answer = await client.rotate(change.database_id)
            if not answer.recovered or digest(answer.password.get_secret_value()) != entry.password_digest:
                creds = answer
                if answer.recovered:
                    note = "rotated (answer lost; current password revealed)"
            elif attempts >= 3:
                raise ApiError(
                    f"{change.address}: the rotation could not be confirmed after {attempts} tries",
                    hint="run the apply again; the journal keeps it pending",
                )
        rotated_at = entry.started_at if finished_earlier else _now()
        # the old password is dead from here: write every output before anything else
        _, window = await self._finish(change, creds, entry, lambda db: _rotated(db, rotated_at))
        return Outcome(change.address, change.action.value, True, note, rotation_window_ms=window)

    async def render(self, change: Change) -> Outcome:
        assert change.database_id is not None
        ledger = self.ledgers[change.env]
        paths = tuple(o.path for o in change.outputs)
        if paths:
            intent = JournalEntry(
                op="render",
                database=change.key,
                name=change.name,
                database_id=change.database_id,
                started_at=_now(),
                outputs=paths,
            )
            await ledger.commit(lambda s: s.model_copy(update={"journal": (*s.journal, intent)}))
            creds = await self._client(change.env).reveal(change.database_id)
            await self._finish(change, creds, intent, lambda db: db or _missing(change))
        else:
            await self._retire(change)
        return Outcome(change.address, change.action.value, True, f"rendered {len(paths)} output(s)")

    async def forget(self, change: Change) -> Outcome:
        await self.ledgers[change.env].commit(
            lambda s: s.model_copy(
                update={
                    "databases": {k: v for k, v in s.databases.items() if k != change.key},
                    "outputs": {k: v for k, v in s.outputs.items() if v.database != change.key},
                    "journal": tuple(j for j in s.journal if j.database != change.key),
                }
            )
        )
        return Outcome(change.address, change.action.value, True, "no longer managed; it stays on hep.gg")


class _Slotted:
    """A DatabasesClient whose calls each take one of the executor's parallelism slots."""

    def __init__(self, client: Any, slots: asyncio.Semaphore) -> None:
        self._client, self._slots = client, slots

    async def create(self, name: str, engine: str) -> DatabaseCredentials:
        async with self._slots:
            result: DatabaseCredentials = await self._client.create(name, engine)
            return result

    async def reveal(self, database_id: str) -> DatabaseCredentials:
        async with self._slots:
            result: DatabaseCredentials = await self._client.reveal(database_id)
            return result

    async def rotate(self, database_id: str) -> DatabaseCredentials:
        async with self._slots:
            result: DatabaseCredentials = await self._client.rotate(database_id)
            return result


def _rotated(db: ManagedDatabase | None, at: datetime) -> ManagedDatabase:
    assert db is not None
    return db.model_copy(update={"rotated_at": at, "rotations": db.rotations + 1})


def _missing(change: Change) -> ManagedDatabase:
    raise OutputError(f"{change.address}: not in state any more; make a new plan")


def _tracked_outside(file: Path) -> bool:
    try:
        proc = subprocess.run(
            ["git", "-C", str(file.parent), "ls-files", "--error-unmatch", file.name], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


async def current_remote_digests(hepgg: Hepgg, access: dict[str, EnvAccess], envs: list[str]) -> dict[str, str | None]:
    async def one(env: str) -> str | None:
        key = access[env].key
        if key is None:
            return None
        try:
            return remote_digest(await hepgg.databases(key).list())
        except ApiError:
            return None

    return dict(zip(envs, await asyncio.gather(*(one(e) for e in envs)), strict=True))
