"""Real database servers behind the local hep.gg (optional): its databases become real ones.

Owns: the ``Engine`` protocol the emulator calls (make a database and its login role, set a
role's password), admin URLs (parsed here, never echoed), opening an engine's adapter (its
driver is imported only then: ``pip install 'hepinfra[verify]'``), and the settings
``HEPINFRA_LOCAL_POSTGRES`` / ``HEPINFRA_LOCAL_MARIADB``. Every admin password is registered
with the redactor the moment it is parsed.
Must not: put a password in an exception or a log, or format a name or a password into SQL by
hand (the adapters quote identifiers with the driver's tools and bind or escape literals).
"""

from __future__ import annotations

from collections.abc import Mapping

from hepinfra.emulator.engines.base import (
    CONNECT_TIMEOUT,
    DEFAULT_PORTS,
    ENV_VARS,
    EXTRA_HINT,
    SCHEMES,
    STATEMENT_TIMEOUT,
    AdminUrl,
    Engine,
    EngineError,
    has_password,
    netloc,
    one_line,
    parse_admin_url,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_PORTS",
    "ENV_VARS",
    "EXTRA_HINT",
    "SCHEMES",
    "STATEMENT_TIMEOUT",
    "AdminUrl",
    "Engine",
    "EngineError",
    "connect",
    "engines_from_env",
    "has_password",
    "netloc",
    "one_line",
    "open_engine",
    "parse_admin_url",
]


def open_engine(kind: str, url: str) -> Engine:
    """The adapter for ``kind`` reached with admin URL ``url`` (not contacted yet)."""
    admin = parse_admin_url(kind, url)
    if kind == "postgres":
        from hepinfra.emulator.engines.postgres import PostgresEngine

        return PostgresEngine(admin)
    from hepinfra.emulator.engines.mariadb import MariaDBEngine

    return MariaDBEngine(admin)


def connect(kind: str, url: str, source: str) -> Engine:
    """Open and ping the ``kind`` server of admin URL ``url``; an error names ``source`` (the
    variable or flag the URL came from) and never the password."""
    try:
        engine = open_engine(kind, url)
        engine.ping()
    except EngineError as exc:
        raise EngineError(f"{source}: {exc.message}", hint=exc.hint) from None
    return engine


def engines_from_env(environ: Mapping[str, str]) -> dict[str, Engine]:
    """The real servers ``HEPINFRA_LOCAL_POSTGRES`` / ``HEPINFRA_LOCAL_MARIADB`` name, pinged."""
    found: dict[str, Engine] = {}
    for kind, var in ENV_VARS.items():
        url = environ.get(var, "").strip()
        if url:
            found[kind] = connect(kind, url, var)
    return found
