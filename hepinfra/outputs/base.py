"""The sink protocol and what every sink shares: the render context and path confinement.

Owns: ``Sink`` (observe / write / retire), ``db_context`` (the ``db`` variable templates see),
and ``resolve_path``. Must not: put a rendered value into an exception or a log line.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.hepgg.models import DatabaseCredentials
from hepinfra.manifest import OutputTarget
from hepinfra.plan import ObservedOutput


class Sink(Protocol):
    kind: str

    def observe(self, file: Path, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        """Digest what is on disk now (only hepinfra's part of it), without judging it."""
        ...

    def write(self, file: Path, target: OutputTarget, context: dict[str, Any], digest: Digester) -> str:
        """Render and write atomically; return the digest of what was written (as ``observe`` computes it).

        The file is fsynced; its directory is not (the caller fsyncs each directory once).
        """
        ...

    def retire(self, file: Path, keys: tuple[str, ...]) -> None:
        """Remove what hepinfra wrote (its keys, or its file)."""
        ...


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


@functools.lru_cache(maxsize=4096)
def _real(directory: Path) -> Path:
    return directory.resolve()


def resolve_path(project_dir: Path, target: OutputTarget) -> Path:
    """The file an output writes; confined to the project directory unless allow_outside."""
    candidate = Path(target.path)
    file = candidate if candidate.is_absolute() else project_dir / candidate
    if not target.allow_outside:
        real_root = _real(project_dir)
        real = _real(file.parent) / file.name
        if real_root != real and real_root not in real.parents:
            raise OutputError(
                f"{target.path}: resolves outside the manifest's directory (through a link?); "
                "set allow_outside: true to allow it"
            )
    return file
