"""One environment's state during an apply, made durable by group commit, and the journal rules.

Owns: ``Ledger`` (every commit returns once a write that includes it is durable; concurrent
commits share one write made off the event loop) and the pure journal edits: one entry per
database and op (a failed run never adds a second), and settling a database's entries with
only the outputs still owed.
Must not: call hep.gg, or write anything but through the state backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from hepinfra.state.backend import Backend
from hepinfra.state.model import JournalEntry, State

COALESCE_URGENT_S = 0.002  # an intent gates an API call: write almost at once
COALESCE_S = 0.02  # results gate nothing (the journal covers a crash before them): batch more


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

    async def settle(self) -> None:
        """Wait for a write in progress (after a cancellation, before the final commits)."""
        if self._writer is not None:
            await asyncio.shield(self._writer)

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


def with_entry(state: State, entry: JournalEntry) -> State:
    """``state`` with ``entry`` journaled. An earlier entry of the same database and op is replaced
    (for ``render`` its outputs are kept too), so a run that fails again adds nothing."""
    kept: list[JournalEntry] = []
    outputs = entry.outputs
    for existing in state.journal:
        if existing.database == entry.database and existing.op == entry.op:
            if entry.op == "render":
                outputs = tuple(dict.fromkeys((*existing.outputs, *outputs)))
            continue
        kept.append(existing)
    return state.model_copy(update={"journal": (*kept, entry.model_copy(update={"outputs": outputs}))})


def settled(state: State, database: str, owed: Iterable[str], like: JournalEntry, steps: Iterable[str] = ()) -> State:
    """``state`` with every journal entry of ``database`` done, except a ``render`` entry for the
    outputs still ``owed`` (written next run; the remote step is never repeated) and one entry per
    step still to run after them (``verify``, ``hook``)."""
    kept = tuple(j for j in state.journal if j.database != database)
    owed = tuple(owed)
    if owed:
        kept = (*kept, like.model_copy(update={"op": "render", "outputs": owed, "password_digest": None}))
    for step in steps:
        kept = (*kept, like.model_copy(update={"op": step, "outputs": (), "password_digest": None}))
    return state.model_copy(update={"journal": kept})


def without_steps(state: State, database: str, done: Iterable[str]) -> State:
    """``state`` with the ``done`` steps (``verify``, ``hook``) of ``database`` no longer owed."""
    finished = set(done)
    kept = tuple(j for j in state.journal if not (j.database == database and j.op in finished))
    return state.model_copy(update={"journal": kept})


async def forget_replaced(
    backend: Backend, settled: Iterable[tuple[str, str]], states: dict[str, State | None]
) -> None:
    """The write-backs a plan found merged (``Plan.settled_write_backs``: the file is as apply wrote
    it): their records forget the file they replaced, so that file is a change again (a revert, a
    deletion), not a pending write-back. One write per environment; ``states`` is updated."""
    by_env: dict[str, set[str]] = {}
    for env, output_id in settled:
        by_env.setdefault(env, set()).add(output_id)
    for env, ids in by_env.items():
        state = states.get(env)
        if state is None:
            continue

        def forget(s: State, ids: set[str] = ids) -> State:
            outputs = {
                k: (v.model_copy(update={"write_back_from": None}) if k in ids else v) for k, v in s.outputs.items()
            }
            return s.model_copy(update={"outputs": outputs})

        ledger = Ledger(backend, env, state)
        await ledger.commit(forget, urgent=True)
        states[env] = ledger.state
