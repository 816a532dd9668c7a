"""What a resource kind declares to the core: one value per kind, listed in ``kinds.KINDS``.

Owns: the ``Kind`` shape (schema, resolution, plan rules, apply steps).
Must not: import anything heavy (plan rendering is on the start-up
path of every CI run); a kind's apply steps live in their own module, imported by the executor.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hepinfra.kinds.rules import EnvInput
    from hepinfra.values import Change, Diagnostic

Step = Callable[[Any, "Change"], Awaitable[Any]]  # (executor, change) -> Outcome


@dataclass(frozen=True)
class Kind:
    """A resource kind: its manifest section (also the middle of its addresses, ``ENV/SECTION.KEY``),
    its template variable, its plan rules, how a change of it reads, and the module holding its
    apply steps (a ``STEPS`` mapping of Action -> step; ``moves.move`` for a move, and optional hooks:
    ``moved`` for a record bound to its address, ``rekeyed`` for one holding sealed values)."""

    section: str
    var: str  # the template variable holding its value: db, id, upload
    plan: Callable[[EnvInput], tuple[list[Change], list[Diagnostic], set[str]]]
    headline: Callable[[Change], str]  # "will be created as ...", after the address
    steps: str  # module path: STEPS (Action -> step) and ``value_of`` (the ``output`` command's values)
    forgotten: str = "no longer managed; it stays on hep.gg"  # the apply message of a forget
    # lives in the database API: planning it needs the environment's key and List, it has remote ids
    # and platform names on the account
    needs_database_key: bool = False
    needs_state_key: bool = False  # its values are kept encrypted in state (HEPINFRA_STATE_KEY)
    value_noun: str = "value"  # what an output of it holds: "holds an old <value_noun>"
    # the plan JSON: the name under which a change's ``engine`` appears (a database's "engine", an
    # id's "type"), or None: left out, it means nothing for the kind. ``database_id`` appears only
    # for kinds with ``needs_database_key`` (remote ids)
    engine_field: str | None = None
    # an interrupted apply: what the next apply does with a change of it whose remote call had begun
    # (the Ctrl-C message names it only for the kinds and actions that were in flight)
    in_flight: Callable[[Change], str] = lambda change: "the next apply settles it from the journal"
    # the credential variables it lacks in an environment ("X is not set", a malformed one), or None
    credentials: Callable[[Any, str, Any], str | None] | None = None
    # the manifest: its section's schema (a SpecModel with ``environments`` and ``outputs``), how a
    # declaration resolves in one environment (``declare(r, env, key, context, names)`` -> Declared's
    # fields and ``value``, its template variable with placeholder values), and a check across
    # every environment once all are resolved (``check(r, declared)``)
    spec: type[Any] | None = None
    declare: Callable[..., dict[str, Any]] | None = None
    check: Callable[[Any, dict[str, Any]], None] | None = None
    # plan --base: the settings of a declaration that a pull request's review lists when they change
    # (what runs or where values go at apply), and a note on them
    review_fields: tuple[str, ...] = ()
    review_note: str = ""
    # ``status``: a managed record's last rotation (or creation/upload) and how many it had
    history: Callable[[Any], tuple[datetime | None, int]] = lambda managed: (None, 0)

    def step(self, action: Any) -> Step:
        steps: dict[Any, Step] = importlib.import_module(self.steps).STEPS
        return steps[action]

    def moved(self, access: Any, managed: Any, old: str, new: str, lineage: str) -> Any:
        """A managed record about to move from address ``old`` to ``new``: as it is, or as the steps
        module's ``moved`` hook gives it (an id's value sealed again: its address is bound into the seal)."""
        hook = getattr(importlib.import_module(self.steps), "moved", None)
        return managed if hook is None else hook(access, managed, old, new, lineage)

    def rekeyed(self, old: Any, new: Any, managed: Any, address: str, lineage: str) -> Any:
        """``state rekey``: a managed record with every value it keeps sealed opened under the ``old``
        cipher and sealed again under ``new``: as it is, or as the steps module's ``rekeyed`` hook gives it."""
        hook = getattr(importlib.import_module(self.steps), "rekeyed", None)
        return managed if hook is None else hook(old, new, managed, address, lineage)

    async def value_of(self, hub: Any, access: Any, managed: Any, decl: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """A managed resource's template variable and its standard fields (for ``output`` and ``run``)."""
        found: tuple[dict[str, Any], dict[str, Any]] = await importlib.import_module(self.steps).value_of(
            hub, access, managed, decl
        )
        return found
