"""Plan values and the pure planner: desired (manifest) + known (state) + actual (facts) -> Plan.

Owns: the closed set of actions, the Change / Diagnostic / Plan values (serialisable, no
secrets, pinned to each environment's state lineage + serial and a digest of its List
response), and ``make_plan``, a pure function. ``reveal_candidates`` (also pure) tells the
fetch step which databases need a Reveal to decide whether an output holds a stale password.
Must not: do I/O, hold an HTTP client, or ever see a password (only keyed digests).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from hepinfra import __version__
from hepinfra.hepgg.models import DatabaseSummary
from hepinfra.manifest import DeclaredDatabase, Manifest, format_duration
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
    name: str
    engine: str
    database_id: str | None = None
    outputs: tuple[OutputChange, ...] = ()  # outputs this change writes
    retire: tuple[str, ...] = ()  # outputs no longer declared: hepinfra's keys/files are removed
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
    outputs: Mapping[tuple[str, str], ObservedOutput] = field(default_factory=dict)  # (db key, path)
    password_digests: Mapping[str, str] = field(default_factory=dict)  # database id -> keyed digest
    refreshed: bool = False
    account_peers: tuple[str, ...] = ()  # other selected environments using the same database key
    peer_names: frozenset[str] = frozenset()  # platform names declared by unselected environments on that key

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
    """``--rotate`` targets, parsed: (env or None for every env, database key)."""

    targets: frozenset[tuple[str | None, str]] = frozenset()

    def wants(self, env: str, key: str) -> bool:
        return (env, key) in self.targets or (None, key) in self.targets


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or unit == "m":
            return f"{max(int(seconds // size), 0)}{unit}"
    return f"{int(seconds)}s"  # pragma: no cover


def _due(decl: DeclaredDatabase, managed_baseline: datetime | None, now: datetime) -> str | None:
    if decl.rotate_every is None or managed_baseline is None:
        return None
    age = (now - managed_baseline).total_seconds()
    if age >= decl.rotate_every:
        return f"due: last rotated {_age(age)} ago (every {format_duration(decl.rotate_every)})"
    return None


def _output_reason(
    decl: DeclaredDatabase, target_path: str, definition: str, state: State, facts: EnvFacts, db_id: str | None
) -> str | None:
    record = state.outputs.get(State.output_id(decl.key, target_path))
    observed = facts.outputs.get((decl.key, target_path), ObservedOutput(exists=False))
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
    if (
        db_id is not None
        and db_id in facts.password_digests
        and facts.password_digests[db_id] != record.password_digest
    ):
        return "holds an old password"
    return None


def _unobservable(manifest: Manifest, env: str, state: State | None, facts: EnvFacts) -> list[Diagnostic]:
    """A refreshing plan says which written outputs it could not read back (exec without read:)."""
    if not facts.refreshed or state is None:
        return []
    trusted = [
        target.path
        for decl in manifest.declared[env]
        for target in decl.outputs
        if State.output_id(decl.key, target.path) in state.outputs
        and facts.outputs.get((decl.key, target.path), ObservedOutput(exists=False)).trusted
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


def reveal_candidates(
    manifest: Manifest,
    states: Mapping[str, State | None],
    facts: Mapping[str, EnvFacts],
    *,
    now: datetime,
    rotate: RotateRequest | None = None,
) -> dict[str, list[str]]:
    """Database ids per env whose outputs look current on disk, so only Reveal can tell if they are stale.

    Databases the plan rotates (due or requested) are left out: their outputs are rewritten anyway.
    """
    wanted: dict[str, list[str]] = {}
    for env, env_facts in facts.items():
        state = states.get(env)
        if state is None or env_facts.databases is None:
            continue
        remote_ids = {d.id for d in env_facts.databases}
        for decl in manifest.declared[env]:
            managed = state.databases.get(decl.key)
            if managed is None or managed.id not in remote_ids or not decl.outputs or state.pending(decl.key):
                continue
            if (rotate and rotate.wants(env, decl.key)) or _due(decl, managed.rotated_at or managed.managed_since, now):
                continue  # rotated anyway: every output is written with the new password
            if all(
                _output_reason(decl, t.path, t.definition_digest, state, env_facts, None) is None for t in decl.outputs
            ):
                wanted.setdefault(env, []).append(managed.id)
    return wanted


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
        env_changes, env_diags, claimed[env] = _plan_env(
            manifest, env, state or State(environment=env), env_facts, now, rotate
        )
        changes.extend(env_changes)
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


def _plan_env(
    manifest: Manifest, env: str, state: State, facts: EnvFacts, now: datetime, rotate: RotateRequest
) -> tuple[list[Change], list[Diagnostic], set[str]]:
    assert facts.databases is not None
    by_id = {d.id: d for d in facts.databases}
    by_name = {d.name: d for d in facts.databases}
    changes: list[Change] = []
    diags: list[Diagnostic] = []
    declared = manifest.declared[env]
    claimed: set[str] = set()  # remote ids accounted for
    record_paths: dict[str, list[str]] = {}  # database key -> output paths with a record (one pass: O(N))
    for record in state.outputs.values():
        record_paths.setdefault(record.database, []).append(record.path)

    for decl in declared:
        managed = state.databases.get(decl.key)
        pending = {j.op for j in state.pending(decl.key)}
        all_outputs = tuple(
            OutputChange(path=t.path, kind=t.kind, reason="with the new credentials") for t in decl.outputs
        )
        base = {"address": decl.address, "env": env, "key": decl.key, "name": decl.name, "engine": decl.engine}
        remote = by_id.get(managed.id) if managed else None
        if remote is None and decl.name in by_name and (managed is None or by_name[decl.name].id != managed.id):
            remote_named = by_name[decl.name]
        else:
            remote_named = None
        retire = _retired(record_paths, decl)

        if remote is not None:  # managed and still there
            claimed.add(remote.id)
            if remote.name != decl.name:
                diags.append(
                    Diagnostic(
                        severity="error",
                        env=env,
                        address=decl.address,
                        message=(
                            f"the platform name changed from '{remote.name}' to '{decl.name}', "
                            "but hep.gg cannot rename a database"
                        ),
                        hint=f"restore the old name in the manifest, or run 'hepinfra state rm {decl.address}' to "
                        f"manage '{decl.name}' as a new database (the old one stays on the account)",
                    )
                )
                continue
            if not _engine_ok(decl, remote, diags):
                continue
            _status_warning(decl, remote, diags)
            reasons: list[str] = []
            finish = "rotate" in pending
            if finish:
                reasons.append("finishing an interrupted rotation (Reveal decides: a second rotate never happens)")
            elif rotate.wants(env, decl.key):
                reasons.append("requested")
            elif due := _due(decl, managed.rotated_at or managed.managed_since if managed else None, now):
                reasons.append(due)
            if reasons:
                changes.append(
                    Change(
                        **base,
                        action=Action.ROTATE,
                        reasons=tuple(reasons),
                        database_id=remote.id,
                        outputs=all_outputs,
                        retire=retire,
                        finish_rotation=finish,
                    )
                )
                continue
            stale = _stale_outputs(decl, state, facts, remote.id, pending)
            if stale or retire:
                reasons_out = tuple(f"{o.path}: {o.reason}" for o in stale) + tuple(
                    f"{p}: no longer declared" for p in retire
                )
                changes.append(
                    Change(
                        **base,
                        action=Action.RENDER,
                        reasons=reasons_out,
                        database_id=remote.id,
                        outputs=stale,
                        retire=retire,
                    )
                )
            else:
                changes.append(Change(**base, action=Action.NOOP, database_id=remote.id))
            continue

        if remote_named is not None:  # exists on the account, not (or no longer) in state: take it over
            claimed.add(remote_named.id)
            if not _engine_ok(decl, remote_named, diags):
                continue
            _status_warning(decl, remote_named, diags)
            if "create" in pending:
                why = "finishing an interrupted create: found by name"
            elif managed is not None:
                why = "the managed database is gone; another with this name exists on the account"
            else:
                why = "exists on the account but not in state: taken over without rotating"
            reasons = [why]
            rotate_after = rotate.wants(env, decl.key)
            if rotate_after:
                reasons.append("rotation requested: rotated right after adoption")
            changes.append(
                Change(
                    **base,
                    action=Action.ADOPT,
                    reasons=tuple(reasons),
                    database_id=remote_named.id,
                    outputs=all_outputs,
                    retire=retire,
                    rotate_after_adopt=rotate_after,
                )
            )
            continue

        reasons = ["not on hep.gg yet"]
        if managed is not None:
            reasons = ["the managed database no longer exists on hep.gg (deleted in the dashboard?): created again"]
        if rotate.wants(env, decl.key):
            reasons.append("requested rotation not needed: a new database gets a fresh password")
        changes.append(Change(**base, action=Action.CREATE, reasons=tuple(reasons), outputs=all_outputs, retire=retire))

    declared_keys = {d.key for d in declared}
    for key, managed in sorted(state.databases.items()):
        if key in declared_keys:
            continue
        claimed.add(managed.id)
        changes.append(
            Change(
                address=f"{env}/databases.{key}",
                env=env,
                key=key,
                name=managed.name,
                engine=managed.engine,
                database_id=managed.id,
                action=Action.FORGET,
                reasons=(
                    "no longer declared: hep.gg cannot delete databases, so it stays on the account "
                    "(delete it in the dashboard if it is unused); hepinfra stops managing it "
                    "and leaves its outputs in place",
                ),
            )
        )

    return changes, diags, claimed


def _account_diagnostics(
    manifest: Manifest, facts: Mapping[str, EnvFacts], claimed: Mapping[str, set[str]]
) -> list[Diagnostic]:
    """Per account (environments sharing a key, reported once by the first of them): platform names
    declared by two of its environments, and databases none of them manages."""
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


def _retired(records: Mapping[str, list[str]], decl: DeclaredDatabase) -> tuple[str, ...]:
    declared_paths = {t.path for t in decl.outputs}
    return tuple(sorted(p for p in records.get(decl.key, ()) if p not in declared_paths))


def _stale_outputs(
    decl: DeclaredDatabase, state: State, facts: EnvFacts, db_id: str, pending: set[Any]
) -> tuple[OutputChange, ...]:
    stale = []
    for target in decl.outputs:
        reason = _output_reason(decl, target.path, target.definition_digest, state, facts, db_id)
        if reason is None and "render" in pending:
            marked = any(target.path in j.outputs for j in state.pending(decl.key))
            reason = "marked stale by an interrupted apply" if marked else None
        if reason is not None:
            stale.append(OutputChange(path=target.path, kind=target.kind, reason=reason))
    return tuple(stale)


def _engine_ok(decl: DeclaredDatabase, remote: DatabaseSummary, diags: list[Diagnostic]) -> bool:
    if remote.engine == decl.engine:
        return True
    diags.append(
        Diagnostic(
            severity="error",
            env=decl.env,
            address=decl.address,
            message=f"'{remote.name}' is a {remote.engine} database on hep.gg, but the manifest declares {decl.engine}",
            hint=f"no API changes an engine: set engine: {remote.engine}, or give this declaration another name "
            "to create a new database",
        )
    )
    return False


def _status_warning(decl: DeclaredDatabase, remote: DatabaseSummary, diags: list[Diagnostic]) -> None:
    if remote.status in ("over_quota", "disabled"):
        hint = (
            "free storage or buy more in the dashboard (Top Up)"
            if remote.status == "over_quota"
            else "the database is disabled on hep.gg; see the dashboard"
        )
        diags.append(
            Diagnostic(
                severity="warning",
                env=decl.env,
                address=decl.address,
                message=f"'{remote.name}' has status {remote.status}",
                hint=hint,
            )
        )
