"""``hepinfra state mv SRC DST``: rename one resource in an environment's state, under its lock.

Owns: the checks (one environment, one kind, SRC in state, DST not), the write (the backend's own:
a new serial, the previous state kept as its backup) and sealing an id's value again under its new
address (``Kind.moved``). The state edit itself is ``moves.moved_state``, the one a ``moved:`` entry
makes at apply.
Must not: call hep.gg (an id's state key is the only credential it may read), or print.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from hepinfra.errors import UsageError
from hepinfra.moves import moved_state
from hepinfra.spec import IDENT
from hepinfra.state.model import State

if TYPE_CHECKING:
    from hepinfra.runner import Project

Address = tuple[str, str, str]  # (env, kind, key)
_KEY = re.compile(IDENT)


def check(source: Address, target: Address) -> None:
    """What ``state mv`` refuses before it takes a lock or reads a state."""
    (env, kind, key), (env_to, kind_to, key_to) = source, target
    shown, shown_to = f"{env}/{kind}.{key}", f"{env_to}/{kind_to}.{key_to}"
    if env_to != env:
        raise UsageError(
            f"state mv {shown} {shown_to}: a move stays within one environment ('{env}' and '{env_to}' each have "
            "their own state); declare it in the new environment and 'hepinfra state rm' it in the old"
        )
    if kind_to != kind:
        raise UsageError(f"state mv {shown} {shown_to}: a move keeps its kind ({kind}, not {kind_to})")
    if not _KEY.fullmatch(key_to) or len(key_to) > 63:
        raise UsageError(f"state mv: '{shown_to}' is not an address: the key must be letters, digits, '_' or '-'")
    if key_to == key:
        raise UsageError(f"state mv {shown} {shown_to}: the same address")


async def state_mv(project: Project, source: Address, target: Address, timeout: float) -> State:
    """Move ``source`` to ``target`` in its environment's state, under the environment's lock."""
    from hepinfra.fsutil import ensure_hepinfra_dir
    from hepinfra.kinds import KINDS
    from hepinfra.runner import release
    from hepinfra.state.backend import LockInfo

    check(source, target)
    env, kind, key = source
    key_to = target[2]
    old, new = f"{env}/{kind}.{key}", f"{env}/{kind}.{key_to}"
    backend = project.backend
    ensure_hepinfra_dir(project.manifest.project_dir)
    lock = backend.lock(env, LockInfo(), timeout)
    try:
        current = backend.read(env)
        held = getattr(current, kind) if current is not None else {}
        if current is None or key not in held:
            raise UsageError(f"{old}: not in the state of environment '{env}'; nothing was moved")
        if key_to in held:
            raise UsageError(
                f"{new}: already in the state of environment '{env}'; nothing was moved (state rm one of them first)"
            )
        access = None
        if KINDS[kind].needs_state_key:  # its value is sealed to its address: opened and sealed again
            from hepinfra.fetch import env_access

            async with project.hepgg() as hub:
                access = env_access(project.manifest, env, hub, current)
        lineage = current.lineage
        stored = backend.write(
            env, moved_state(current, kind, key, key_to, lambda m: KINDS[kind].moved(access, m, old, new, lineage))
        )
    finally:
        release(backend, env, lock.id)
    if not any(d.kind == kind and d.key == key_to for d in project.manifest.declared[env]):
        logging.getLogger("hepinfra.state").warning(
            "%s is not declared in %s: the next plan forgets it (declare it, or move it back)",
            new,
            project.manifest.path,
        )
    return stored
