"""The pure planner: desired (manifest) + known (state) + actual (facts) -> Plan.

Owns: ``make_plan``, a pure function that asks each kind of the registry (``hepinfra.kinds``) for
its changes (the rules kinds share are in ``hepinfra.kinds.rules``, the values in
``hepinfra.values``), the diagnostics that span kinds (outputs that cannot be observed, databases
on the account that no kind claims), and the change set a saved plan or a fingerprint compares.
Must not: do I/O, hold an HTTP client, know a kind's own rules, or ever see a secret (only keyed
digests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase

from hepinfra.kinds import KINDS
from hepinfra.kinds.rules import EnvInput
from hepinfra.manifest import Manifest
from hepinfra.moves import plan_moves
from hepinfra.state.model import State
from hepinfra.values import (
    Change,
    Diagnostic,
    EnvFacts,
    EnvPin,
    ObservedOutput,
    Plan,
    RotateRequest,
    TargetRequest,
    ref_of,
)
from hepinfra.windows import over_cap


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


def make_plan(
    manifest: Manifest,
    states: Mapping[str, State | None],
    facts: Mapping[str, EnvFacts],
    *,
    now: datetime,
    rotate: RotateRequest | None = None,
    environments: Sequence[str] | None = None,
    targets: TargetRequest | None = None,
) -> Plan:
    """The pure planner. ``facts`` must cover every selected environment. ``targets`` (``--target``):
    a partial plan, of only those resources (their changes and diagnostics; a move belongs to both
    of its addresses); every other resource is left out and counted."""
    envs = list(environments or manifest.environments)
    rotate = rotate or RotateRequest()
    found = {env: _plan_env(manifest, env, states.get(env), facts[env], now, rotate) for env in envs}
    # --max-rotations: the due rotations past the cap (most overdue first) are held, and their
    # environments planned again with them held
    every = [c for env in envs for c in found[env].changes]
    capped = over_cap(rotate.limit, [d for env in envs for d in found[env].due], every, rotate, targets)
    for env in envs:
        if capped & {address for _, address in found[env].due}:
            found[env] = _plan_env(manifest, env, states.get(env), facts[env], now, rotate, capped)
    changes = [c for env in envs for c in found[env].changes]
    diagnostics = [d for env in envs for d in found[env].diagnostics]
    pins = {env: found[env].pin for env in envs}
    claimed = {env: claims for env in envs if (claims := found[env].claimed) is not None}
    settled = [s for env in envs for s in found[env].settled]
    diagnostics.extend(_account_diagnostics(manifest, states, facts, claimed))
    left_out = 0
    if targets is not None and targets.targets:
        kept = [c for c in changes if targets.covers_change(c)]
        left_out = len(changes) - len(kept)
        changes = kept
        diagnostics = [d for d in diagnostics if d.address is None or targets.covers_address(d.address)]
        settled = [(e, o) for e, o in settled if targets.wants(e, o.partition(":")[0])]
    return Plan(
        created_at=now,
        manifest=str(manifest.path),
        manifest_digest=manifest.digest,
        refreshed=all(facts[e].refreshed for e in envs),
        environments=pins,
        changes=tuple(changes),
        diagnostics=tuple(diagnostics),
        skipped_outputs=tuple(sorted(manifest.skipped_outputs)),
        settled_write_backs=tuple(settled),
        targets=targets.given if targets is not None else (),
        left_out=left_out,
        max_rotations=rotate.limit,
    )


@dataclass
class _EnvPlan:
    pin: EnvPin
    changes: list[Change] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    claimed: set[str] | None = None  # None: the environment could not be listed
    settled: list[tuple[str, str]] = field(default_factory=list)
    due: list[tuple[float, str]] = field(default_factory=list)  # rotations made because due: (seconds overdue, address)


def _plan_env(
    manifest: Manifest,
    env: str,
    state: State | None,
    env_facts: EnvFacts,
    now: datetime,
    rotate: RotateRequest,
    capped: frozenset[str] = frozenset(),
) -> _EnvPlan:
    """One environment's changes: each kind of the registry in order, after the renames."""
    pin = EnvPin(
        lineage=state.lineage if state else None,
        serial=state.serial if state else 0,
        remote_digest=env_facts.remote_digest,
    )
    out = _EnvPlan(pin, diagnostics=[env_facts.error] if env_facts.error is not None else [])
    if env_facts.databases is None:
        return out
    nouns = {section: kind.value_noun for section, kind in KINDS.items()}
    # renames first (``moved:``): every kind plans from the state as it will be after them
    env_changes, env_diags, state = plan_moves(manifest, env, state)
    here = EnvInput(manifest, env, state or State(environment=env), env_facts, now, rotate, nouns, capped=capped)
    out.claimed = set()
    for kind in KINDS.values():
        found, found_diags, found_claims = kind.plan(here)
        env_changes += found
        env_diags += found_diags
        out.claimed |= found_claims
    env_diags += here.notes
    out.settled = [(env, output_id) for output_id in here.settled]
    out.changes = [_with_retire_left(c, env_facts) for c in env_changes]
    out.diagnostics += env_diags + _unobservable(manifest, env, state, env_facts)
    out.due = here.due_rotations
    return out


def _with_retire_left(change: Change, facts: EnvFacts) -> Change:
    """``change`` saying which of its retired outputs apply will leave in place (listed only)."""
    ref = ref_of(change.kind, change.key)
    left = {p: facts.retire_left[(ref, p)] for p in change.retire if (ref, p) in facts.retire_left}
    return change.model_copy(update={"retire_left": left}) if left else change


def _account_diagnostics(
    manifest: Manifest,
    states: Mapping[str, State | None],
    facts: Mapping[str, EnvFacts],
    claimed: Mapping[str, set[str]],
) -> list[Diagnostic]:
    """Per account (environments sharing a key, reported once by the first of them): platform names
    declared by two of its environments, and databases none of them manages, but those one of them
    ignores (``ignore_unmanaged:``) or once managed and forgot (``State.forgotten``)."""
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
        patterns = {p for m in members for p in manifest.ignore_unmanaged(m)}
        forgot = {i for m in members if (state := states.get(m)) is not None for i in state.forgotten}
        unmanaged = [
            d.name
            for d in env_facts.databases
            if d.id not in everyone
            and d.name not in theirs
            and d.id not in forgot
            and not any(fnmatchcase(d.name, p) for p in patterns)
        ]
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
