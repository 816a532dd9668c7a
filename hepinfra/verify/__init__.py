"""``verify:``: connect with the credentials exactly as rendered and run ``SELECT 1``.

Owns: finding the connection strings a database's outputs hold (rendered again in memory from
the same values), and one check per distinct string with the engine's driver (psycopg 3 for
postgres, PyMySQL for mariadb; the ``hepinfra[verify]`` extra) and a connect timeout. A failure
is the driver's first line, through the redactor: never the password or the URL.
Must not: log, keep or raise a credential.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from hepinfra.errors import HepinfraError
from hepinfra.safety.redact import redact, register

SCHEMES = {"postgres": ("postgresql", "postgres"), "mariadb": ("mysql", "mariadb")}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`,;]+")


class VerifyError(HepinfraError):
    """The rendered credentials did not connect."""


def connection_strings(engine: str, rendered: Iterable[str]) -> list[str]:
    """The distinct URLs of ``engine``'s schemes in the rendered values and files, in order."""
    found: dict[str, None] = {}
    schemes = SCHEMES.get(engine, ())
    for text in rendered:
        for url in _URL.findall(text):
            if url.split("://", 1)[0].lower() in schemes:
                found[url] = None
    return list(found)


def _postgres(url: str, timeout: int) -> None:
    import psycopg

    with psycopg.connect(url, connect_timeout=timeout, autocommit=True) as conn:
        conn.execute("SELECT 1").fetchone()


def _mariadb(url: str, timeout: int) -> None:
    import pymysql

    parts = urlsplit(url)
    conn = pymysql.connect(
        host=parts.hostname or "localhost",
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=unquote(parts.path.lstrip("/")) or None,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        conn.close()


_CHECKS = {"postgres": _postgres, "mariadb": _mariadb}
_DRIVERS = {"postgres": "psycopg", "mariadb": "PyMySQL"}


def _where(url: str) -> str:
    """``host:port`` of a URL for a message; a malformed port (an output's own text) never raises here."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.hostname}:{port}" if parts.hostname and port else parts.hostname or "the server"


def check(engine: str, url: str, timeout: int) -> float:
    """Connect and ``SELECT 1``; the milliseconds it took. Raises VerifyError (one redacted line)."""
    parts = urlsplit(url)
    for secret in (url, parts.password, unquote(parts.password or "")):
        register(secret)
    started = time.perf_counter()
    try:
        _CHECKS[engine](url, timeout)
    except ImportError:
        raise VerifyError(f"verify needs {_DRIVERS[engine]}: pip install 'hepinfra[verify]'") from None
    except Exception as exc:  # every driver error becomes one line without the credentials
        where = _where(url)
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise VerifyError(
            redact(f"could not connect to {where} with the rendered credentials ({_DRIVERS[engine]}): {detail}"),
            hint="the next apply verifies again (without rotating)",
        ) from None
    return (time.perf_counter() - started) * 1000


async def check_all(engine: str, urls: list[str], timeout: int) -> float:
    """``check`` each URL in a daemon thread (``hepinfra.daemon``), giving up after ``timeout`` (+ a
    little): a driver's own timeouts bound each socket read, not a whole handshake, so a server that
    drips one byte at a time must not hold an apply. The total milliseconds."""
    import asyncio

    from hepinfra.daemon import in_daemon_thread

    total = 0.0
    for url in urls:
        try:
            total += await asyncio.wait_for(in_daemon_thread(check, engine, url, timeout), timeout + 2)
        except TimeoutError:
            raise VerifyError(
                f"no answer from {_where(url)} within the verify_timeout ({timeout}s): the server "
                "accepted the connection but stalled",
                hint="the next apply verifies again (without rotating)",
            ) from None
    return total


def rendered_texts(targets: Iterable[Any], context: dict[str, Any]) -> list[str]:
    """Every value and file the targets render with ``context`` (in memory only)."""
    from hepinfra.templates import compile_string, render_template

    texts: list[str] = []
    for target in targets:
        for _, source in target.keys:
            texts.append(render_template(compile_string(source), context))
        if target.template_source is not None:
            texts.append(render_template(compile_string(target.template_source), context))
    return texts
