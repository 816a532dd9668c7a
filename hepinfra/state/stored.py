"""The state rules every remote backend shares, on top of four storage primitives.

Owns: read (remembering the version read), write (lineage must match; the serial is bumped
only when content changed; the version before a run's first change is kept as a backup; the
store is conditional on the version read, so a write that raced another is refused, never
lost), replace (another lineage, on request), and the lock wait loop with its one-line error.
A backend supplies ``_load``, ``_store``, ``_backup``, ``_names`` and ``_try_lock``.
Must not: know how bytes are stored, or break a lock (backends decide what a dead holder is).
"""

from __future__ import annotations

from typing import ClassVar

from hepinfra.errors import LockError, StateError
from hepinfra.state import codec
from hepinfra.state.backend import LockInfo, identified, wait_for_lock
from hepinfra.state.model import State

POLL_FIRST = 0.05  # seconds between lock attempts, doubling up to POLL
POLL = 1.0


class Conflict(Exception):
    """The stored version is not the one this write was conditional on."""


class StoredBackend:
    """A backend over versioned storage; subclasses name the place in ``where`` ("s3://b/p")."""

    where: str = "?"
    # Whether a holder that dies releases its lock by itself (the next run takes it at once).
    frees_dead_holders: ClassVar[bool] = False

    def __init__(self) -> None:
        # per environment: the version this object last read or wrote, and that state
        self._seen: dict[str, tuple[str, State]] = {}
        self._backed_up: set[str] = set()
        self._held: dict[str, str] = {}  # env -> id of the lock this object holds
        # env -> the refusal of a write that raced another: every later write is refused the same way
        # until the state is read again (a run must never store its stale view over the other run's)
        self._refused: dict[str, StateError] = {}

    # --- primitives ---------------------------------------------------------------------------------

    def _load(self, env: str) -> tuple[bytes, str] | None:
        """The stored bytes and their version, or None."""
        raise NotImplementedError

    def _store(self, env: str, data: bytes, state: State, expect: str | None) -> str:
        """Store ``data`` if the stored version is still ``expect`` (None: nothing stored yet);
        return the new version, or raise Conflict."""
        raise NotImplementedError

    def _backup(self, env: str, data: bytes) -> None:
        raise NotImplementedError

    def _names(self) -> list[str]:
        raise NotImplementedError

    def _try_lock(self, env: str, mine: LockInfo) -> LockInfo | None:
        """One attempt: None when ``mine`` now holds the lock, else the holder."""
        raise NotImplementedError

    def source(self, env: str) -> str:
        """Where ``env``'s state is, for messages."""
        return f"{self.where} {env}"

    # --- StateReader / StateWriter -------------------------------------------------------------------

    def environments(self) -> list[str]:
        return sorted(self._names())

    def read(self, env: str) -> State | None:
        self._seen.pop(env, None)
        self._refused.pop(env, None)
        found = self._load(env)
        if found is None:
            return None
        data, version = found
        state = codec.decode(data, self.source(env))
        if state.environment != env:
            raise StateError(f"{self.source(env)}: holds the state of environment '{state.environment}', not '{env}'")
        self._seen[env] = (version, state)
        return state

    def _current(self, env: str) -> tuple[str | None, State | None]:
        if env not in self._seen:
            self.read(env)
        version, state = self._seen.get(env, (None, None))
        return version, state

    def _still_held(self, env: str) -> None:
        """Raise LockError when this object held ``env``'s lock and lost it (a backend that can tell)."""

    def write(self, env: str, state: State) -> State:
        self._still_held(env)
        if env in self._refused:
            raise self._refused[env]
        version, current = self._current(env)
        if current is not None:
            if current.lineage != state.lineage:
                raise StateError(
                    f"{self.source(env)}: lineage {current.lineage} differs from the state being written "
                    f"({state.lineage}); refusing to overwrite another state"
                )
            if current.same_content(state):
                return current
            state = state.model_copy(update={"serial": max(current.serial, state.serial) + 1})
        else:
            state = state.model_copy(update={"serial": max(state.serial, 1)})
        return self._put(env, state, version, current)

    def replace(self, env: str, state: State) -> State:
        """Store a state of any lineage (``state push --force``, ``state migrate --force``): its serial
        is kept when newer than the stored one, else set just past it."""
        self._still_held(env)
        if env in self._refused:
            raise self._refused[env]
        version, current = self._current(env)
        if current is not None and state.serial <= current.serial:
            state = state.model_copy(update={"serial": current.serial + 1})
        return self._put(env, state, version, current)

    def _put(self, env: str, state: State, version: str | None, current: State | None) -> State:
        try:
            new_version = self._store(env, codec.encode(state), state, version)
        except Conflict:
            refusal = StateError(
                f"{self.source(env)}: the state changed since it was read (serial {current.serial if current else 0}); "
                "another run wrote it without holding the lock. Nothing was overwritten",
                hint="run again: it reads the new state",
            )
            self._refused[env] = refusal
            raise refusal from None
        self._seen[env] = (new_version, state)
        if current is not None and env not in self._backed_up:  # the version before this run's first change
            self._backup(env, codec.encode(current))  # after the store: a refused write changes nothing
            self._backed_up.add(env)
        return state

    # --- Locker ---------------------------------------------------------------------------------------

    def lock(self, env: str, info: LockInfo, timeout: float = 0.0) -> LockInfo:
        mine = identified(info, "pid")
        wait_for_lock(
            lambda: self._try_lock(env, mine),
            timeout,
            lambda holder: LockError(
                f"the state of environment '{env}' in {self.where} is locked by {holder.describe()}",
                hint=self.stuck_hint(env, holder),
            ),
            first=POLL_FIRST,
            cap=POLL,
        )
        self._held[env] = mine.id
        self._backed_up.discard(env)
        return mine

    def stuck_hint(self, env: str, holder: LockInfo) -> str:
        from hepinfra.safety.paths import shown

        return (
            "wait with --lock-timeout DURATION, or if that run is gone (a cancelled CI job) run "
            f"'hepinfra state unlock {shown(str(holder.id), 40)} -e {env}'"
        )
