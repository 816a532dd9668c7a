"""The sink protocol and what every sink shares: the render context and path confinement.

Owns: ``Sink`` (observe / write / retire), ``CutOver`` (before_rotate / after_outputs),
``db_context`` (the ``db`` variable templates see),
``resolve_path``, and ``existing_mode`` (a rewrite never loosens a file's mode).
Must not: put a rendered value into an exception or a log line.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.safety.paths import Boundary, Refused, recheck, shown
from hepinfra.values import ObservedOutput, OutputTarget

if TYPE_CHECKING:
    from hepinfra.hepgg.models import DatabaseCredentials


class Sink(Protocol):
    kind: str

    def observe(self, file: Path, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        """Digest what is on disk now (only hepinfra's part of it), without judging it."""
        ...

    def write(
        self,
        file: Path,
        target: OutputTarget,
        context: dict[str, Any],
        digest: Digester,
        *,
        previous_keys: tuple[str, ...] = (),
    ) -> str | Written:
        """Render and write atomically; return the digest of what was written (as ``observe`` computes it),
        or a ``Written`` with it and a digest per key.

        ``previous_keys``: the keys hepinfra wrote to this file for this output last time (from
        state); those the target no longer declares are removed in the same write (sinks without
        keys ignore it). A stricter mode already on the file is kept (``existing_mode``).
        The file is fsynced; its directory is not (the caller fsyncs each directory once).
        """
        ...

    def retire(self, file: Path, keys: tuple[str, ...]) -> None:
        """Remove what hepinfra wrote (its keys, or its file)."""
        ...


class RemoteSink(Protocol):
    """A sink whose output is not a file of the project: a secret store reached by an API or a
    command. Its target's ``path`` names it ("exec:./bin/push prod shop-prod"); it is locked
    across processes by that name, and observed only by a refreshing plan."""

    kind: str

    def observe(self, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        """Digest what is there now (``trusted`` when it cannot be read back)."""
        ...

    def write(
        self,
        target: OutputTarget,
        context: dict[str, Any],
        digest: Digester,
        *,
        previous_keys: tuple[str, ...] = (),
        recorded: dict[str, str] | None = None,
    ) -> Written:
        """Render and deliver, idempotently; of ``previous_keys`` no longer declared, those whose values
        still match ``recorded`` (the keyed digests hepinfra wrote) are removed, no others."""
        ...

    def retire(
        self, target: OutputTarget, keys: tuple[str, ...], recorded: dict[str, str], digest: Digester
    ) -> str | None:
        """Remove what hepinfra provably wrote (values whose keyed digests match ``recorded``); or
        say why not (it is then left in place)."""
        ...


class CutOver(Protocol):
    """Optional, for a sink in front of live consumers (a connection pooler): hold them while the
    secret changes under them, and hand them the new one without a failed login. The rotation step
    calls ``before_rotate`` for each such output once its intent is journaled, right before hep.gg's
    rotate (an error: nothing rotated, every output held so far released); the writer calls
    ``after_outputs`` right after the output's write, under its file lock (an error: the output
    stays owed, so a killed or failed run finishes the cut-over on the next apply), and with
    ``context`` None when nothing was written (the rotation failed, or the write did): release only.
    Both are idempotent; both run in a worker thread."""

    def before_rotate(self, target: OutputTarget) -> None: ...

    def after_outputs(self, target: OutputTarget, context: dict[str, Any] | None) -> None: ...


@dataclass(frozen=True)
class Written:
    """What a remote sink delivered: the keyed digest of the whole, and of each key's value."""

    digest: str
    key_digests: dict[str, str]


def render_keys(target: OutputTarget, context: dict[str, Any]) -> dict[str, str]:
    """Every ``keys:`` template rendered (secrets: never log or raise them)."""
    from hepinfra.templates import render_error, render_string

    values: dict[str, str] = {}
    for key, source in target.keys:
        try:
            values[key] = render_string(source, context)
        except Exception as exc:  # a template failure, without its values
            raise OutputError(f"{target.path}: {key}: {render_error(exc, source, context)}") from None
    return values


def delivered(values: dict[str, str], digest: Digester) -> Written:
    """What a write of ``values`` records: the digest of the whole and of each value."""
    return Written(digest(keyed_payload(values)), {k: digest(v) for k, v in values.items()})


def observed(values: dict[str, str], digest: Digester) -> ObservedOutput:
    """What is there now, as ``delivered`` would have digested it (no value: missing)."""
    if not values:
        return ObservedOutput(exists=False)
    return ObservedOutput(
        exists=True,
        digest=digest(keyed_payload(values)),
        key_digests=tuple(sorted((k, digest(v)) for k, v in values.items())),
    )


def keyed_payload(values: dict[str, str]) -> bytes:
    """The canonical JSON object of ``values`` (sorted keys): what is sent, and what is digested."""
    import json

    return json.dumps(values, sort_keys=True, ensure_ascii=False).encode()


def observe_whole_file(file: Path, digest: Digester) -> ObservedOutput:
    """A sink that owns the whole file (template, age): the keyed digest of its bytes."""
    try:
        return ObservedOutput(exists=True, digest=digest(file.read_bytes()))
    except FileNotFoundError:
        return ObservedOutput(exists=False)
    except OSError as exc:
        return ObservedOutput(exists=True, problem=f"unreadable ({exc.strerror})")


def remove_whole_file(file: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        file.unlink()


def existing_mode(file: Path, requested: int) -> int:
    """The mode to write ``file`` with: ``requested``, minus any permission its current mode lacks
    (a stricter mode someone set is kept, 0400 stays 0400; a looser one is tightened)."""
    try:
        return os.stat(file).st_mode & 0o777 & requested or requested
    except FileNotFoundError:
        return requested


def db_context(creds: DatabaseCredentials) -> dict[str, Any]:
    """The ``db`` variable of templates. Holds secrets: never log or raise it."""
    url = creds.connection_string.get_secret_value()
    parts = urlsplit(url)
    return {
        "id": creds.id,
        "name": creds.name,
        "engine": creds.engine,
        "db_name": creds.db_name,
        "db_user": creds.db_user,
        "user": creds.db_user,
        "password": creds.password.get_secret_value(),
        "connection_string": url,
        "host": parts.hostname,
        "port": parts.port,
    }


def resolve_path(project_dir: Path, target: OutputTarget) -> Path:
    """The real path an output writes, checked by the containment rules (``safety.paths``); for a
    target resolved by the manifest, it must still be the real path checked at load time."""
    try:
        if target.real:
            return recheck(target.path, project_dir, Path(target.real), allow_outside=target.allow_outside)
        return Boundary(project_dir).check_output(target.path, allow_outside=target.allow_outside)
    except Refused as exc:
        raise OutputError(f"{shown(target.path)}: {exc}") from None
