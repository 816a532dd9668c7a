"""Writing a resource's outputs during an apply: each independently, each under its file's locks.

Owns: re-checking every output's real path right before the write (it must still be the one
checked at load time), the per-file locks (an asyncio lock in this process, and a flock on a
sidecar in the per-user lock directory across processes and projects, held for the whole
read-modify-write, so two runs that share a file never lose each other's keys), removing what
hepinfra wrote to outputs no longer declared, and the records of what was written.
Must not: stop at the first failed output (every output of a rotated database must get its
chance), let a value reach a failure message, or delete on the word of state alone: a retired
file outside the project (on its real path, right before the deletion) and any retired output of
an environment whose digests are keyed by a public constant are listed, never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hepinfra.digests import Digester
from hepinfra.errors import HepinfraError, LockError, OutputError
from hepinfra.fsutil import remove_stale_temps_of
from hepinfra.locking import flock_path, output_lock_file, shared_lock_dir
from hepinfra.outputs import REMOTE_SINKS, SINKS, SPECS, local_kinds, retire_left
from hepinfra.outputs.base import Written, observe_whole_file, resolve_path
from hepinfra.safety.git import GitUnavailable, GitView
from hepinfra.safety.paths import Boundary, Refused, inside, shown
from hepinfra.safety.redact import redact
from hepinfra.state.model import WRITE_BACK_ABSENT, OutputRecord, State
from hepinfra.values import Declared, OutputTarget

log = logging.getLogger("hepinfra.outputs")


def remote_lock_name(name: str) -> Path:
    """The path-like name a remote output's cross-process lock is keyed by (never a file): an AWS
    output's without its region (one written with and one without ``region:`` may be the same)."""
    import hashlib

    parts = name.split(":")
    if parts[0] in ("aws_secretsmanager", "aws_ssm") and len(parts) == 3:
        name = f"{parts[0]}:{parts[2]}"
    return Path("/hepinfra-remote-outputs") / hashlib.sha256(name.encode()).hexdigest()


LEFT_HINT = "remove it yourself if it is no longer used"


def _record_target(record: OutputRecord) -> OutputTarget:
    """The shape a sink's ``observe`` takes, for an output known only from its record."""
    return OutputTarget(
        kind=record.kind,
        path=record.path,
        keys=tuple((k, "") for k in record.keys),
        template=None,
        template_source=None,
        mode=0o600,
        allow_tracked=False,
        allow_outside=False,
        definition_digest=record.definition_digest,
    )


@dataclass(frozen=True)
class Failure:
    """One step of a change that failed: ``render`` of an output, ``retire`` of an old one."""

    step: str
    target: str
    message: str

    def describe(self) -> str:
        return f"{self.step} of {self.target} failed: {self.message}"

    def as_event(self) -> dict[str, str]:
        return {"step": self.step, "output": self.target, "message": self.message}


def failure_message(exc: BaseException) -> str:
    if isinstance(exc, HepinfraError):
        return redact(str(exc))
    if isinstance(exc, OSError):
        return redact(f"{type(exc).__name__}: {exc.strerror}")
    return type(exc).__name__


class OutputWriter:
    def __init__(self, project_dir: Path, declared: list[OutputTarget], *, write_back: bool = False) -> None:
        self.project_dir = project_dir
        # apply --write-back: files that are committed (not local: age) record what they replaced
        self.write_back = frozenset(SINKS) - local_kinds() if write_back else frozenset()
        # every dotenv key some declaration (any environment) writes, per real path: a key that moved to
        # another output of the same file is never removed as "no longer declared", whichever writes first
        self._declared_keys: dict[Path, set[str]] = {}
        for target in declared:
            if target.real:
                self._declared_keys.setdefault(Path(target.real), set()).update(k for k, _ in target.keys)
        # the same for secret stores, by the name they are locked by: a value some declaration still
        # writes is never retired (an output renamed, moved, or given a region writes it too)
        self._declared_remote: dict[Path, set[str]] = {}
        for target in declared:
            if target.kind in REMOTE_SINKS:
                self._declared_remote.setdefault(remote_lock_name(target.path), set()).update(k for k, _ in target.keys)
        self.lock_dir = shared_lock_dir(project_dir / ".hepinfra" / "locks")
        self._locks: dict[Path, asyncio.Lock] = {}
        self.touched_dirs: set[Path] = set()

    def clear_stale_temps(self, reals: list[Path]) -> None:
        """Remove temp files a killed run left beside these outputs, each only while holding that file's
        lock: another process writing the same file (another environment) has its temp file there."""
        for real in dict.fromkeys(reals):
            try:
                with flock_path(output_lock_file(self.lock_dir, real), timeout=0):
                    remove_stale_temps_of([real])
            except LockError:
                continue  # being written right now: its temps are live; a later run clears what is stale

    def _lock(self, real: Path) -> asyncio.Lock:
        return self._locks.setdefault(real, asyncio.Lock())

    async def write(
        self,
        decl: Declared,
        targets: list[OutputTarget],
        context: dict[str, Any],
        digest: Digester,
        state: State,
        password_digest: str,
    ) -> tuple[dict[str, OutputRecord], list[Failure]]:
        """Write each target independently; return the records of those written and the failures.
        ``password_digest``: the keyed digest of the secret the outputs hold (recorded with each)."""
        records: dict[str, OutputRecord] = {}
        failures: list[Failure] = []
        for target in targets:
            replaced: str | None = None
            output_id = State.output_id(decl.ref, target.path)
            previous = state.outputs.get(output_id)
            key_digests: dict[str, str] = {}
            try:
                if target.kind in REMOTE_SINKS:
                    named = remote_lock_name(target.path)
                    async with self._lock(named):
                        done = await asyncio.to_thread(
                            self._write_remote_locked, named, target, context, digest, previous
                        )
                    written, key_digests = done.digest, done.key_digests
                else:
                    real = resolve_path(self.project_dir, target)
                    previous_keys = self._removable(real, previous.keys if previous is not None else ())
                    async with self._lock(real):  # fsync off the event loop, so other changes go on meanwhile
                        result, replaced = await asyncio.to_thread(
                            self._write_locked, real, target, context, digest, previous_keys
                        )
                    self.touched_dirs.add(real.parent)
                    if isinstance(result, Written):
                        written, key_digests = result.digest, result.key_digests
                    else:
                        written = result
            except (HepinfraError, OSError) as exc:
                failures.append(Failure("render", target.path, failure_message(exc)))
                continue
            records[output_id] = OutputRecord(
                database=decl.ref,
                path=target.path,
                kind=target.kind,
                digest=written,
                password_digest=password_digest,
                definition_digest=target.definition_digest,
                keys=tuple(k for k, _ in target.keys),
                key_digests=key_digests,
                write_back_from=replaced,
                written_at=datetime.now(UTC),
            )
        return records, failures

    def _write_remote_locked(
        self, named: Path, target: OutputTarget, context: dict[str, Any], digest: Digester, previous: Any
    ) -> Any:
        keys = tuple(k for k in (previous.keys if previous is not None else ()) if k not in dict(target.keys))
        if not digest.secret:  # the recorded digests prove nothing: no value is removed on their word
            keys = ()
        recorded = dict(previous.key_digests) if previous is not None else {}
        with flock_path(output_lock_file(self.lock_dir, named)):
            return REMOTE_SINKS[target.kind].write(target, context, digest, previous_keys=keys, recorded=recorded)

    def _write_locked(
        self,
        real: Path,
        target: OutputTarget,
        context: dict[str, Any],
        digest: Digester,
        previous_keys: tuple[str, ...],
    ) -> tuple[str | Written, str | None]:
        """What the sink wrote, and (apply --write-back) the keyed digest of the file it replaced. A sink
        in front of live consumers (``outputs.base.CutOver``) completes its cut-over right after the
        write, under the same lock (or, when the write failed, releases them)."""
        from hepinfra.apply.cutover import cut_over_sink

        sink = SINKS[target.kind]
        cut_over = cut_over_sink(target)
        with flock_path(output_lock_file(self.lock_dir, real)):
            replaced = None
            if target.kind in self.write_back:
                before = observe_whole_file(real, digest)
                replaced = before.digest if before.exists and before.digest else WRITE_BACK_ABSENT
            try:
                written = sink.write(real, target, context, digest, previous_keys=previous_keys)
            except BaseException:
                if cut_over is not None:
                    with contextlib.suppress(HepinfraError, OSError):
                        cut_over.after_outputs(target, None)
                raise
            if cut_over is not None:
                cut_over.after_outputs(target, context)
            return written, replaced

    async def retire(self, records: list[OutputRecord], digest: Digester) -> list[Failure]:
        """Remove hepinfra's part of outputs no longer declared (their keys, or their file).

        A record's path comes from state, which a pull request can edit: so hepinfra removes only
        what it can prove it wrote, unchanged (the keyed digest on record matches what is there now;
        nobody without the environment's secret can forge one), never in a file Git tracks, never
        outside the project, never on a digest keyed by the public constant (``digest.secret``), and
        under the same path rules as writes. Anything else is left in place with a warning (listed,
        not a failure of the apply)."""
        failures: list[Failure] = []
        boundary = Boundary(self.project_dir)
        git = GitView()
        for record in records:
            why = retire_left(self.project_dir, record, digest.secret)
            if why is not None:
                log.warning("left in place: %s %s; %s", shown(record.path, 300), why, LEFT_HINT)
                continue
            if record.kind in REMOTE_SINKS:
                named = remote_lock_name(record.path)
                keys = tuple(k for k in record.keys if k not in self._declared_remote.get(named, set()))
                if not keys:
                    continue  # every value of it is still declared (by this output under another name, or another)
                try:
                    async with self._lock(named):
                        reason = await asyncio.to_thread(self._retire_remote_locked, named, record, keys, digest)
                except HepinfraError as exc:
                    failures.append(Failure("retire", record.path, failure_message(exc)))
                    continue
                if reason:
                    log.warning("%s: no longer declared; %s", shown(record.path, 300), reason)
                continue
            try:
                try:
                    real = boundary.check_real(boundary.resolve(record.path, allow_outside=True))
                    if not inside(real, boundary.project_dir):  # a link that changed since the check above
                        log.warning("left in place: %s is outside the project; %s", shown(record.path, 300), LEFT_HINT)
                        continue
                    if git.is_tracked(real):
                        raise Refused("is tracked by Git")
                except (Refused, GitUnavailable) as exc:
                    raise OutputError(f"{shown(record.path, 300)}: {exc}; left as it is") from None
                async with self._lock(real):
                    await asyncio.to_thread(self._retire_locked, real, record, digest)
            except (HepinfraError, OSError) as exc:
                failures.append(Failure("retire", record.path, failure_message(exc)))
        return failures

    def _retire_remote_locked(
        self, named: Path, record: OutputRecord, keys: tuple[str, ...], digest: Digester
    ) -> str | None:
        with flock_path(output_lock_file(self.lock_dir, named)):
            return REMOTE_SINKS[record.kind].retire(_record_target(record), keys, record.key_digests, digest)

    def _retire_locked(self, real: Path, record: OutputRecord, digest: Digester) -> None:
        if SPECS[record.kind].claims == "whole" and real in self._declared_keys:
            return  # another declaration writes this file now: it is theirs, not ours to remove
        sink = SINKS[record.kind]
        with flock_path(output_lock_file(self.lock_dir, real)):
            observed = sink.observe(real, _record_target(record), record.keys, digest)
            if not observed.exists:
                return
            if observed.digest != record.digest:
                log.warning(
                    "%s: no longer declared, but it changed since hepinfra wrote it; left in place (remove "
                    "hepinfra's keys or the file by hand if they are unused)",
                    shown(record.path, 300),
                )
                return
            # the moment of deletion: the real path must still be this one, inside the project (a
            # directory swapped for a link since it was resolved would send the removal elsewhere)
            top = Path(os.path.realpath(self.project_dir))
            if Path(os.path.realpath(real)) != real or not inside(real, top):
                log.warning("left in place: %s is outside the project; %s", shown(record.path, 300), LEFT_HINT)
                return
            sink.retire(real, self._removable(real, record.keys))

    def _removable(self, real: Path, keys: tuple[str, ...]) -> tuple[str, ...]:
        declared = self._declared_keys.get(real, set())
        return tuple(k for k in keys if k not in declared)
