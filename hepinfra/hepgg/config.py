"""Where hep.gg is and which credentials to use, read from the environment.

Owns: base URLs (``HEPGG_URL``, ``HEPGG_ID_URL``), the ``local`` sentinel, and reading
credentials into ``SecretStr`` values. Must not: accept a credential from anywhere but
the environment, or put a credential's value in any message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import SecretStr

from hepinfra.errors import UsageError
from hepinfra.safety.redact import register

DEFAULT_URL = "https://hep.gg"
DEFAULT_ID_URL = "https://id.hep.gg"
LOCAL = "local"

DB_KEY_VAR = "HEPGG_DB_KEY"
ID_USERNAME_VAR = "HEPGG_ID_USERNAME"
ID_TOKEN_VAR = "HEPGG_ID_TOKEN"  # noqa: S105 (a variable name)
UPLOAD_TOKEN_VAR = "HEPGG_UPLOAD_TOKEN"  # noqa: S105 (a variable name)


@dataclass(frozen=True)
class Endpoints:
    """Base URLs of the three services. ``local`` means the embedded emulator."""

    url: str = DEFAULT_URL
    id_url: str = DEFAULT_ID_URL

    @property
    def is_local(self) -> bool:
        return self.url == LOCAL


def _check_url(value: str, var: str) -> str:
    """'local' or a base URL: http(s), a host, an optional port and path; no query, fragment or
    credentials (they would be pasted into every request and message). Never echoes the value: a
    swapped CI variable may hold a key."""
    value = value.strip().rstrip("/")
    if value == LOCAL:
        return value
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port
        ok = (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and not parts.query
            and not parts.fragment
            and "?" not in value
            and "#" not in value
            and parts.username is None
            and (port is None or 0 < port < 65536)
            and value.isascii()
            and value.isprintable()
        )
    except ValueError:
        ok = False
    if not ok:
        raise UsageError(
            f"{var} must be 'local' or an http(s) base URL: a host, an optional port and path, no query, "
            "fragment or credentials (it is set, but to something else)"
        )
    return value


def endpoints_from_env(environ: Mapping[str, str] | None = None, *, url: str | None = None) -> Endpoints:
    """Resolve endpoints: the environment wins over ``url`` (from a manifest), which wins over defaults."""
    env = os.environ if environ is None else environ
    base = _check_url(env.get("HEPGG_URL") or url or DEFAULT_URL, "HEPGG_URL")
    if base == LOCAL:
        return Endpoints(LOCAL, LOCAL)
    id_default = DEFAULT_ID_URL if base == DEFAULT_URL else base
    return Endpoints(base, _check_url(env.get("HEPGG_ID_URL") or id_default, "HEPGG_ID_URL"))


def check_credential(value: str, var: str) -> None:
    """A credential goes into an HTTP header or body: printable ASCII only (never echoed)."""
    if not (value.isascii() and value.isprintable()):
        raise UsageError(f"{var} holds characters no credential has (non-ASCII or control characters); copy it again")


def secret_from_env(var: str, environ: Mapping[str, str] | None = None, *, purpose: str) -> SecretStr:
    """Read one credential; a missing or empty variable is a UsageError naming it."""
    env = os.environ if environ is None else environ
    value = (env.get(var) or "").strip()
    if not value:
        raise UsageError(f"{purpose} is not set: export {var}")
    register(value)
    check_credential(value, var)
    return SecretStr(value)


def db_key_from_env(environ: Mapping[str, str] | None = None, var: str = DB_KEY_VAR) -> SecretStr:
    return secret_from_env(var, environ, purpose="the hep.gg database API key")


def id_credentials_from_env(
    environ: Mapping[str, str] | None = None, user_var: str = ID_USERNAME_VAR, token_var: str = ID_TOKEN_VAR
) -> tuple[str, SecretStr]:
    env = os.environ if environ is None else environ
    username = (env.get(user_var) or "").strip()
    if not username:
        raise UsageError(f"the ID Generator username is not set: export {user_var}")
    check_credential(username, user_var)
    return username, secret_from_env(token_var, env, purpose="the ID Generator token")


def upload_authorization(environ: Mapping[str, str] | None = None, var: str = UPLOAD_TOKEN_VAR) -> SecretStr:
    """The Authorization header value for the Uploader. The variable may hold the token in any of the
    three documented forms (``hyd-up-…``, ``Bearer hyd-up-…``, ``Token hyd-up-…``); it is sent as given."""
    value = secret_from_env(var, environ, purpose="the uploader token")
    scheme, _, rest = value.get_secret_value().partition(" ")
    if value.get_secret_value().lower() in ("bearer", "token"):
        raise UsageError(f"{var} holds only the word '{scheme}': put the token after it, or the token alone")
    if rest.strip():
        if scheme.lower() not in ("bearer", "token"):
            raise UsageError(f"{var} must be the token, or 'Bearer TOKEN' or 'Token TOKEN' (it holds a space)")
        register(rest.strip())
    return value
