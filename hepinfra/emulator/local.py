"""The embedded local hep.gg behind the URL value ``local``.

Owns: the world under ``<project>/.hepinfra/local/`` (the emulator's SQLite data and the
local credentials, minted at first use, file mode 0600) and an in-process httpx transport
to it. Its databases are simulated, or real on the servers that ``HEPINFRA_LOCAL_POSTGRES`` /
``HEPINFRA_LOCAL_MARIADB`` name (admin URLs; see engines/); ``HEPINFRA_LOCAL_ROLE_PRIVILEGE=1`` lets
their hep.gg users make roles (``rotation: alternating``).
Must not: touch the network, except those servers when they are configured.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from hepinfra.emulator.app import EmulatorConfig, FaultsAndLog
from hepinfra.emulator.seed import seed_from_flags
from hepinfra.emulator.server import build_app
from hepinfra.fsutil import ensure_hepinfra_dir, refuse_links
from hepinfra.safety.redact import register

LOCAL_SLOTS = 100
LOCAL_BASE_URL = "http://hepgg.local"
# "1": the real servers' databases get a hep.gg user that may make roles (rotation: alternating)
ROLE_PRIVILEGE_VAR = "HEPINFRA_LOCAL_ROLE_PRIVILEGE"


@dataclass(frozen=True)
class LocalCredentials:
    db_key: str
    id_username: str
    id_token: str
    upload_token: str

    def as_env(self) -> dict[str, str]:
        return {
            "HEPGG_DB_KEY": self.db_key,
            "HEPGG_ID_USERNAME": self.id_username,
            "HEPGG_ID_TOKEN": self.id_token,
            "HEPGG_UPLOAD_TOKEN": self.upload_token,
        }


def local_dir(project_dir: Path) -> Path:
    return project_dir / ".hepinfra" / "local"


def _credentials(directory: Path) -> LocalCredentials:
    path = directory / "credentials.json"
    try:
        found = LocalCredentials(**json.loads(path.read_text()))
        register(found.db_key, found.id_token, found.upload_token)
        return found
    except (OSError, ValueError, TypeError):
        pass
    creds = LocalCredentials(
        db_key="hepgg_db_" + secrets.token_hex(16),
        id_username="local-" + secrets.token_hex(4),
        id_token=secrets.token_urlsafe(24),
        upload_token="hyd-up-" + secrets.token_urlsafe(18),
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(creds.__dict__, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    register(creds.db_key, creds.id_token, creds.upload_token)
    return creds


def open_local(
    project_dir: Path, config: EmulatorConfig | None = None, *, environ: Mapping[str, str] | None = None
) -> tuple[FaultsAndLog, LocalCredentials]:
    """The embedded emulator app and its credentials, creating the world on first use. With
    ``environ``, its ``HEPINFRA_LOCAL_POSTGRES`` / ``HEPINFRA_LOCAL_MARIADB`` put those engines'
    databases on real servers (each is reached once here: an error names the variable)."""
    config = config or EmulatorConfig()
    if environ is not None:
        from hepinfra.emulator.engines import engines_from_env

        servers = engines_from_env(environ)
        if servers:
            config = replace(config, servers={**servers, **config.servers})
        if environ.get(ROLE_PRIVILEGE_VAR, "").strip().lower() in ("1", "true", "yes", "grant"):
            config = replace(config, role_privilege=True)
    ensure_hepinfra_dir(project_dir)
    directory = local_dir(project_dir)
    refuse_links(directory, project_dir)
    creds = _credentials(directory)
    seed = seed_from_flags(
        [creds.db_key], [(creds.id_username, creds.id_token)], [creds.upload_token], slots=LOCAL_SLOTS
    )
    app = build_app(directory, config, [seed], slots=LOCAL_SLOTS)
    return app, creds


def local_transport(app: FaultsAndLog) -> httpx.AsyncBaseTransport:
    return httpx.ASGITransport(app=app)
