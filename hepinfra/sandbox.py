"""``hepinfra emulator reset``: clear the local sandbox of one manifest (the embedded hep.gg's world
under ``.hepinfra/local/`` and the manifest's local state), so the next apply starts from nothing.

Owns: deciding whether a manifest's sandbox may be cleared (its hep.gg is the embedded one, the
environment sends its runs nowhere else, its state is local and no run holds a lock) and clearing it
under every environment's lock.
Must not: clear anything of a real account (a manifest whose hep.gg is not ``local``, or whose runs
``HEPGG_URL`` sends elsewhere, is refused before anything is touched), follow a link, or ask the
user anything (the command line asks).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hepinfra.errors import UsageError

if TYPE_CHECKING:
    from hepinfra.runner import Project

LOCAL = "local"
# what a state directory holds per environment: the state and its backup
_STATE_FILES = (".json", ".json.backup")


@dataclass(frozen=True)
class Sandbox:
    """What a reset clears: the embedded hep.gg's directory and the environments with a local state."""

    manifest: Path
    world: Path  # <project>/.hepinfra/local
    state_dir: Path  # <project>/.hepinfra/state
    environments: tuple[str, ...]  # with a state file, or declared

    def describe(self) -> str:
        envs = ", ".join(self.environments) or "none"
        return (
            f"the local hep.gg in {self.world} (its databases, ids, uploads and credentials) and the state of "
            f"environment(s) {envs} in {self.state_dir}"
        )


def sandbox_of(project: Project, environ: Mapping[str, str]) -> Sandbox:
    """The sandbox of ``project``'s manifest, or a UsageError saying why it is not one (nothing touched)."""
    from hepinfra.emulator.local import local_dir
    from hepinfra.fsutil import refuse_links
    from hepinfra.state.spec import LocalState

    manifest = project.manifest
    url = manifest.model.hepgg.url.strip().rstrip("/")
    if url != LOCAL:
        raise UsageError(
            f"{manifest.path}: its hep.gg is {url}, not the local one (hepgg: {{url: local}}); emulator reset never "
            "clears a real account's state (use 'hepinfra state rm' to stop managing a resource)"
        )
    override = environ.get("HEPGG_URL", "").strip().rstrip("/")
    if override and override != LOCAL:
        raise UsageError(
            f"HEPGG_URL is {override}: this manifest's runs go to that hep.gg, not the local one; "
            "emulator reset clears nothing while it is set (unset it)"
        )
    spec = manifest.model.state
    if not isinstance(spec, LocalState):
        raise UsageError(
            f"{manifest.path}: its state is kept in {spec.backend}, not in .hepinfra/state; emulator reset clears "
            "local state only (use 'hepinfra state rm' there)"
        )
    world = local_dir(manifest.project_dir)
    state_dir = manifest.project_dir / ".hepinfra" / "state"
    for directory in (world, state_dir):
        refuse_links(directory, manifest.project_dir)
    stored = sorted(p.name.removesuffix(".json") for p in state_dir.glob("*.json")) if state_dir.is_dir() else []
    envs = tuple(dict.fromkeys([*manifest.environments, *stored]))
    return Sandbox(manifest.path, world, state_dir, envs)


def reset(project: Project, sandbox: Sandbox) -> list[str]:
    """Clear ``sandbox`` holding every environment's lock (a run in progress: its LockError, nothing
    cleared). Returns the environments whose state was removed."""
    from hepinfra.runner import release
    from hepinfra.state.backend import LockInfo

    backend = project.backend
    held: list[tuple[str, str]] = []
    cleared: list[str] = []
    try:
        for env in sandbox.environments:  # every lock first: a run in progress stops the reset here
            held.append((env, backend.lock(env, LockInfo(), 0.0).id))
        for env in sandbox.environments:  # (taking the lock removed the temp files a killed writer left)
            for suffix in _STATE_FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sandbox.state_dir / f"{env}{suffix}")  # a link itself, never its target
                    if suffix == ".json":
                        cleared.append(env)
        if sandbox.world.is_dir():
            shutil.rmtree(sandbox.world)
    finally:
        for env, lock_id in reversed(held):
            release(backend, env, lock_id)
    return cleared
