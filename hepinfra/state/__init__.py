"""State: what hepinfra manages, per environment, with no secret in it.

``model`` (values), ``codec`` (bytes only), ``backend`` (protocols), ``spec`` (the manifest's
``state:`` block), ``local`` (the default backend on disk), ``stored`` (the rules the remote
backends share), ``s3`` and ``postgres``, ``conformance`` (the suite every backend must pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hepinfra.state.backend import Backend
    from hepinfra.state.spec import LocalState, PostgresState, S3State


def open_backend(spec: LocalState | S3State | PostgresState, project_dir: Path) -> Backend:
    """The backend the manifest's ``state:`` block names. Nothing connects until first used, and
    each backend's library is imported only then (``hepinfra[s3]``, ``hepinfra[postgres]``)."""
    from hepinfra.state.spec import PostgresState, S3State

    if isinstance(spec, S3State):
        from hepinfra.state.s3 import S3Backend

        return S3Backend(spec)
    if isinstance(spec, PostgresState):
        from hepinfra.state.postgres import PostgresBackend

        return PostgresBackend(spec)
    from hepinfra.state.local import LocalBackend

    return LocalBackend(project_dir / ".hepinfra" / "state")
