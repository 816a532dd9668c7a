"""Plan values and the pure planner: desired (manifest) + known (state) + actual (facts) -> Plan.

Owns: the closed set of actions, the Change / Diagnostic / Plan values (serialisable, no
secrets, pinned to each environment's state lineage + serial and a digest of its List
response), the rules every resource kind shares (due rotations, stale and retired outputs),
and ``make_plan``, a pure function that asks each kind of the registry (``hepinfra.kinds``)
for its changes. Must not: do I/O, hold an HTTP client, know a kind's own rules, or ever see a
secret (only keyed digests).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from hepinfra import __version__
from hepinfra.hepgg.models import DatabaseSummary
from hepinfra.manifest import Declared, Manifest, format_duration
from hepinfra.state.model import State

PLAN_FORMAT = 1


class Action(StrEnum):
    CREATE = "create"
    ADOPT = "adopt"
    ROTATE = "rotate"
    RENDER = "render"
    FORGET = "forget"
    NOOP = "noop"

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]


_SYMBOLS = {
    Action.CREATE: "+",
    Action.ADOPT: "<=",
    Action.ROTATE: "~",
    Action.RENDER: ">",
    Action.FORGET: "-",
    Action.NOOP: " ",
}


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class OutputChange(_Value):
    path: str
    kind: Literal["dotenv", "template", "exec", "aws_secretsmanager", "aws_ssm", "age"]
    reason: str


class Change(_Value):
    address: str
    env: str
    key: str
    action: Action
    reasons: tuple[str, ...] = ()
    name: str  # a database's platform name; an id's or an upload's key
    engine: str  # a database's engine; an id's type; "file" for an upload
    kind: str = "databases"  # the resource kind: databases, ids, uploads
    database_id: str | None = None
    outputs: tuple[OutputChange, ...] = ()  # outputs this change writes
    retire: tuple[str, ...] = ()  # outputs no longer declared: hepinfra's keys/files are removed
    retire_left: dict[str, str] = {}  # of ``retire``, those left in place and only listed: path -> why
    finish_rotation: bool = False  # an interrupted rotation: apply uses Reveal, never a second rotate
    rotate_after_adopt: bool = False


class Diagnostic(_Value):
    severity: Literal["error", "warning"]
    message: str
    env: str | None = None
    address: str | None = None
    hint: str | None = None


class EnvPin(_Value):
    lineage: str | None
    serial: int
    remote_digest: str | None


class ReviewItem(_Value):
    """``plan --base``: one change to what runs or where values go at apply, for a reviewer."""

    where: str  # manifest, state, a resource (databases.shop) or a program
    what: str


class Plan(_Value):
    format_version: int = PLAN_FORMAT
    hepinfra_version: str = __version__
    created_at: datetime
    manifest: str
    manifest_digest: str
    refreshed: bool
    environments: dict[str, EnvPin]
    changes: tuple[Change, ...]
    diagnostics: tuple[Diagnostic, ...] = ()
    base: str | None = None  # plan --base REF: the revision whose manifest was trusted
    review: tuple[ReviewItem, ...] = ()  # plan --base: what the change would run or send where
    rotate: tuple[str, ...] = ()  # --rotate as given: a saved plan is checked by planning again with it

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    @property
    def actionable(self) -> list[Change]:
        return [c for c in self.changes if c.action is not Action.NOOP]

    @property
    def has_changes(self) -> bool:
        return bool(self.actionable)

    def counts(self) -> dict[str, int]:
        counts = {a.value: 0 for a in Action}
        for change in self.changes:
            counts[change.action.value] += 1
        return counts


# --- facts gathered by the fetch step --------------------------------------------------------------


@dataclass(frozen=True)
class ObservedOutput:
    exists: bool
    digest: str | None = None  # keyed digest of the managed content now on disk
    problem: str | None = None  # unreadable, not a dotenv file, ...
    key_digests: tuple[tuple[str, str], ...] | None = None  # per key, where a sink can tell
    trusted: bool = False  # cannot be read back: the recorded digest stands for it


@dataclass(frozen=True)
class EnvFacts:
    """What the fetch step learned about one environment. No secrets: digests only."""

    env: str
    databases: tuple[DatabaseSummary, ...] | None  # None: List could not be called
    error: Diagnostic | None = None
    outputs: Mapping[tuple[str, str], ObservedOutput] = field(default_factory=dict)  # (resource ref, path)
    password_digests: Mapping[str, str] = field(default_factory=dict)  # database id -> keyed digest
    refreshed: bool = False
    account_peers: tuple[str, ...] = ()  # other selected environments using the same database key
    peer_names: frozenset[str] = frozenset()  # platform names declared by unselected environments on that key
    missing: Mapping[str, str] = field(default_factory=dict)  # kind -> credential variables not set
    retire_left: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (ref, path) -> why it is kept

    @property
    def remote_digest(self) -> str | None:
        if self.databases is None:
            return None
        return remote_digest(self.databases)


def remote_digest(databases: Iterable[DatabaseSummary]) -> str:
    """A digest of what List said that matters to a plan (ids, names, engines), order-free."""
    rows = sorted((d.id, d.name, d.engine) for d in databases)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


# --- the planner -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RotateRequest:
    """``--rotate`` targets, parsed: (env or None for every env, resource ref: ``KEY`` of a
    database, ``ids.KEY``, ``uploads.KEY``)."""

    targets: frozenset[tuple[str | None, str]] = frozenset()

    def wants(self, env: str, ref: str) -> bool:
        return (env, ref) in self.targets or (None, ref) in self.targets


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
    decl: Declared, target_path: str, definition: str, state: State, facts: EnvFacts, current: str | None
) -> str | None:
    """Why one output must be written again, or None. ``current``: the keyed digest of the
    resource's value now (a revealed password, a stored id, an upload's URL), where known."""
    record = state.outputs.get(State.output_id(decl.ref, target_path))
    observed = facts.outputs.get((decl.ref, target_path), ObservedOutput(exists=False))
    if record is None:
        return "never rendered"
    if not observed.exists:
        return "missing"
    if observed.problem:
        return observed.problem
    if not observed.trusted and observed.digest != record.digest:
        return _key_drift(record.key_digests, observed.key_digests) or "edited since it was written"
    if record.definition_digest != definition:
        return "its definition in the manifest changed"
    if current is not None and current != record.password_digest:
        from hepinfra.kinds import KINDS

        return f"holds an old {KINDS[decl.kind].value_noun}"
    return None


def _unobservable(manifest: Manifest, env: str, state: State | None, facts: EnvFacts) -> list[Diagnostic]:
    """A refreshing plan says which written outputs it could not read back (exec without read:)."""
    if not facts.refreshed or state is None:
        return []
    trusted = [
        target.path
        for decl in manifest.declared[env]
        for target in decl.outputs
        if State.output_id(decl.ref, target.path) in state.outputs
        and facts.outputs.get((decl.ref, target.path), ObservedOutput(exists=False)).trusted
    ]
    if not trusted:
        return []
    shown = ", ".join(trusted[:3]) + (f" and {len(trusted) - 3} more" if len(trusted) > 3 else "")
    return [
        Diagnostic(
            severity="warning",
            env=env,
            message=f"not read back, so trusted as last written: {shown}",
            hint="give an exec output a read: command to detect drift",
        )
    ]


def _key_drift(recorded: Mapping[str, str], observed: tuple[tuple[str, str], ...] | None) -> str | None:
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


def make_plan(
    manifest: Manifest,
    states: Mapping[str, State | None],
    facts: Mapping[str, EnvFacts],
    *,
    now: datetime,
    rotate: RotateRequest | None = None,
    environments: Sequence[str] | None = None,
) -> Plan:
    """The pure planner. ``facts`` must cover every selected environment."""
    envs = list(environments or manifest.environments)
    rotate = rotate or RotateRequest()
    changes: list[Change] = []
    diagnostics: list[Diagnostic] = []
    pins: dict[str, EnvPin] = {}
    claimed: dict[str, set[str]] = {}
    for env in envs:
        state = states.get(env)
        env_facts = facts[env]
        pins[env] = EnvPin(
            lineage=state.lineage if state else None,
            serial=state.serial if state else 0,
            remote_digest=env_facts.remote_digest,
        )
        if env_facts.error is not None:
            diagnostics.append(env_facts.error)
        if env_facts.databases is None:
            continue
        from hepinfra.kinds import KINDS

        here = EnvInput(manifest, env, state or State(environment=env), env_facts, now, rotate)
        claimed[env] = set()
        env_changes, env_diags = [], []
        for kind in KINDS.values():
            found, found_diags, found_claims = kind.plan(here)
            env_changes += found
            env_diags += found_diags
            claimed[env] |= found_claims
        changes.extend(_with_retire_left(c, env_facts) for c in env_changes)
        diagnostics.extend(env_diags)
        diagnostics.extend(_unobservable(manifest, env, state, env_facts))
    diagnostics.extend(_account_diagnostics(manifest, facts, claimed))
    return Plan(
        created_at=now,
        manifest=str(manifest.path),
        manifest_digest=manifest.digest,
        refreshed=all(facts[e].refreshed for e in envs),
        environments=pins,
        changes=tuple(changes),
        diagnostics=tuple(diagnostics),
    )


_QUANTITY = re.compile(r"\d+(?:\.\d+)?")


def reason_code(reason: str) -> str:
    """A reason without its quantities (ages, counts, sizes): what it says, not when it was said."""
    return _QUANTITY.sub("#", reason)


def change_set(plan: Plan, *, read_back: bool = True) -> list[dict[str, Any]]:
    """What a plan would do, in one order, as two plans of the same change set give it: addresses,
    actions, reason codes, output targets, retires; never times, ages, serials or the order of
    environments. ``read_back=False`` leaves out why each output is rendered (what a refreshing plan
    read back), keeping which outputs are."""
    items = []
    for c in plan.actionable:
        outputs = sorted([o.path, o.kind, reason_code(o.reason) if read_back else ""] for o in c.outputs)
        items.append(
            {
                "address": c.address,
                "action": c.action.value,
                "name": c.name,
                "engine": c.engine,
                "database_id": c.database_id,
                "reasons": sorted(reason_code(r) for r in c.reasons) if read_back else [],
                "outputs": outputs,
                "retire": sorted(c.retire),
                "retire_left": sorted(c.retire_left),
                "finish_rotation": c.finish_rotation,
                "rotate_after_adopt": c.rotate_after_adopt,
            }
        )
    return sorted(items, key=lambda item: item["address"])


def _with_retire_left(change: Change, facts: EnvFacts) -> Change:
    """``change`` saying which of its retired outputs apply will leave in place (listed only)."""
    from hepinfra.manifest import ref_of

    ref = ref_of(change.kind, change.key)
    left = {p: facts.retire_left[(ref, p)] for p in change.retire if (ref, p) in facts.retire_left}
    return change.model_copy(update={"retire_left": left}) if left else change


def _account_diagnostics(
    manifest: Manifest, facts: Mapping[str, EnvFacts], claimed: Mapping[str, set[str]]
) -> list[Diagnostic]:
    """Per account (environments sharing a key, reported once by the first of them): platform names
    declared by two of its environments, and databases none of them manages."""
    from hepinfra.kinds import KINDS

    diags: list[Diagnostic] = []
    for env, claimed_here in claimed.items():
        env_facts = facts[env]
        assert env_facts.databases is not None
        members = sorted({env, *(p for p in env_facts.account_peers if p in claimed)})
        if env != members[0]:
            continue
        owner: dict[str, str] = {}
        for member in members:
            for decl in manifest.declared[member]:
                if not KINDS[decl.kind].needs_database_key:  # only they have platform names on the account
                    continue
                first = owner.setdefault(decl.name, member)
                if first != member:
                    diags.append(
                        Diagnostic(
                            severity="error",
                            env=member,
                            address=decl.address,
                            message=f"platform name '{decl.name}' is also declared in environment '{first}', "
                            "which uses the same hep.gg account",
                            hint="put {{ env }} in the name template, or give the environments different keys",
                        )
                    )
        everyone = set(claimed_here).union(*(claimed[m] for m in members))
        theirs = env_facts.peer_names.union(*(facts[m].peer_names for m in members))
        unmanaged = [d.name for d in env_facts.databases if d.id not in everyone and d.name not in theirs]
        if unmanaged:
            shown = ", ".join(unmanaged[:10]) + (f" and {len(unmanaged) - 10} more" if len(unmanaged) > 10 else "")
            where = env if len(members) == 1 else f"{', '.join(members)} (one account)"
            diags.append(
                Diagnostic(
                    severity="warning",
                    env=env,
                    message=f"{len(unmanaged)} database(s) on the account of {where} are not managed: {shown}",
                    hint="declare them to adopt them, or ignore this",
                )
            )
    return diags


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

    manifest: Manifest
    env: str
    state: State
    facts: EnvFacts
    now: datetime
    rotate: RotateRequest
    _records: dict[str, list[str]] | None = None

    def declared(self, kind: str) -> list[Declared]:
        return [d for d in self.manifest.declared[self.env] if d.kind == kind]

    def record_paths(self, ref: str) -> list[str]:
        """Paths with an output record of ``ref`` (indexed once: O(N) per environment)."""
        if self._records is None:
            self._records = {}
            for record in self.state.outputs.values():
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
            reason = output_reason(decl, target.path, target.definition_digest, self.state, self.facts, current)
            if reason is None and owed and any(target.path in j.outputs for j in pending):
                reason = "marked stale by an interrupted apply"
            if reason is not None:
                stale.append(OutputChange(path=target.path, kind=target.kind, reason=reason))
        return tuple(stale)

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
                **base_fields(decl), action=Action.RENDER, reasons=reasons, outputs=stale, retire=gone, **extra
            )
        return Change(**base_fields(decl), action=Action.NOOP, **extra)


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
