"""The fetch step: gather what the planner needs, so the planner never holds a client.

Owns: choosing each environment's database key, one List call per environment, digesting
outputs on disk, and (with refresh) Reveal for exactly the databases ``reveal_candidates``
names. Every failure becomes a Diagnostic of its environment; nothing here decides a change.
Must not: keep a password beyond digesting it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from pydantic import SecretStr

from hepinfra.digests import Digester
from hepinfra.errors import ApiError, OutputError
from hepinfra.hepgg import Hepgg
from hepinfra.hepgg.config import check_credential
from hepinfra.manifest import Manifest
from hepinfra.outputs import REMOTE_SINKS, SINKS
from hepinfra.outputs.base import resolve_path
from hepinfra.plan import Diagnostic, EnvFacts, ObservedOutput, RotateRequest, reveal_candidates
from hepinfra.safety.redact import register
from hepinfra.state.model import State


@dataclass(frozen=True)
class EnvAccess:
    """How to reach one environment's account: its key (secret) and where it came from."""

    env: str
    key: SecretStr | None
    source: str  # the variable it was read from, or why there is none

    def digester(self, state: State) -> Digester:
        assert self.key is not None
        return Digester(self.key.get_secret_value(), state.lineage)


def env_access(manifest: Manifest, env: str, hepgg: Hepgg) -> EnvAccess:
    if hepgg.local:  # the embedded hep.gg has one account of its own: a real key is never used with it
        register(hepgg.environ["HEPGG_DB_KEY"])
        return EnvAccess(env, SecretStr(hepgg.environ["HEPGG_DB_KEY"]), "the local hep.gg's key")
    names = manifest.db_key_var(env)
    for name in names:
        value = (hepgg.environ.get(name) or "").strip()
        if value:
            register(value)
            check_credential(value, name)
            return EnvAccess(env, SecretStr(value), name)
    return EnvAccess(env, None, " or ".join(names))


def observe_outputs(
    manifest: Manifest, env: str, state: State, digest: Digester, *, refresh: bool = False
) -> dict[tuple[str, str], ObservedOutput]:
    """Digest every output hepinfra has a record for: files always; a secret store only when
    refreshing (else what was recorded stands for it)."""
    observed: dict[tuple[str, str], ObservedOutput] = {}
    for decl in manifest.declared[env]:
        for target in decl.outputs:
            record = state.outputs.get(State.output_id(decl.key, target.path))
            if record is None:
                continue
            if target.kind in REMOTE_SINKS:
                if refresh:
                    observed[(decl.key, target.path)] = REMOTE_SINKS[target.kind].observe(target, record.keys, digest)
                else:
                    observed[(decl.key, target.path)] = ObservedOutput(exists=True, trusted=True)
                continue
            try:
                file = resolve_path(manifest.project_dir, target)
            except OutputError as exc:
                observed[(decl.key, target.path)] = ObservedOutput(exists=True, problem=exc.message)
                continue
            observed[(decl.key, target.path)] = SINKS[target.kind].observe(file, target, record.keys, digest)
    return observed


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
) -> tuple[dict[str, EnvFacts], dict[str, EnvAccess]]:
    access = {env: env_access(manifest, env, hepgg) for env in envs}

    async def one_env(env: str) -> EnvFacts:
        acc = access[env]
        if acc.key is None:
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
        try:
            databases = await hepgg.databases(acc.key).list()
        except ApiError as exc:
            message = f"cannot list the databases of environment '{env}': {exc.message}"
            diagnostic = Diagnostic(severity="error", env=env, message=message, hint=exc.hint)
            return EnvFacts(env, None, refreshed=refresh, error=diagnostic)
        state = states.get(env)
        outputs = (
            await asyncio.to_thread(observe_outputs, manifest, env, state, acc.digester(state), refresh=refresh)
            if state
            else {}
        )
        return EnvFacts(env, tuple(databases), outputs=outputs, refreshed=refresh)

    facts = dict(zip(envs, await asyncio.gather(*(one_env(e) for e in envs)), strict=True))
    secrets = {env: a.key.get_secret_value() for env, a in access.items() if a.key is not None}
    # environments of this manifest not selected (-e) may share an account: their databases are managed too
    unselected = (env_access(manifest, e, hepgg) for e in manifest.environments if e not in access)
    others = {a.env: a.key.get_secret_value() for a in unselected if a.key is not None}
    for env, secret in secrets.items():
        peers = tuple(e for e, other in secrets.items() if e != env and other == secret)
        outside = [e for e, other in others.items() if other == secret]
        names = frozenset(d.name for e in outside for d in manifest.declared[e])
        if peers or names:
            facts[env] = replace(facts[env], account_peers=peers, peer_names=names)
    if not refresh:
        return facts, access

    wanted = reveal_candidates(manifest, states, facts, now=now, rotate=rotate)
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
