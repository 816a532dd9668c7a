"""Renames: the manifest's ``moved:`` entries and ``state mv``, in the spirit of Terraform's ``moved {}``.

Owns: the ``moved:`` block's schema (``MovedSpec``: ``from`` and ``to``, each ``KIND.KEY`` or
``ENV/KIND.KEY``), checking it once every environment is resolved (``check``: one located error per
problem: another environment, another kind, a ``to`` not declared, a ``from`` still declared, two
entries from or to one address, a cycle), the resolved moves with chains followed (``Move``), the
planner's part (``plan_moves``: per environment, the ``move`` changes and the state as it will be after
them, which the kinds then plan from, so a renamed key is never forgotten and adopted again) and the pure
state edit every move makes (``moved_state``: the resource's record, its output records and its journal
entries under the new key; times, rotation counts and digests kept).
Must not: do I/O, open a sealed value (apply re-seals an id's value under its new address: the kind's
``moved`` hook), or know a kind's own rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from hepinfra.spec import IDENT, SpecModel
from hepinfra.state.model import State
from hepinfra.values import Action, Change, Declared, Diagnostic, clip, ref_of

if TYPE_CHECKING:
    from hepinfra.resolution import Resolution


class MovedSpec(SpecModel):
    """One rename: the resource that state knows as ``from`` is now declared as ``to``."""

    source: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)


@dataclass(frozen=True)
class Move:
    """A ``moved:`` entry, resolved: ``kind.source`` becomes ``kind.target`` (a chain followed to its
    end, ``path`` the keys on the way), in ``env`` or in every environment (None)."""

    kind: str
    source: str
    target: str
    env: str | None = None
    path: tuple[str, ...] = ()
    line: int | None = None  # of the entry in the manifest, for messages

    def applies_to(self, env: str) -> bool:
        return self.env in (None, env)

    def shown(self) -> str:
        return " -> ".join(f"{self.kind}.{key}" for key in (self.path or (self.source, self.target)))


_KEY = re.compile(IDENT)


def parse(text: str, sections: Sequence[str]) -> tuple[str | None, str, str]:
    """``KIND.KEY`` or ``ENV/KIND.KEY`` -> (env or None, kind, key); ValueError in plain words."""
    env, slash, rest = text.partition("/")
    if not slash:
        env, rest = "", text
    elif not _KEY.fullmatch(env):
        raise ValueError(f"'{clip(text)}': the environment before '/' must be a name")
    kind, dot, key = rest.partition(".")
    if not dot or kind not in sections or not _KEY.fullmatch(key):
        raise ValueError(
            f"'{clip(text)}' is not an address: write KIND.KEY ({', '.join(f'{s}.KEY' for s in sections)}), "
            "optionally after ENV/"
        )
    return env or None, kind, key


def _declared_keys(r: Resolution, declared: Mapping[str, Sequence[Declared]], kind: str, env: str | None) -> set[str]:
    if env is None:
        return set(r.model.section(kind))
    return {d.key for d in declared[env] if d.kind == kind}


def check(r: Resolution, declared: Mapping[str, Sequence[Declared]]) -> tuple[Move, ...]:
    """The manifest's ``moved:`` entries, checked against what is declared, with chains followed."""
    from hepinfra.kinds import KINDS

    sections = list(KINDS)
    environments = r.model.environments
    entries: list[tuple[int, str | None, str, str, str]] = []  # (index, env, kind, from, to)
    for i, entry in enumerate(r.model.moved):
        node = ("moved", i)
        parsed = []
        for field, text in (("from", entry.source), ("to", entry.to)):
            try:
                parsed.append(parse(text, sections))
            except ValueError as exc:
                raise r.error((*node, field), str(exc)) from None
        (env_from, kind, source), (env_to, kind_to, target) = parsed
        if env_from and env_to and env_from != env_to:
            raise r.error(
                (*node, "to"),
                f"a move stays within one environment: from is in '{env_from}', to in '{env_to}' (each environment "
                "has its own state); declare it in the new environment and 'hepinfra state rm' it in the old",
            )
        env = env_from or env_to
        if env is not None and env not in environments:
            raise r.error((*node, "from" if env_from else "to"), f"unknown environment '{clip(env)}'")
        if kind_to != kind:
            raise r.error((*node, "to"), f"a move keeps its kind: from is in {kind}, to in {kind_to}")
        if source == target:
            raise r.error((*node, "to"), f"from and to are the same address ({kind}.{source})")
        for j, other_env, other_kind, other_source, other_target in entries:
            overlap = other_kind == kind and (env is None or other_env is None or env == other_env)
            if overlap and other_source == source:
                raise r.error((*node, "from"), f"{kind}.{source} is already moved by moved: entry {j + 1}")
            if overlap and other_target == target:
                raise r.error((*node, "to"), f"moved: entry {j + 1} also moves a resource to {kind}.{target}")
        if source in _declared_keys(r, declared, kind, env):
            raise r.error(
                (*node, "from"),
                f"{kind}.{source} is still declared{f' in {env}' if env else ''}: a moved: entry's from is the "
                "old address; remove the declaration, or this entry",
            )
        entries.append((i, env, kind, source, target))
    moves = []
    for i, env, kind, source, target in entries:
        path = [source, target]
        while True:
            last = path[-1]
            following = [e for e in entries if (e[2], e[3]) == (kind, last) and (env is None or e[1] in (None, env))]
            if not following:
                break
            if following[0][4] in path:
                chain = " -> ".join(f"{kind}.{k}" for k in (*path, following[0][4]))
                raise r.error(("moved", i, "to"), f"moved: entries form a cycle: {chain}")
            path.append(following[0][4])
        if path[-1] not in _declared_keys(r, declared, kind, env):
            raise r.error(
                ("moved", i, "to"),
                f"{kind}.{path[-1]} is not declared{f' in {env}' if env else ''}: a moved: entry's to must be a "
                "declared resource (or the from of another entry)",
            )
        line = r.values.get(("moved", i), (None, None))[0]
        moves.append(Move(kind, source, path[-1], env, tuple(path), line))
    return tuple(moves)


# --- the planner's part --------------------------------------------------------------------------------


def plan_moves(manifest: Any, env: str, state: State | None) -> tuple[list[Change], list[Diagnostic], State | None]:
    """The ``move`` changes of ``env`` and its state as it will be after them (the kinds plan from that).
    A move whose old address state does not hold is done already, or was never needed: nothing. Two
    resources in state that would end at one address block the plan (nothing is moved)."""
    moves: Sequence[Move] = manifest.moves
    if state is None or not moves:
        return [], [], state
    declared = {(d.kind, d.key): d for d in manifest.declared[env]}
    wanted: list[tuple[Move, Declared]] = []
    for move in moves:
        decl = declared.get((move.kind, move.target))
        if move.applies_to(env) and decl is not None and move.source in getattr(state, move.kind):
            wanted.append((move, decl))
    changes: list[Change] = []
    diags: list[Diagnostic] = []
    after = state
    for move, decl in wanted:
        held = getattr(state, move.kind)
        rivals = [m.source for m, _ in wanted if m is not move and (m.kind, m.target) == (move.kind, move.target)]
        if move.target in held or rivals:
            other = move.target if move.target in held else rivals[0]
            diags.append(
                Diagnostic(
                    severity="error",
                    env=env,
                    address=f"{env}/{move.kind}.{move.source}",
                    message=f"moved: {move.shown()}: {move.kind}.{other} is in the state of '{env}' too, so the move "
                    "cannot happen",
                    hint=f"keep one: 'hepinfra state rm {env}/{move.kind}.{other}' (or the other), or remove the "
                    "moved: entry",
                )
            )
            continue
        managed = held[move.source]
        where = f" (manifest line {move.line})" if move.line else ""
        changes.append(
            Change(
                address=f"{env}/{move.kind}.{move.source}",
                env=env,
                key=move.source,
                action=Action.MOVE,
                name=decl.name,
                engine=decl.engine,
                kind=move.kind,
                database_id=getattr(managed, "id", None),
                moved_to=decl.address,
                reasons=(
                    f"moved: {move.shown()}{where}; state only: no API call, nothing rotated, its history and output "
                    "records kept",
                ),
            )
        )
        after = moved_state(after, move.kind, move.source, move.target)
    if diags:
        return [], diags, state
    return changes, diags, after


def moved_state(state: State, kind: str, old: str, new: str, record: Callable[[Any], Any] | None = None) -> State:
    """``state`` with ``kind.old`` under ``kind.new``: its record (``record`` may seal it again), its output
    records and its journal entries. Nothing else changes: times, rotation counts, digests are kept."""
    held: dict[str, Any] = dict(getattr(state, kind))
    managed = held.pop(old)
    if record is not None:
        managed = record(managed)
    held[new] = managed.model_copy(update={"key": new})
    old_ref, new_ref = ref_of(kind, old), ref_of(kind, new)
    outputs = {}
    for output_id, found in state.outputs.items():
        if found.database == old_ref:
            found = found.model_copy(update={"database": new_ref})
            output_id = State.output_id(new_ref, found.path)
        outputs[output_id] = found
    journal = tuple(j.model_copy(update={"database": new_ref}) if j.database == old_ref else j for j in state.journal)
    return state.model_copy(update={kind: held, "outputs": outputs, "journal": journal})
