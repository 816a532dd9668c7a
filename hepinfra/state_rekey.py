"""``hepinfra state rekey``: seal every value state keeps sealed again under a new ``HEPINFRA_STATE_KEY``.

Owns: which keys (``HEPINFRA_STATE_KEY_OLD`` -> ``HEPINFRA_STATE_KEY``; against ``url: local`` with no
``HEPINFRA_STATE_KEY``, the sandbox's own key file replaced through ``state.key.next``), and one
environment at a time under its lock: every sealed value opened under the old key (one that does not
open: nothing of that environment is written), sealed again under the new one by its kind's
``rekeyed`` hook, a new crypto block (salt, check value, the first key's digest key sealed), one write
(a new serial; the backend keeps the version before it as its backup). An environment whose check
value already opens under the new key was done by a run that stopped partway: it is skipped.
Must not: call hep.gg, print, or let a key or a value reach a message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hepinfra.errors import HepinfraError, UsageError
from hepinfra.state.crypto import KEY_VAR, OLD_KEY_VAR

if TYPE_CHECKING:
    from hepinfra.runner import Project
    from hepinfra.state.model import State

SANDBOX_KEY = ".hepinfra/local/state.key"
PENDING_SUFFIX = ".next"  # the sandbox's next key, kept until every environment is sealed under it


@dataclass(frozen=True)
class Rekeyed:
    """One environment's outcome: ``rekeyed`` (``sealed`` values sealed again, written as ``serial``),
    ``already`` (under the new key: a re-run) or ``nothing`` (no state, or nothing sealed in it)."""

    env: str
    status: Literal["rekeyed", "already", "nothing"]
    sealed: int = 0
    serial: int | None = None


@dataclass(frozen=True)
class Keys:
    old: str
    new: str
    old_source: str  # for messages: the variable, or the sandbox's key file
    new_source: str
    pending: Path | None = None  # the sandbox's next key file: becomes its key once every environment is done
    unsaved: bool = False  # the sandbox's next key is new: saved (durably) before any state is sealed under it


def keys(project: Project, environ: dict[str, str]) -> Keys:
    """The old and the new key, checked before any lock is taken or any state read."""
    from hepinfra.hepgg import config

    old, new = environ.get(OLD_KEY_VAR, ""), environ.get(KEY_VAR, "")
    local = config.endpoints_from_env(environ, url=project.manifest.model.hepgg.url).is_local
    key_file = project.manifest.project_dir / SANDBOX_KEY
    if local and not new.strip():
        if old.strip():
            raise UsageError(
                f"state rekey: {OLD_KEY_VAR} is set but {KEY_VAR} is not: against the local hep.gg, with "
                f"{KEY_VAR} unset, rekey replaces the sandbox's own key ({SANDBOX_KEY}) by itself; unset "
                f"{OLD_KEY_VAR}, or set {KEY_VAR} to the new key; nothing was written"
            )
        return _sandbox_keys(project.manifest.project_dir)
    if local and not old.strip() and key_file.exists():  # from the sandbox's key file to a key of your own
        from hepinfra.state.crypto import local_key

        old, old_source = local_key(project.manifest.project_dir), SANDBOX_KEY
    else:
        old_source = OLD_KEY_VAR
    for name, value in ((old_source, old), (KEY_VAR, new)):
        if not value.strip():
            raise UsageError(
                f"state rekey: {name} is not set: export the key the state is sealed with as {OLD_KEY_VAR} "
                f"and the new key as {KEY_VAR}; nothing was written"
            )
    return _checked(Keys(old, new, old_source, KEY_VAR))


def _sandbox_keys(project_dir: Path) -> Keys:
    """The sandbox's key file and its next key (made now, or kept from a rekey that stopped partway)."""
    import base64

    from hepinfra.fsutil import refuse_links
    from hepinfra.safety.redact import register
    from hepinfra.state.crypto import StateKeyError, local_key

    key_file = project_dir / SANDBOX_KEY
    refuse_links(key_file.parent, project_dir)
    if not key_file.exists():
        raise UsageError(f"state rekey: {key_file} does not exist: the local hep.gg never sealed a value here")
    old = local_key(project_dir)
    pending = key_file.with_name(key_file.name + PENDING_SUFFIX)
    unsaved = False
    try:
        new = pending.read_text().strip()
    except FileNotFoundError:
        new, unsaved = base64.b64encode(os.urandom(32)).decode(), True
    except (OSError, UnicodeDecodeError) as exc:
        raise StateKeyError(f"{pending}: the sandbox's next state key cannot be read ({exc}); not replaced") from None
    if not new:
        raise StateKeyError(f"{pending}: the sandbox's next state key is empty (edited?); not replaced")
    register(new)
    return _checked(Keys(old, new, SANDBOX_KEY, f"{SANDBOX_KEY}{PENDING_SUFFIX}", pending, unsaved))


def _checked(found: Keys) -> Keys:
    from hepinfra.safety.redact import register
    from hepinfra.state.crypto import same_key

    register(found.old, found.old.strip(), found.new, found.new.strip())
    if same_key(found.old, found.new):
        raise UsageError(
            f"state rekey: {found.old_source} and {found.new_source} hold the same key; nothing was written",
            hint=f"set {KEY_VAR} to the new key",
        )
    return found


def rekey_state(env: str, current: State, found: Keys) -> tuple[State, int] | None:
    """``current`` with every sealed value sealed again under the new key and its new crypto block, and
    how many values; None when it is under the new key already. Raises (nothing changed) when any value
    does not open under the old key."""
    from hepinfra.kinds import KINDS
    from hepinfra.state.crypto import rekey_ciphers

    ciphers = rekey_ciphers(env, current, found.old, found.new, found.old_source)
    if ciphers is None:
        return None
    old, new = ciphers
    update: dict[str, object] = {"crypto": new.crypto}
    count = 0
    for section, kind in KINDS.items():
        held = getattr(current, section, None)
        if not held:
            continue
        records = {key: kind.rekeyed(old, new, managed, f"{env}/{section}.{key}", current.lineage)
                   for key, managed in held.items()}  # fmt: skip
        count += sum(1 for key, managed in held.items() if records[key] is not managed)
        update[section] = records
    return current.model_copy(update=update), count


def state_rekey(
    project: Project,
    requested: tuple[str, ...],
    timeout: float,
    environ: dict[str, str],
    report: Callable[[Rekeyed], None],
) -> list[Rekeyed]:
    """Rekey each environment ``requested`` (none: all) in turn, each under its lock, in one write.
    ``report`` follows each, so a failure partway still tells which are done (a re-run skips them)."""
    from hepinfra.crashpoints import kill_point
    from hepinfra.fsutil import ensure_hepinfra_dir
    from hepinfra.runner import IDENT_RE, release, select_environments
    from hepinfra.state.backend import LockInfo

    envs = select_environments(project.manifest, requested)
    found = keys(project, environ)
    backend = project.backend
    if found.pending is not None:  # the sandbox's one key seals every environment: all of them, or none
        held = (e for e in backend.environments() if IDENT_RE.fullmatch(e))  # one no longer declared too
        every = list(dict.fromkeys([*envs, *held]))
        if requested and set(requested) != set(every):
            raise UsageError(f"state rekey -e: {SANDBOX_KEY} seals every environment's values; rekey them all (no -e)")
        envs = every
        if found.unsaved:
            from hepinfra.state.crypto import write_key_file

            write_key_file(found.pending, found.new)  # durable before any state is sealed under it
    ensure_hepinfra_dir(project.manifest.project_dir)
    done: list[Rekeyed] = []
    for env in envs:
        try:
            lock = backend.lock(env, LockInfo(command="hepinfra state rekey"), timeout)
            try:
                current = backend.read(env)
                result = Rekeyed(env, "nothing")
                if current is not None and current.crypto is not None:
                    rekeyed = rekey_state(env, current, found)
                    if rekeyed is None:
                        result = Rekeyed(env, "already")
                    else:
                        stored = backend.write(env, rekeyed[0])
                        result = Rekeyed(env, "rekeyed", rekeyed[1], stored.serial)
            finally:
                release(backend, env, lock.id)
        except HepinfraError as exc:
            sealed = [r.env for r in done if r.status != "nothing"]
            if sealed:
                note = f"already under the new key: {', '.join(sealed)} (a re-run skips them)"
                exc.hint = f"{exc.hint}; {note}" if exc.hint else note
            raise
        done.append(result)
        report(result)
        kill_point("rekey")
    if found.pending is not None:  # every environment is sealed under the sandbox's next key: it is its key now
        os.replace(found.pending, found.pending.with_name(found.pending.name.removesuffix(PENDING_SUFFIX)))
    return done
