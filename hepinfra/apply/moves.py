"""The apply step of a move (``moved:``), the same for every kind: a state-only rename.

Owns: moving one resource's record, output records and journal entries to its new key in one durable
state write (``moves.moved_state``), the kind's record sealed again where its value is bound to its
address (``Kind.moved``: an id's ciphertext). The planner puts an environment's moves before its
other changes, and the executor starts its changes in plan order; ``move`` edits the ledger's state
before its first await, so every later change of the environment (a render at the new address) finds
the resource moved, and every later state write holds the move.
Must not: call hep.gg, write an output, or let a value reach an event, an error or the state in plain text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hepinfra.apply.executor import Outcome
from hepinfra.errors import HepinfraError
from hepinfra.moves import moved_state
from hepinfra.state.model import State
from hepinfra.values import Change

if TYPE_CHECKING:
    from hepinfra.apply.executor import Executor


def new_key(change: Change) -> str:
    """The key a move's change goes to (its ``moved_to``: same environment and kind)."""
    assert change.moved_to is not None
    return change.moved_to.rpartition(".")[2]


async def move(ex: Executor, change: Change) -> Outcome:
    from hepinfra.kinds import KINDS

    kind, key, target = KINDS[change.kind], change.key, new_key(change)
    access = ex.access.get(change.env)

    def mutate(s: State) -> State:
        held = getattr(s, change.kind)
        if key not in held or target in held:
            raise HepinfraError(f"{change.address}: the state changed since the plan (moved already?); make a new plan")

        def record(managed: Any) -> Any:
            return kind.moved(access, managed, change.address, str(change.moved_to), s.lineage)

        return moved_state(s, change.kind, key, target, record)

    # no await before this: the ledger's state is moved before any later change of the plan starts
    await ex.ledgers[change.env].commit(mutate, urgent=True)
    note = f"moved to {change.moved_to} in state; nothing changed on hep.gg"
    return Outcome(change.address, change.action.value, True, note)
