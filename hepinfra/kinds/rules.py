"""The plan rules every resource kind shares: due rotations, stale and retired outputs, the per-
environment input a kind plans from (``EnvInput``), and the loop for kinds that only state knows
(``plan_held``). Kinds call these; the planner (``hepinfra.plan``) calls the kinds.

Must not: do I/O, know a kind's own rules, or see a secret (only keyed digests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hepinfra.state.model import WRITE_BACK_ABSENT, OutputRecord, State
from hepinfra.values import (
    Action,
    Change,
    Declared,
    Diagnostic,
    EnvFacts,
    Held,
    ObservedOutput,
    OutputChange,
    RotateRequest,
    format_duration,
)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or unit == "m":
            return f"{max(int(seconds // size), 0)}{unit}"
    return f"{int(seconds)}s"  # pragma: no cover


def due(decl: Declared, managed_baseline: datetime | None, now: datetime) -> str | None:
    if decl.rotate_every is None or managed_baseline is None:
        return None
    age = (now - managed_baseline).total_seconds()
    if age >= decl.rotate_every:
        return f"due: last rotated {_age(age)} ago (every {format_duration(decl.rotate_every)})"
    return None


def output_reason(
    decl: Declared,
    target_path: str,
    definition: str,
    state: State,
    facts: EnvFacts,
    current: str | None,
    noun: str | None = None,
) -> str | None:
    """Why one output must be written again, or None. ``current``: the keyed digest of the
    resource's value now (a revealed password, a stored id, an upload's URL), where known; ``noun``:
    what the kind's outputs hold ("holds an old password")."""
    record = state.outputs.get(State.output_id(decl.ref, target_path))
    observed = facts.outputs.get((decl.ref, target_path), ObservedOutput(exists=False))
    if record is None:
        return "never rendered"
    # the checkout holds what the last apply replaced (its write-back is not merged yet): neither
    # missing nor edited; a changed definition or an old value is still a change
    if not pending_write_back(record, observed):
        if not observed.exists:
            return "missing"
        if observed.problem:
            return observed.problem
        if not observed.trusted and observed.digest != record.digest:
            return key_drift(record.key_digests, observed.key_digests) or "edited since it was written"
    if record.definition_digest != definition:
        return "its definition in the manifest changed"
    if current is not None and current != record.password_digest:
        return f"holds an old {noun or 'value'}"
    return None


def pending_write_back(record: OutputRecord, observed: ObservedOutput) -> bool:
    """The file is the one an ``apply --write-back`` replaced (or still absent, where there was none):
    the new one is on its way through a write-back pull request."""
    if record.write_back_from is None:
        return False
    seen = (observed.digest if not observed.problem else None) if observed.exists else WRITE_BACK_ABSENT
    return seen == record.write_back_from


def key_drift(recorded: Mapping[str, str], observed: tuple[tuple[str, str], ...] | None) -> str | None:
    """Which keys differ from what hepinfra wrote, by name only (a diff of key -> digest maps)."""
    if not recorded or observed is None:
        return None
    from deepdiff import DeepDiff

    diff = DeepDiff(dict(recorded), dict(observed), view="tree")
    from hepinfra.safety.paths import shown

    def names(kind: str) -> list[str]:  # key names come from state (editable): escaped and capped
        return sorted(shown(str(item.path(output_format="list")[0]), 60) for item in diff.get(kind, []))

    edited, missing = names("values_changed"), names("dictionary_item_removed")
    parts = [f"{', '.join(edited)} edited" if edited else "", f"{', '.join(missing)} missing" if missing else ""]
    found = "; ".join(p for p in parts if p)
    return f"{found} since it was written" if found else None


_OWED_STEPS = {
    "hook": "the after_rotate hook is owed by an earlier apply (run again; no rotation)",
    "verify": "a verification is owed by an earlier apply (checked again; no rotation)",
}


_DROPPED_STEPS = {
    "hook": "an after_rotate hook owed by an earlier apply is dropped: after_rotate was removed",
    "verify": "a verification owed by an earlier apply is dropped: verify was turned off",
}


@dataclass
class EnvInput:
    """What a kind's planner gets for one environment (all pure values)."""

    manifest: Any  # the loaded Manifest (the loader sits above the kinds)
    env: str
    state: State
    facts: EnvFacts
    now: datetime
    rotate: RotateRequest
    nouns: Mapping[str, str] = field(default_factory=dict)  # kind -> what its outputs hold ("password")
    notes: list[Diagnostic] = field(default_factory=list)  # warnings the kinds' rules add (pending write-backs)
    settled: list[str] = field(default_factory=list)  # output ids whose write-back is merged
    capped: frozenset[str] = frozenset()  # addresses whose due rotation --max-rotations leaves for a later run
    held: dict[str, Held] = field(default_factory=dict)  # address -> why its due rotation waits
    due_rotations: list[tuple[float, str]] = field(default_factory=list)  # (seconds overdue, address) rotated as due
    _records: dict[str, list[str]] | None = None

    def rotation_due(self, decl: Declared, baseline: datetime | None, failed: int = 0) -> str | None:
        """Why ``decl`` rotates because it is due (``rotate_every`` since ``baseline``), or None: not due,
        or due and held (``windows.hold``: its window is closed, its last ``failed`` rotations failed in a
        row, or --max-rotations leaves it), which its change then carries (``held``)."""
        from hepinfra.windows import hold

        when = due(decl, baseline, self.now)
        if when is None or baseline is None or decl.rotate_every is None:
            return None
        waits = hold(decl, when, failed, self.now, capped=decl.address in self.capped)
        if waits is not None:
            self.held[decl.address] = waits
            return None
        self.due_rotations.append(((self.now - baseline).total_seconds() - decl.rotate_every, decl.address))
        return when

    def declared(self, kind: str) -> list[Declared]:
        return [d for d in self.manifest.declared[self.env] if d.kind == kind]

    def record_paths(self, ref: str) -> list[str]:
        """Paths with an output record of ``ref`` (indexed once: O(N) per environment)."""
        if self._records is None:
            self._records = {}
            skipped = self.manifest.skipped_outputs
            for record in self.state.outputs.values():
                if record.kind in skipped:
                    continue  # left out of this run (--skip-local-outputs): not retired either
                self._records.setdefault(record.database, []).append(record.path)
        return self._records.get(ref, [])

    def retired(self, decl: Declared) -> tuple[str, ...]:
        """Paths of outputs with a record but no longer declared: hepinfra's part is removed."""
        declared_paths = {t.path for t in decl.outputs}
        return tuple(sorted(p for p in self.record_paths(decl.ref) if p not in declared_paths))

    def stale_outputs(self, decl: Declared, current: str | None) -> tuple[OutputChange, ...]:
        """The outputs to write again: missing, edited, redefined, holding an old value, or owed by an
        interrupted apply."""
        stale = []
        pending = self.state.pending(decl.ref)
        owed = any(j.op == "render" for j in pending)
        for target in decl.outputs:
            reason = output_reason(
                decl, target.path, target.definition_digest, self.state, self.facts, current, self.nouns.get(decl.kind)
            )
            if reason is None and owed and any(target.path in j.outputs for j in pending):
                reason = "marked stale by an interrupted apply"
            if reason is None:
                self._note_write_back(decl, target.path)
            if reason is not None:
                stale.append(OutputChange(path=target.path, kind=target.kind, reason=reason))
        return tuple(stale)

    def _note_write_back(self, decl: Declared, path: str) -> None:
        record = self.state.outputs.get(State.output_id(decl.ref, path))
        observed = self.facts.outputs.get((decl.ref, path), ObservedOutput(exists=False))
        if record is None or record.write_back_from is None:
            return
        if observed.exists and not observed.problem and observed.digest == record.digest:
            self.settled.append(State.output_id(decl.ref, path))  # merged: the checkout holds what was written
        elif pending_write_back(record, observed):
            from hepinfra.safety.paths import shown

            self.notes.append(
                Diagnostic(
                    severity="warning",
                    env=self.env,
                    address=decl.address,
                    message=f"{shown(path, 120)}: pending write-back: this checkout holds the file the apply of "
                    f"{record.written_at:%Y-%m-%d %H:%M} UTC replaced; merge its write-back pull request",
                )
            )

    def render_or_noop(self, decl: Declared, current: str | None, **extra: Any) -> Change:
        """The change of a resource that needs no remote step: write its stale outputs, or nothing."""
        stale = self.stale_outputs(decl, current)
        gone = self.retired(decl)
        owed = {j.op for j in self.state.pending(decl.ref)} & set(_OWED_STEPS)
        if stale or gone or owed:
            reasons = tuple(f"{o.path}: {o.reason}" for o in stale) + tuple(f"{p}: no longer declared" for p in gone)
            setting = {"verify": decl.verify, "hook": bool(decl.after_rotate)}
            reasons += tuple(_OWED_STEPS[op] if setting[op] else _DROPPED_STEPS[op] for op in sorted(owed))
            return Change(
                **base_fields(decl), action=Action.RENDER, reasons=reasons, outputs=stale, retire=gone,
                held=self.held.get(decl.address), **extra,
            )  # fmt: skip
        return Change(**base_fields(decl), action=Action.NOOP, held=self.held.get(decl.address), **extra)


def all_outputs(decl: Declared, reason: str = "with the new credentials") -> tuple[OutputChange, ...]:
    return tuple(OutputChange(path=t.path, kind=t.kind, reason=reason) for t in decl.outputs)


def base_fields(decl: Declared) -> dict[str, Any]:
    return {
        "address": decl.address,
        "env": decl.env,
        "key": decl.key,
        "name": decl.name,
        "engine": decl.engine,
        "kind": decl.kind,
    }


def forgotten(here: EnvInput, section: str, key: str, engine: str, reason: str) -> Change:
    """The forget of a resource in state that the manifest no longer declares."""
    return Change(address=f"{here.env}/{section}.{key}", env=here.env, key=key, name=key, engine=engine,
                  kind=section, action=Action.FORGET, reasons=(reason,))  # fmt: skip


def credential_error(here: EnvInput, decl: Declared, what: str, hint: str) -> list[Diagnostic]:
    """A blocking error when a change of ``decl`` needs credentials the environment lacks."""
    problem = here.facts.missing.get(decl.kind)
    if problem is None:
        return []
    return [Diagnostic(severity="error", env=here.env, address=decl.address, message=f"{what}: {problem}", hint=hint)]


Decision = Callable[[Declared, Any, set[str]], list[str]]  # (declaration, held or None, pending ops) -> reasons


def plan_held(
    here: EnvInput,
    section: str,
    decide: Decision,
    *,
    outputs_reason: str,
    credentials: tuple[str, str],
    forget_reason: str,
    engine_of: Callable[[Any], str],
) -> tuple[list[Change], list[Diagnostic], set[str]]:
    """The plan of a kind that hep.gg cannot list (only state knows its resources): ``create`` what
    state does not hold, ``rotate`` what ``decide`` gives reasons for (a create's reasons too), else
    render stale outputs; ``forget`` what the manifest no longer declares. A create or rotate
    without the kind's credentials is a blocking error (``credentials``: what, and the hint)."""
    held: Mapping[str, Any] = getattr(here.state, section)
    changes: list[Change] = []
    diags: list[Diagnostic] = []
    declared = here.declared(section)
    for decl in declared:
        managed = held.get(decl.key)
        reasons = decide(decl, managed, {j.op for j in here.state.pending(decl.ref)})
        if managed is not None and not reasons:
            changes.append(here.render_or_noop(decl, managed.value_digest))
            continue
        action = Action.CREATE if managed is None else Action.ROTATE
        changes.append(Change(**base_fields(decl), action=action, reasons=tuple(reasons),
                              outputs=all_outputs(decl, outputs_reason), retire=here.retired(decl)))  # fmt: skip
        diags += credential_error(here, decl, *credentials)
    keys = {d.key for d in declared}
    changes += [forgotten(here, section, key, engine_of(m), forget_reason) for key, m in sorted(held.items())
                if key not in keys]  # fmt: skip
    return changes, diags, set()


# --- what a render does, said in the plan and by apply --------------------------------------------


def owed_steps(change: Change) -> list[str]:
    """The steps an earlier apply owes that this render runs again (verify, then hook)."""
    return [op for op in ("verify", "hook") if _OWED_STEPS[op] in change.reasons]


def deleted_outputs(change: Change) -> list[str]:
    """The outputs no longer declared that apply deletes (not those it only lists)."""
    return [p for p in change.retire if p not in change.retire_left]


def render_headline(change: Change, outputs: str) -> str:
    """A render's headline after its address, from what it does: ``outputs`` (``outputs of 'shop-prod'``)
    will be rendered, outputs no longer declared will be deleted, an owed verify or hook runs again."""
    from hepinfra.safety.paths import shown

    parts = [f"{outputs} will be rendered"] if change.outputs else []
    gone = deleted_outputs(change)
    if gone:
        parts.append(f"{', '.join(shown(p, 100) for p in gone)} will be deleted (no longer declared)")
    owed = owed_steps(change)
    if "verify" in owed:
        parts.append("will verify again")
    if "hook" in owed:
        parts.append("will run its after_rotate hook again")
    return "; ".join(parts) or f"{outputs}: nothing to write (only listed)"


def render_note(change: Change) -> str:
    """What apply says a render did with the outputs (before verify and hook): rendered, deleted."""
    parts = [f"rendered {len(change.outputs)} output(s)"] if change.outputs else []
    gone = deleted_outputs(change)
    if gone:
        parts.append(f"deleted {len(gone)} output(s) no longer declared")
    return "; ".join(parts)
