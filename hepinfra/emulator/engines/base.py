"""What every real engine behind the local hep.gg shares: the Engine protocol, its error, admin URLs
and one-line messages. Must not: import a driver (each engine does, on use)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from hepinfra.errors import HepinfraError
from hepinfra.safety.redact import redact, register

ENV_VARS = {"postgres": "HEPINFRA_LOCAL_POSTGRES", "mariadb": "HEPINFRA_LOCAL_MARIADB"}
SCHEMES = {"postgres": ("postgresql", "postgres"), "mariadb": ("mysql", "mariadb")}
DEFAULT_PORTS = {"postgres": 5432, "mariadb": 3306}
EXTRA_HINT = "pip install 'hepinfra[verify]'"
CONNECT_TIMEOUT = 5  # seconds: a stopped server answers at once, an unreachable one within this
STATEMENT_TIMEOUT = 15  # seconds: a statement (waiting on a lock) holds the emulator's store no longer


class EngineError(HepinfraError):
    """A real database server refused or could not be reached. One line, never a password."""


class Engine(Protocol):
    """One real database server, reached with an admin login."""

    kind: str  # "postgres" | "mariadb"
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port`` as it goes in a URL (an IPv6 host in brackets)."""
        ...

    def ping(self) -> None:
        """Log in as the admin and run ``SELECT 1``; EngineError if that fails."""
        ...

    def create(self, db_name: str, user: str, password: str) -> None:
        """A database ``db_name`` and a login ``user`` with ``password`` that owns it (or has
        ALL on it). Safe to repeat after a half-finished create: whatever exists is reused and
        the password is set again."""
        ...

    def set_password(self, user: str, password: str) -> None:
        """Set ``user``'s password: the old one stops working for new logins at once."""
        ...

    def set_role_privilege(self, db_name: str, user: str, granted: bool) -> None:
        """Grant (``granted``) or withhold what ``rotation: alternating`` needs to make roles (postgres:
        CREATEROLE; mariadb: CREATE USER and GRANT OPTION on ``db_name``): the emulator's switch
        ``role_privilege`` (hep.gg's shared servers may well withhold it). Withholding takes back a
        grant an earlier create of the same user made."""
        ...


@dataclass(frozen=True)
class AdminUrl:
    """An admin URL, parsed: ``scheme://user[:password]@host[:port][/database][?options]``."""

    kind: str
    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    database: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def address(self) -> str:
        return netloc(self.host, self.port)


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def has_password(url: str) -> bool:
    """Does ``url`` carry a password (``user:password@`` or a ``password=`` option)? Errs on the
    side of yes (a password may hold ``/``, ``?`` or ``@``); never raises, never quotes the URL."""
    rest = url.partition("://")[2] or url
    userinfo, at, _ = rest.rpartition("@")
    if (bool(at) and ":" in userinfo) or "password" in unquote(url).lower():
        return True
    try:  # option names as libpq reads them: percent-decoded (pass%77ord is password)
        query = urlsplit(url).query
    except ValueError:
        return True
    return any("pass" in key.lower() for key, _ in parse_qsl(unquote(query), keep_blank_values=True))


def parse_admin_url(kind: str, url: str) -> AdminUrl:
    """Parse and validate an admin URL; its password is registered with the redactor first.
    Errors say what is wrong, never quoting the URL."""
    register(url)
    schemes = SCHEMES[kind]
    try:
        parts = urlsplit(url.strip())
        password = unquote(parts.password) if parts.password is not None else None
        register(password)
        port = parts.port or DEFAULT_PORTS[kind]
    except ValueError:
        raise EngineError(f"the {kind} admin URL is not a valid URL (is the port a number?)") from None
    if parts.scheme not in schemes:
        raise EngineError(f"the {kind} admin URL must start with {schemes[0]}://")
    if not parts.username:
        raise EngineError(f"the {kind} admin URL names no user ({schemes[0]}://USER:PASSWORD@HOST:PORT/)")
    if parts.fragment:
        raise EngineError(f"the {kind} admin URL must not have a #fragment")
    database = unquote(parts.path.lstrip("/"))
    options = tuple(parse_qsl(parts.query, keep_blank_values=True))
    register(*(value for key, value in options if "password" in key.lower()))
    return AdminUrl(
        kind=kind,
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username),
        password=password,
        database=database or ("postgres" if kind == "postgres" else ""),
        options=options,
    )


def one_line(text: str, *secrets: str | None) -> str:
    """A driver's message as one line, with every known secret (and these) masked."""
    text = " ".join(str(text).split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return redact(text)
