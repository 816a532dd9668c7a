"""Client for the ID Generator (``POST /`` on id.hep.gg).

Owns: the request body (credentials in the body only, JSON or form-urlencoded) and the
result. Must not: send credentials anywhere but the body, or show them or the ID.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import SecretStr

from hepinfra import errors as E
from hepinfra.hepgg._http import HttpCore
from hepinfra.hepgg.models import GeneratedId, parse

SERVICE = "idgen"
RESERVED = frozenset({"username", "token", "type"})


class IdGeneratorClient:
    def __init__(self, core: HttpCore, username: str, token: SecretStr) -> None:
        self._core = core
        self._username = username
        self._token = token

    async def generate(
        self,
        type: str,
        fields: Mapping[str, Any] | None = None,
        *,
        encoding: Literal["json", "form"] = "json",
        **options: Any,
    ) -> GeneratedId:
        """Mint one ID of ``type``; its options are the type's own fields, given as ``fields`` (any
        names, as a manifest writes them) or as keywords (e.g. ``length=12``)."""
        options = {**(fields or {}), **options}
        clash = RESERVED.intersection(options)
        if clash:
            raise E.UsageError(f"ID option names {sorted(clash)} are reserved for the request itself")
        body: dict[str, Any] = {"username": self._username, "token": self._token.get_secret_value(), "type": type}
        body.update(options)
        if encoding == "form":
            form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in body.items()}
            response = await self._core.call("POST", "/", idempotent=True, data=form)
        else:
            response = await self._core.call("POST", "/", idempotent=True, json=body)
        return parse(GeneratedId, HttpCore.json(response, SERVICE), service=SERVICE, what="generate")
