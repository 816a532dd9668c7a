"""``verify:``: log in with the rendered credentials, at the host and port hep.gg gave, and run ``SELECT 1``.

Owns: finding the connection strings a database's outputs hold (rendered again in memory from
the same values), and one check per distinct string with the engine's driver (psycopg 3 for
postgres, PyMySQL for mariadb; the ``hepinfra[verify]`` extra) and a connect timeout.

Trust: a pull request's author controls the templates, hep.gg controls where the database is.
So a check dials only the host and port of hep.gg's own connection string for that database; a
rendered URL that points anywhere else (another host or port, a unix socket, several hosts, or a
query option that routes the connection or changes the login: ``hostaddr``, ``service``,
``options``, ...) is never dialled, and the check fails naming what differs in fixed words.
The driver gets parameters built here, never the URL: host and port from hep.gg, user, password
and database from the rendered URL, and channel settings chosen here (no URL option reaches it).
A failure is one of a fixed set of causes (``CAUSES``) with the host:port dialled: never the
driver's message, never a value from the rendered URL (a query value may be made of the password).
Must not: log, keep or raise a credential.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from hepinfra.errors import HepinfraError
from hepinfra.safety.redact import register

SCHEMES = {"postgres": ("postgresql", "postgres"), "mariadb": ("mysql", "mariadb")}
PORTS = {"postgres": 5432, "mariadb": 3306}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`,;]+")

# query options that route a connection elsewhere or change who logs in where: a rendered URL
# that sets one (unless hep.gg's own connection string has the same option with the same value)
# is not what verify would check, so it is never dialled. Other options are ignored (never passed).
OVERRIDES = {
    "postgres": ("host", "hostaddr", "port", "service", "servicefile", "options", "passfile",
                 "user", "password", "dbname"),
    "mariadb": ("host", "port", "unix_socket", "socket", "named_pipe", "protocol", "read_default_file",
                "read_default_group", "user", "password", "database", "db"),
}  # fmt: skip

# the fixed causes of a failed login (the only words after "could not log in at HOST:PORT ...: ")
REFUSED = "connection refused"
TIMEOUT = "timed out"
DNS = "host name not resolved"
TLS = "TLS failed"
AUTH = "authentication failed"
CLEARTEXT = "the server asked for the password in cleartext; not sent"
AUTH_METHOD = "the server asked for no authentication verify accepts (scram-sha-256 or md5); not logged in"
OTHER = "other error (the driver's message is not shown)"
CAUSES = (REFUSED, TIMEOUT, DNS, TLS, AUTH, CLEARTEXT, AUTH_METHOD, OTHER)

# PostgreSQL: the authentication methods verify accepts (libpq >= 16, ``require_auth``): never
# ``password`` (the password in cleartext) nor ``none`` (a server that asks for nothing proves nothing)
REQUIRE_AUTH = "scram-sha-256,md5"
_RETRY_HINT = "the next apply verifies again (without rotating)"
_ROUTE_HINT = "verify dials only the host and port hep.gg gave for the database; fix the output's template"


class VerifyError(HepinfraError):
    """The rendered credentials did not connect, or were not dialled."""


@dataclass(frozen=True)
class Target:
    """Where a check dials: the host and port of hep.gg's connection string."""

    host: str
    port: int

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class _Login:
    user: str
    password: str
    dbname: str


def connection_strings(engine: str, rendered: Iterable[str]) -> list[str]:
    """The distinct URLs of ``engine``'s schemes in the rendered values and files, in order."""
    found: dict[str, None] = {}
    schemes = SCHEMES.get(engine, ())
    for text in rendered:
        for url in _URL.findall(text):
            if url.split("://", 1)[0].lower() in schemes:
                found[url] = None
    return list(found)


def _host_port(engine: str, url: str) -> tuple[str, int] | str:
    """The (host, port) a URL's authority names, or why it names none: a fixed phrase."""
    parts = urlsplit(url)
    authority = parts.netloc.rpartition("@")[2]
    if "," in authority:
        return "several hosts"
    try:
        port = parts.port or PORTS[engine]
    except ValueError:
        return "not a valid URL"
    host = unquote(parts.hostname or "")
    if not host:
        return "no host"
    if host.startswith(("/", "@")) or "/" in host:
        return "a unix socket"
    return host.lower(), port


def target(engine: str, official: str) -> Target:
    """Where hep.gg says ``engine``'s database is: the host and port of its connection string."""
    found = _host_port(engine, official)
    if isinstance(found, str):
        raise VerifyError(f"hep.gg's connection string has no host and port verify can dial ({found}); not dialled")
    return Target(*found)


def _query(url: str) -> list[tuple[str, str]]:
    """The query's options in order, names lowercased (libpq decodes names and values alike)."""
    return [(k.lower(), v) for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)]


def difference(engine: str, url: str, official: str) -> str | None:
    """How a rendered URL leads anywhere but where hep.gg's ``official`` one does, in fixed words
    (never a value of the URL), or None when it points at hep.gg's host and port."""
    if url.split("://", 1)[0].lower() not in SCHEMES[engine]:
        return "not a valid URL"
    found = _host_port(engine, url)
    if isinstance(found, str):
        return found
    expected = target(engine, official)
    if found[0] != expected.host:
        return "another host"
    if found[1] != expected.port:
        return "another port"
    allowed = set(_query(official))
    for key, value in _query(url):
        if key in OVERRIDES[engine] and (key, value) not in allowed:
            return f"its query sets {OVERRIDES[engine][OVERRIDES[engine].index(key)]}"  # our own spelling
    return None


def _login(url: str) -> _Login:
    parts = urlsplit(url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    return _Login(user, password, unquote(parts.path[1:]) or user)


# --- the drivers -----------------------------------------------------------------------------------


def _postgres(at: Target, login: _Login, timeout: int) -> None:
    import psycopg

    params: dict[str, Any] = {
        "host": at.host,
        "port": str(at.port),
        "hostaddr": "",  # set (empty), so a PGHOSTADDR in the environment cannot route it elsewhere
        "options": "",  # likewise PGOPTIONS
        "user": login.user,
        "password": login.password,
        "dbname": login.dbname,
        "connect_timeout": timeout,
        "sslmode": "prefer",  # TLS when the server offers it; the check never depends on the URL's
        "gssencmode": "disable",
        "application_name": "hepinfra-verify",
    }
    if psycopg.pq.version() >= 160000:  # require_auth is libpq 16's: it refuses a cleartext password
        params["require_auth"] = REQUIRE_AUTH
    with psycopg.connect(autocommit=True, **params) as conn:
        conn.execute("SELECT 1").fetchone()


class _CleartextRefused(Exception):
    """Raised by ``_Refuse`` in PyMySQL's handshake, before the password is sent."""


class _Refuse:
    """PyMySQL sends the password in cleartext to two authentication plugins when the server asks
    (an auth switch or its greeting), with no ``auth_plugin_map`` needed (pymysql/connections.py,
    ``_process_auth``): ``mysql_clear_password`` (always) and ``dialog`` (on a "Password: " prompt).
    A handler in ``auth_plugin_map`` is consulted first for both, so this one refuses them."""

    def __init__(self, connection: Any) -> None:
        pass

    def authenticate(self, packet: Any) -> Any:
        raise _CleartextRefused

    def prompt(self, echo: bool, prompt: bytes) -> bytes:
        raise _CleartextRefused


def _mariadb(at: Target, login: _Login, timeout: int) -> None:
    import pymysql

    conn = pymysql.connect(
        host=at.host,
        port=at.port,
        user=login.user,
        password=login.password,
        database=login.dbname,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
        local_infile=False,
        auth_plugin_map={"mysql_clear_password": _Refuse, "dialog": _Refuse},
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        conn.close()


_CHECKS = {"postgres": _postgres, "mariadb": _mariadb}
_DRIVERS = {"postgres": "psycopg", "mariadb": "pymysql"}  # engine -> the driver's module


# --- why it failed: a fixed cause, never the driver's text ------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        original = getattr(current, "original_exception", None)  # PyMySQL's 2003 keeps the OSError there
        if isinstance(original, BaseException) and original not in seen:
            seen.append(original)
        current = current.__cause__ or current.__context__
    return seen


def _from_os_error(chain: list[BaseException]) -> str | None:
    for exc in chain:
        if isinstance(exc, _CleartextRefused):
            return CLEARTEXT
        if isinstance(exc, socket.gaierror):
            return DNS
        if isinstance(exc, ssl.SSLError):
            return TLS
        if isinstance(exc, ConnectionRefusedError):
            return REFUSED
        if isinstance(exc, TimeoutError):
            return TIMEOUT
    return None


def _probe(at: Target, timeout: int) -> str | None:
    """After libpq failed without a SQLSTATE: is the host:port itself the cause? A TCP connect."""
    try:
        with socket.create_connection((at.host, at.port), timeout=min(timeout, 5)):
            return None
    except OSError as exc:
        return _from_os_error([exc]) or OTHER


# libpq reports a failed connection as text only (psycopg's ``sqlstate`` is None at connect time),
# so these markers classify it in memory; the text itself is never shown. Unmatched: OTHER.
_PG_MARKERS = (
    ("server requested a cleartext password", CLEARTEXT),
    ("authentication method requirement", AUTH_METHOD),
    ("password authentication failed", AUTH),
    ("authentication failed", AUTH),
    ("no pg_hba.conf entry", AUTH),
    ("no password supplied", AUTH),
    ("could not translate host name", DNS),
)
_PG_AUTH_STATES = {"28P01", "28000"}
_MARIADB_AUTH_CODES = {1044, 1045, 1698}


def _classify(engine: str, exc: BaseException, at: Target, timeout: int) -> str:
    chain = _chain(exc)
    if engine == "mariadb":
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code in _MARIADB_AUTH_CODES:
            return AUTH
        return _from_os_error(chain) or OTHER
    import psycopg

    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return TIMEOUT
    if getattr(exc, "sqlstate", None) in _PG_AUTH_STATES:
        return AUTH
    text = str(exc)
    for marker, cause in _PG_MARKERS:
        if marker in text:
            return cause
    found = _from_os_error(chain) or _probe(at, timeout)
    if found is None and "SSL" in text:
        return TLS
    return found or OTHER


# --- the check ------------------------------------------------------------------------------------


def check(engine: str, url: str, official: str, timeout: int) -> float:
    """Log in at hep.gg's host and port (of ``official``, its connection string) with the user,
    password and database of the rendered ``url``, and ``SELECT 1``; the milliseconds it took.
    Raises VerifyError (one line of fixed words): the URL points elsewhere (not dialled), or the
    login failed (a cause of ``CAUSES``)."""
    parts = urlsplit(url)
    for secret in (url, parts.password, unquote(parts.password or "")):
        register(secret)
    at = target(engine, official)
    why = difference(engine, url, official)
    if why is not None:
        raise VerifyError(f"the rendered URL does not point at hep.gg's {at.where} ({why}); not dialled",
                          hint=_ROUTE_HINT)  # fmt: skip
    login = _login(url)
    if not login.user or not login.password:
        raise VerifyError(f"the rendered URL for {at.where} has no user or no password; not dialled", hint=_ROUTE_HINT)
    from hepinfra.extras import MissingExtraError, require

    try:
        require(_DRIVERS[engine], f"verify of a {engine} database", "verify")
    except MissingExtraError as exc:
        raise VerifyError(exc.message) from None
    started = time.perf_counter()
    try:
        _CHECKS[engine](at, login, timeout)
    except Exception as exc:  # every driver error becomes a fixed cause: never its message
        cause = _classify(engine, exc, at, timeout)
        raise VerifyError(f"could not log in at {at.where} with the rendered credentials: {cause}",
                          hint=_RETRY_HINT) from None  # fmt: skip
    return (time.perf_counter() - started) * 1000


async def check_all(engine: str, urls: list[str], official: str, timeout: int) -> float:
    """``check`` each URL in a daemon thread (``hepinfra.daemon``), giving up after ``timeout`` (+ a
    little): a driver's own timeouts bound each socket read, not a whole handshake, so a server that
    drips one byte at a time must not hold an apply. The total milliseconds."""
    import asyncio

    from hepinfra.daemon import in_daemon_thread

    total = 0.0
    for url in urls:
        try:
            total += await asyncio.wait_for(in_daemon_thread(check, engine, url, official, timeout), timeout + 2)
        except TimeoutError:
            raise VerifyError(
                f"no answer from {target(engine, official).where} within the verify_timeout ({timeout}s): the "
                "server accepted the connection but stalled",
                hint=_RETRY_HINT,
            ) from None
    return total


def rendered_texts(targets: Iterable[Any], context: dict[str, Any]) -> list[str]:
    """Every value and file the targets render with ``context`` (in memory only)."""
    from hepinfra.templates import compile_string, render_template

    texts: list[str] = []
    for target_ in targets:
        for _, source in target_.keys:
            texts.append(render_template(compile_string(source), context))
        if target_.template_source is not None:
            texts.append(render_template(compile_string(target_.template_source), context))
    return texts
