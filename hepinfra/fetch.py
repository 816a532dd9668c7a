"""The fetch step: gather what the planner needs, so the planner never holds a client.

Owns: choosing each environment's database key (only where it manages databases), checking
``HEPINFRA_STATE_KEY`` where it manages ids (before any API call), which credentials of the ID
Generator and the Uploader are missing, one List call per environment with databases, digesting
outputs, and (with refresh) Reveal for exactly the databases ``reveal_candidates`` names. Every
remote failure becomes a Diagnostic of its environment; nothing here decides a change.
Must not: keep a password beyond digesting it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import SecretStr

from hepinfra.digests import Digester
from hepinfra.errors import ApiError, OutputError
from hepinfra.hepgg import Hepgg
from hepinfra.hepgg.config import check_credential
from hepinfra.manifest import Manifest
from hepinfra.outputs import REMOTE_SINKS, SINKS, retire_left
from hepinfra.outputs.base import resolve_path
from hepinfra.safety.redact import register
from hepinfra.state.crypto import Cipher, cipher_for
from hepinfra.state.model import State
from hepinfra.values import Diagnostic, EnvFacts, ObservedOutput, RotateRequest, TargetRequest

if TYPE_CHECKING:
    from hepinfra.kinds import Kind
    from hepinfra.values import Declared, OutputTarget


def _on_account(section: str) -> bool:
    """Resources with platform names on the database account (databases)."""
    from hepinfra.kinds import KINDS

    return KINDS[section].needs_database_key


# an environment with neither databases nor ids digests only upload URLs, which are public
_PUBLIC_DIGEST_KEY = "hepinfra-public-values"


@dataclass(frozen=True)
class EnvAccess:
    """How to reach one environment's account: its database key (secret) and where it came from,
    whether it needs one at all, and the cipher of its state's ids (if it has ids)."""

    env: str
    key: SecretStr | None
    source: str  # the variable it was read from, or why there is none
    needs_key: bool = True  # it manages databases (declared, or still in state)
    cipher: Cipher | None = None

    def digester(self, state: State) -> Digester:
        """Keyed digests of this environment's outputs: keyed by its database key, or (an environment
        without databases) by its state key, so nobody who reads state can test guesses."""
        if self.key is not None:
            return Digester(self.key.get_secret_value(), state.lineage)
        if self.cipher is not None:
            return Digester(self.cipher.digest_key(), state.lineage)
        assert not self.needs_key
        return Digester(_PUBLIC_DIGEST_KEY, state.lineage, secret=False)  # proves nothing: retire only lists


def _uses(manifest: Manifest, env: str, state: State | None, wanted: Callable[[Kind], bool]) -> bool:
    """Whether ``env`` declares, or its state still holds, a resource of a kind ``wanted`` picks."""
    from hepinfra.kinds import KINDS

    if any(wanted(KINDS[d.kind]) for d in manifest.declared[env]):
        return True
    return state is not None and any(getattr(state, k.section) for k in KINDS.values() if wanted(k))


def manages_databases(manifest: Manifest, env: str, state: State | None) -> bool:
    return _uses(manifest, env, state, lambda kind: kind.needs_database_key)


def env_access(
    manifest: Manifest, env: str, hepgg: Hepgg, state: State | None = None, *, ids: bool = True
) -> EnvAccess:
    """The environment's database key and (``ids``) state cipher. Raises ``StateKeyError`` (before
    any API call) when it manages ids and ``HEPINFRA_STATE_KEY`` is unset or wrong."""
    cipher = None
    alternating = any(d.rotation == "alternating" for d in manifest.declared[env])
    if ids and (_uses(manifest, env, state, lambda kind: kind.needs_state_key) or alternating
                or (state is not None and state.sealed())):  # fmt: skip
        cipher = cipher_for(env, state, hepgg.environ, hepgg.state_key_source)
    if not manages_databases(manifest, env, state):
        return EnvAccess(env, None, "", needs_key=False, cipher=cipher)
    return database_access(manifest, env, hepgg, cipher)


def database_access(manifest: Manifest, env: str, hepgg: Hepgg, cipher: Cipher | None = None) -> EnvAccess:
    """The environment's database key, from its variable (checked, registered with the redactor)."""
    if hepgg.local:  # the embedded hep.gg has one account of its own: a real key is never used with it
        register(hepgg.environ["HEPGG_DB_KEY"])
        return EnvAccess(env, SecretStr(hepgg.environ["HEPGG_DB_KEY"]), "the local hep.gg's key", cipher=cipher)
    names = manifest.db_key_var(env)
    for name in names:
        value = (hepgg.environ.get(name) or "").strip()
        if value:
            register(value)
            check_credential(value, name)
            return EnvAccess(env, SecretStr(value), name, cipher=cipher)
    return EnvAccess(env, None, " or ".join(names), cipher=cipher)


def missing_credentials(manifest: Manifest, env: str, hepgg: Hepgg) -> dict[str, str]:
    """Per kind declared in ``env``, what is wrong with its credentials (variables named, never read out)."""
    from hepinfra.kinds import KINDS

    found: dict[str, str] = {}
    for section in dict.fromkeys(d.kind for d in manifest.declared[env]):
        check = KINDS[section].credentials
        problem = check(manifest, env, hepgg) if check is not None else None
        if problem is not None:
            found[section] = problem
    return found


# ``plan --base``: why an output may not be read back (None: it may), by declaration, target and its index
Unreadable = Callable[["Declared", "OutputTarget", int], "str | None"]


def observe_outputs(
    manifest: Manifest,
    env: str,
    state: State,
    digest: Digester,
    *,
    refresh: bool = False,
    unreadable: Unreadable | None = None,
    targets: TargetRequest | None = None,
) -> dict[tuple[str, str], ObservedOutput]:
    """Digest every output hepinfra has a record for: files always; a secret store only when
    refreshing (else what was recorded stands for it); none that ``unreadable`` names, and (a
    partial plan) only those of ``targets``."""
    observed: dict[tuple[str, str], ObservedOutput] = {}
    for decl in manifest.declared[env]:
        if targets is not None and not targets.covers(env, decl.kind, decl.key):
            continue
        for index, target in enumerate(decl.outputs):
            where = (decl.ref, target.path)
            record = state.outputs.get(State.output_id(*where))
            if record is None:
                continue
            if unreadable is not None and unreadable(decl, target, index) is not None:
                observed[where] = ObservedOutput(exists=True, trusted=True)  # the plan says it was not read
                continue
            if target.kind in REMOTE_SINKS:
                if refresh:
                    observed[where] = REMOTE_SINKS[target.kind].observe(target, record.keys, digest)
                else:
                    observed[where] = ObservedOutput(exists=True, trusted=True)
                continue
            try:
                file = resolve_path(manifest.project_dir, target)
            except OutputError as exc:
                observed[where] = ObservedOutput(exists=True, problem=exc.message)
                continue
            observed[where] = SINKS[target.kind].observe(file, target, record.keys, digest)
    return observed


def retire_facts(manifest: Manifest, env: str, state: State, secret: bool) -> dict[tuple[str, str], str]:
    """Of the outputs state records but the manifest no longer declares, those apply will leave in
    place and only list (outside the project, or no secret keys the environment's digests), and why."""
    declared = {(d.ref, t.path) for d in manifest.declared[env] for t in d.outputs}
    found: dict[tuple[str, str], str] = {}
    for record in state.outputs.values():
        if record.kind in manifest.skipped_outputs:
            continue
        if (record.database, record.path) not in declared:
            why = retire_left(manifest.project_dir, record, secret)
            if why is not None:
                found[(record.database, record.path)] = why
    return found


async def gather(
    manifest: Manifest,
    states: Mapping[str, State | None],
    envs: Sequence[str],
    hepgg: Hepgg,
    *,
    refresh: bool,
    now: datetime,
    rotate: RotateRequest | None = None,
    concurrency: int = 16,
    unreadable: Unreadable | None = None,
    blocked: frozenset[str] = frozenset(),
    targets: TargetRequest | None = None,
) -> tuple[dict[str, EnvFacts], dict[str, EnvAccess]]:
    """What the planner needs of ``envs``. ``blocked`` (plan --base): environments whose credential
    settings a pull request changed: not even their key variables are read. ``targets`` (a partial
    plan): only their outputs are read back and their passwords revealed."""
    from hepinfra.moves import plan_moves

    # outputs are read back, and passwords revealed, as state will hold them after the renames (``moved:``)
    states = {env: plan_moves(manifest, env, states.get(env))[2] for env in envs}
    access = {env: env_access(manifest, env, hepgg, states.get(env)) for env in envs}  # key checks: no call yet

    async def one_env(env: str) -> EnvFacts:
        acc = access[env]
        missing = missing_credentials(manifest, env, hepgg)
        if acc.needs_key and acc.key is None:
            return EnvFacts(
                env,
                None,
                refreshed=refresh,
                error=Diagnostic(
                    severity="error",
                    env=env,
                    message=f"no database key for environment '{env}'",
                    hint=f"export {acc.source}",
                ),
            )
        databases = []
        if acc.key is not None:
            try:
                databases = await hepgg.databases(acc.key).list()
            except ApiError as exc:
                message = f"cannot list the databases of environment '{env}': {exc.message}"
                diagnostic = Diagnostic(severity="error", env=env, message=message, hint=exc.hint)
                return EnvFacts(env, None, refreshed=refresh, error=diagnostic)
        state = states.get(env)
        outputs = (
            await asyncio.to_thread(
                observe_outputs,
                manifest,
                env,
                state,
                acc.digester(state),
                refresh=refresh,
                unreadable=unreadable,
                targets=targets,
            )
            if state
            else {}
        )
        left = retire_facts(manifest, env, state, acc.digester(state).secret) if state else {}
        return EnvFacts(env, tuple(databases), outputs=outputs, refreshed=refresh, missing=missing, retire_left=left)

    facts = dict(zip(envs, await asyncio.gather(*(one_env(e) for e in envs)), strict=True))
    secrets = {env: a.key.get_secret_value() for env, a in access.items() if a.key is not None}
    # environments of this manifest not selected (-e) may share an account: their databases are managed too
    unselected = (
        env_access(manifest, e, hepgg, ids=False) for e in manifest.environments if e not in access and e not in blocked
    )
    others = {a.env: a.key.get_secret_value() for a in unselected if a.key is not None}
    for env, secret in secrets.items():
        peers = tuple(e for e, other in secrets.items() if e != env and other == secret)
        outside = [e for e, other in others.items() if other == secret]
        names = frozenset(d.name for e in outside for d in manifest.declared[e] if _on_account(d.kind))
        if peers or names:
            facts[env] = replace(facts[env], account_peers=peers, peer_names=names)
    if not refresh:
        return facts, access

    from hepinfra.kinds.databases import KIND, reveal_candidates

    wanted = reveal_candidates(manifest, states, facts, now=now, rotate=rotate)
    if targets is not None:  # a partial plan: no Reveal for a database it leaves out
        for env, ids in wanted.items():
            held = states.get(env)
            keys = {m.id: k for k, m in held.databases.items()} if held is not None else {}
            wanted[env] = [i for i in ids if targets.covers(env, KIND.section, keys.get(i, ""))]
    limit = asyncio.Semaphore(concurrency)

    async def reveal(env: str, db_id: str) -> tuple[str, str, str | Diagnostic]:
        acc = access[env]
        state = states[env]
        assert acc.key is not None and state is not None
        async with limit:
            try:
                creds = await hepgg.databases(acc.key).reveal(db_id)
            except ApiError as exc:
                return env, db_id, Diagnostic(severity="error", env=env, message=exc.message, hint=exc.hint)
        return env, db_id, acc.digester(state)(creds.password.get_secret_value())

    results = await asyncio.gather(*(reveal(env, i) for env, ids in wanted.items() for i in ids))
    digests: dict[str, dict[str, str]] = {}
    for env, db_id, outcome in results:
        if isinstance(outcome, Diagnostic):
            if facts[env].error is None:
                facts[env] = replace(facts[env], error=outcome)
        else:
            digests.setdefault(env, {})[db_id] = outcome
    for env, found in digests.items():
        facts[env] = replace(facts[env], password_digests=found)
    return facts, access
