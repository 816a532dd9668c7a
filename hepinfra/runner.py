"""Wiring for commands: open a project (manifest, state backend, hep.gg clients), select
environments, parse ``--rotate`` addresses, and make a plan. Saved plan files live here too.

Owns: the glue between the pure core and the I/O edges. Must not: decide changes (plan.py)
or print (cli.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from hepinfra import manifest as manifest_mod
from hepinfra.errors import PlanError, UsageError
from hepinfra.fetch import EnvAccess, gather
from hepinfra.fsutil import atomic_write
from hepinfra.hepgg import Hepgg
from hepinfra.manifest import Manifest
from hepinfra.plan import Plan, RotateRequest, make_plan
from hepinfra.state.local import LocalBackend
from hepinfra.state.model import State


@dataclass
class Project:
    manifest: Manifest
    backend: LocalBackend

    @classmethod
    def open(cls, manifest_path: str | Path) -> Project:
        manifest = manifest_mod.load(manifest_path)
        return cls(manifest, LocalBackend(manifest.project_dir / ".hepinfra" / "state"))

    def hepgg(self, *, parallelism: int = 16) -> Hepgg:
        return Hepgg.from_env(
            url=self.manifest.model.hepgg.url,
            project_dir=self.manifest.project_dir,
            max_connections=max(parallelism, 4),
        )

    def states(self, envs: Sequence[str]) -> dict[str, State | None]:
        return {env: self.backend.read(env) for env in envs}


def select_environments(manifest: Manifest, requested: Sequence[str]) -> list[str]:
    if not requested:
        return manifest.environments
    unknown = [e for e in requested if e not in manifest.model.environments]
    if unknown:
        raise UsageError(
            f"-e {unknown[0]}: no such environment in {manifest.path}; declared: {', '.join(manifest.environments)}"
        )
    return list(dict.fromkeys(requested))


def parse_rotate(manifest: Manifest, envs: Sequence[str], addresses: Sequence[str]) -> RotateRequest:
    """``ENV/databases.KEY``, ``databases.KEY`` or ``KEY`` (every selected environment)."""
    targets: set[tuple[str | None, str]] = set()
    for address in addresses:
        env: str | None = None
        rest = address
        if "/" in address:
            env, rest = address.split("/", 1)
            if env not in envs:
                raise UsageError(
                    f"--rotate {address}: environment '{env}' is not selected (selected: {', '.join(envs)})"
                )
        key = rest.removeprefix("databases.")
        scope = [env] if env else list(envs)
        if not any(d.key == key for e in scope for d in manifest.declared[e]):
            raise UsageError(
                f"--rotate {address}: no database '{key}' is declared in "
                f"{'environment ' + env if env else 'the selected environments'}"
            )
        targets.add((env, key))
    return RotateRequest(frozenset(targets))


async def make(
    project: Project,
    hepgg: Hepgg,
    envs: Sequence[str],
    *,
    refresh: bool = True,
    rotate: RotateRequest | None = None,
    now: datetime | None = None,
) -> tuple[Plan, dict[str, EnvAccess], dict[str, State | None]]:
    states = project.states(envs)
    facts, access = await gather(project.manifest, states, envs, hepgg, refresh=refresh)
    plan = make_plan(project.manifest, states, facts, now=now or datetime.now(UTC), rotate=rotate, environments=envs)
    return plan, access, states


def save_plan(plan: Plan, path: Path) -> None:
    atomic_write(path, plan.model_dump_json(indent=2).encode() + b"\n", 0o600)


def load_plan(path: Path) -> Plan:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read plan file: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise PlanError(f"{path}: not a hepinfra plan file (not JSON)") from None
    if not isinstance(data, dict) or data.get("format_version") != 1:
        raise PlanError(f"{path}: not a hepinfra plan file of format 1")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        raise PlanError(f"{path}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
