"""Typed async clients for hep.gg's three public APIs, and the bundle that builds them.

Owns: ``Hepgg``, which turns endpoints + credentials (+ an optional transport, e.g. the
embedded emulator's) into per-service clients sharing pools and the retry policy.
Must not: read credentials from anywhere but the environment it is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx
from pydantic import SecretStr

from hepinfra.hepgg import config
from hepinfra.hepgg._http import HttpCore, RetryPolicy
from hepinfra.hepgg.config import Endpoints
from hepinfra.hepgg.databases import DatabasesClient
from hepinfra.hepgg.idgen import IdGeneratorClient
from hepinfra.hepgg.uploader import UploaderClient
from hepinfra.safety.redact import register

__all__ = ["DatabasesClient", "Endpoints", "Hepgg", "IdGeneratorClient", "RetryPolicy", "UploaderClient"]


class Hepgg:
    """Clients for one hep.gg (real, a socket emulator, or the embedded ``local`` one).

    Use as ``async with Hepgg.from_env(...) as hepgg:``. ``databases(key)`` gives a client
    per database key (environments may use different keys); pools are shared per key.
    """

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 15.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 32,
    ) -> None:
        self.endpoints = endpoints
        self.environ: Mapping[str, str] = dict(os.environ if environ is None else environ)
        self._transport = transport
        self._opts = {"timeout": timeout, "retry": retry, "max_connections": max_connections}
        self._cores: dict[tuple[str, str], HttpCore] = {}

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        url: str | None = None,
        project_dir: Path | None = None,
        **options: object,
    ) -> Hepgg:
        """Endpoints from ``HEPGG_URL``/``HEPGG_ID_URL`` (or ``url``); ``local`` opens the embedded
        emulator under ``project_dir/.hepinfra/local`` and fills in its credentials where the
        environment has none."""
        env = dict(os.environ if environ is None else environ)
        endpoints = config.endpoints_from_env(env, url=url)
        transport = None
        if endpoints.is_local:
            from hepinfra.emulator.local import LOCAL_BASE_URL, local_transport, open_local

            app, creds = open_local(project_dir or Path.cwd(), environ=env)
            env = {**env, **creds.as_env()}  # the local world's own credentials: a real key is never sent there
            if not env.get("HEPINFRA_STATE_KEY", "").strip():  # a sandbox's ids: its own key, kept beside it
                from hepinfra.state.crypto import local_key

                env["HEPINFRA_STATE_KEY"] = local_key(project_dir or Path.cwd())
                key_source = ".hepinfra/local/state.key"
            else:
                key_source = "HEPINFRA_STATE_KEY"
            transport = local_transport(app)
            endpoints = Endpoints(LOCAL_BASE_URL, LOCAL_BASE_URL)
            hub = cls(endpoints, environ=env, transport=transport, **options)  # type: ignore[arg-type]
            hub.local = True
            hub.state_key_source = key_source
            return hub
        return cls(endpoints, environ=env, **options)  # type: ignore[arg-type]

    local = False
    state_key_source = "HEPINFRA_STATE_KEY"  # where HEPINFRA_STATE_KEY's value came from, for messages

    def _core(self, service: str, base_url: str, secret: SecretStr | None, prefix: str = "Bearer ") -> HttpCore:
        slot = (service, secret.get_secret_value() if secret else "")
        core = self._cores.get(slot)
        if core is None:
            register(slot[1])
            headers = {"Authorization": prefix + secret.get_secret_value()} if secret else None
            core = HttpCore(service, base_url, transport=self._transport, headers=headers, **self._opts)  # type: ignore[arg-type]
            self._cores[slot] = core
        return core

    def databases(self, key: SecretStr | None = None) -> DatabasesClient:
        key = key or config.db_key_from_env(self.environ)
        return DatabasesClient(self._core("databases", self.endpoints.url, key))

    def idgen(self, user_var: str = config.ID_USERNAME_VAR, token_var: str = config.ID_TOKEN_VAR) -> IdGeneratorClient:
        username, token = config.id_credentials_from_env(self.environ, user_var, token_var)
        return IdGeneratorClient(self._core("idgen", self.endpoints.id_url, None), username, token)

    def uploader(self, var: str = config.UPLOAD_TOKEN_VAR) -> UploaderClient:
        """The token is sent as the variable holds it: raw, ``Bearer …`` or ``Token …`` (all documented)."""
        token = config.upload_authorization(self.environ, var)
        return UploaderClient(self._core("uploader", self.endpoints.url, token, prefix=""))

    async def aclose(self) -> None:
        for core in self._cores.values():
            await core.aclose()
        self._cores.clear()

    async def __aenter__(self) -> Hepgg:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
