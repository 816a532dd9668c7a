"""Shared fixtures: a seeded local hep.gg served over a real loopback socket.

Every key below is a throwaway credential of the test world, yet tests treat them as
secrets: ``secret_values`` lists them for leak checks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hepinfra.emulator.app import EmulatorConfig, FaultsAndLog
from hepinfra.emulator.seed import SeedFile
from hepinfra.emulator.server import build_app, serve_in_thread
from hepinfra.hepgg import Hepgg, RetryPolicy
from hepinfra.hepgg.config import Endpoints
from tests.servers import mariadb_server, moto_server, pgbouncer_server, postgres_server  # noqa: F401  (real servers)

# an interrupted rotation is settled at once in tests (the default waits for late requests: 30 s);
# test_rotation_and_locks sets it where the wait itself is tested
os.environ.setdefault("HEPINFRA_ROTATE_SETTLE", "0")

KEY = "hepgg_db_" + "a1" * 16  # active account, 50 slots
KEY_OTHER = "hepgg_db_" + "b2" * 16  # a second active account
KEY_DISABLED = "hepgg_db_" + "c3" * 16  # disabled key
KEY_SUSPENDED = "hepgg_db_" + "d4" * 16  # account suspended
KEY_FULL = "hepgg_db_" + "e5" * 16  # account with 1 slot
ID_USER, ID_TOKEN = "My-Bot", "idtok-" + "f6" * 12
UP_TOKEN = "hyd-up-" + "77" * 10
UP_REVOKED = "hyd-up-" + "88" * 10
UP_FORBIDDEN = "hyd-up-" + "99" * 10
UP_ACCESS_REVOKED = "hyd-up-" + "aa" * 10

WORLD = {
    "accounts": [
        {
            "id": "main",
            "db_keys": [KEY],
            "id_keys": [{"username": ID_USER, "token": ID_TOKEN}],
            "upload_tokens": [UP_TOKEN, {"token": UP_REVOKED, "revoked": True}],
        },
        {"id": "other", "db_keys": [KEY_OTHER]},
        {"id": "disabled", "db_keys": [{"key": KEY_DISABLED, "disabled": True}]},
        {"id": "suspended", "status": "suspended", "db_keys": [KEY_SUSPENDED]},
        {"id": "full", "slots": 1, "db_keys": [KEY_FULL]},
        {"id": "forbidden", "uploader": "forbidden", "upload_tokens": [UP_FORBIDDEN]},
        {"id": "noaccess", "uploader": "revoked", "upload_tokens": [UP_ACCESS_REVOKED]},
    ]
}
SECRETS = [
    KEY,
    KEY_OTHER,
    KEY_DISABLED,
    KEY_SUSPENDED,
    KEY_FULL,
    ID_TOKEN,
    UP_TOKEN,
    UP_REVOKED,
    UP_FORBIDDEN,
    UP_ACCESS_REVOKED,
]
ENV = {"HEPGG_DB_KEY": KEY, "HEPGG_ID_USERNAME": ID_USER, "HEPGG_ID_TOKEN": ID_TOKEN, "HEPGG_UPLOAD_TOKEN": UP_TOKEN}
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01, max_retry_after=0.05)


# --- the session-wide secret scan -------------------------------------------------------------------
ISSUED: set[str] = set(SECRETS)  # every key, token and password any emulator world issued
ARTIFACTS: list[tuple[str, str]] = []  # (label, text): stdout, stderr, logs produced by tests


def record_artifact(label: str, text: str) -> None:
    ARTIFACTS.append((label, text))


class _CollectLogs(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            ARTIFACTS.append((f"log {record.name}", self.format(record)))
        except Exception:  # a broken record must not hide others
            ARTIFACTS.append((f"log {record.name}", str(record.msg)))


def _scanned_files(root: Path) -> list[Path]:
    """State files, plan files and backups under the session's temp root (outputs hold secrets by design)."""
    found = []
    for path in root.rglob("*"):
        if not path.is_file() or path.name == "credentials.json":
            continue
        if "state" in path.parts and ".hepinfra" in path.parts:
            found.append(path)
        elif path.suffix == ".json" and path.stat().st_size < 5_000_000:
            try:
                doc = json.loads(path.read_bytes())
            except (ValueError, RecursionError):
                continue
            if isinstance(doc, dict) and "changes" in doc and "environments" in doc:  # a plan file
                found.append(path)
    return found


@pytest.fixture(scope="session", autouse=True)
def action_venv_in_background(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """When any of the action's tests runs, its venv install (40 s) starts now, in the background."""
    github = Path(__file__).parent / "github"
    if any(Path(str(item.path)).is_relative_to(github) for item in request.session.items):
        from tests.github import venv

        venv.start(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session", autouse=True)
def secret_scan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole run: no issued secret in any captured output, log, state file or plan file."""
    handler = _CollectLogs(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(handler)
    root.setLevel(previous_level)
    base = tmp_path_factory.getbasetemp()
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # under pytest-xdist: the controller scans every worker's together (pytest_sessionfinish)
        dump = {"issued": sorted(ISSUED), "artifacts": ARTIFACTS}
        (base.parent / f"{WORKER_DUMP}{worker}.json").write_text(json.dumps(dump))
    files = _scanned_files(base)
    texts = ARTIFACTS + [(str(p), p.read_bytes().decode(errors="replace")) for p in files]
    leaks = find_secrets(texts, {s for s in ISSUED if len(s) >= 8})
    assert not leaks, f"secrets leaked into {leaks[:5]}"


WORKER_DUMP = "secret-scan-"  # <basetemp>/secret-scan-gwN.json: what one xdist worker issued and captured


def scan_every_worker(root: Path) -> tuple[int, list[tuple[str, str]]]:
    """The session's scan across xdist workers: every secret any worker issued, against every
    artifact of every worker and every state or plan file under the session's temp root (a secret
    of one worker's world found in another's output counts too). (workers, leaks)"""
    issued: set[str] = set(SECRETS)
    texts: list[tuple[str, str]] = []
    dumps = sorted(root.glob(f"{WORKER_DUMP}*.json"))
    for dump in dumps:
        data = json.loads(dump.read_text())
        issued.update(data["issued"])
        texts.extend((f"{dump.stem}: {label}", text) for label, text in data["artifacts"])
    texts += [(str(p), p.read_bytes().decode(errors="replace")) for p in _scanned_files(root)]
    return len(dumps), find_secrets(texts, {s for s in issued if len(s) >= 8})


def find_secrets(texts: list[tuple[str, str]], secrets: set[str]) -> list[tuple[str, str]]:
    """(label, the secret's first 4 characters) for every secret found in a text: one Aho-Corasick
    automaton over all secrets, so the scan is linear in the artifacts (not artifacts x secrets)."""
    import ahocorasick

    if not secrets:
        return []
    automaton = ahocorasick.Automaton()
    for secret in secrets:
        automaton.add_word(secret, secret)
    automaton.make_automaton()
    return [(label, found[:4] + "...") for label, text in texts for _, found in automaton.iter(text)]


# One client for every loopback call the tests make themselves: httpx.get() and friends build a new
# client each time, and with it an SSL context that loads the CA bundle (50 ms, thousands of times).
# Keep-alive shorter than the servers' own (uvicorn: 5 s), so a kept connection is never reused just
# as the server closes it.
HTTP = httpx.Client(timeout=10, limits=httpx.Limits(keepalive_expiry=1))


@dataclass
class Server:
    url: str
    app: FaultsAndLog

    def control(self, method: str, path: str, **kwargs: Any) -> Any:
        response = HTTP.request(method, self.url + "/_emulator" + path, timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()["data"]

    def requests(self) -> list[dict[str, Any]]:
        return [r for r in self.control("GET", "/requests")["requests"]]

    def faults(self, **body: Any) -> Any:
        return self.control("PUT", "/faults", json=body)

    def password_valid(self, db_user: str, password: str) -> bool:
        return bool(self.control("POST", "/check-password", json={"dbUser": db_user, "password": password})["valid"])

    def issued_secrets(self) -> list[str]:
        return self.app.emu.store.issued_secrets()

    def hepgg(self, env: dict[str, str] | None = None, retry: RetryPolicy | None = FAST_RETRY, **kw: Any) -> Hepgg:
        return Hepgg(Endpoints(self.url, self.url), environ=env if env is not None else ENV, retry=retry, **kw)


class _Swappable:
    """One loopback server for the session; each test swaps a fresh world in (uvicorn's stop costs 0.2 s)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@pytest.fixture(scope="session")
def _loopback() -> Iterator[tuple[_Swappable, str]]:
    swappable = _Swappable()
    with serve_in_thread(swappable) as running:  # type: ignore[arg-type]
        yield swappable, running.url


def make_server(loopback: tuple[_Swappable, str], config: EmulatorConfig | None = None) -> Iterator[Server]:
    swappable, url = loopback
    app = build_app(None, config or EmulatorConfig(), [SeedFile.model_validate(WORLD)], slots=50)
    swappable.app = app
    yield Server(url, app)
    ISSUED.update(app.emu.store.issued_secrets())
    record_artifact("emulator request log", json.dumps(list(app.emu.log)))
    app.emu.store.close()


@pytest.fixture
def server(_loopback: tuple[_Swappable, str]) -> Iterator[Server]:
    """A fresh seeded local hep.gg behind a real loopback socket."""
    yield from make_server(_loopback)


@pytest.fixture
def tricky_server(_loopback: tuple[_Swappable, str]) -> Iterator[Server]:
    """Passwords that contain every character quoting bugs trip on."""
    yield from make_server(_loopback, EmulatorConfig(password_chars="aZ9$'\"#\\@:/% `!&;<>|*?~=,{}()[]^"))


@pytest.fixture
def make_world(_loopback: tuple[_Swappable, str]) -> Any:
    """Build a fresh world with a custom EmulatorConfig: ``make_world(EmulatorConfig(...))``."""
    worlds: list[Iterator[Server]] = []

    def build(config: EmulatorConfig) -> Server:
        gen = make_server(_loopback, config)
        worlds.append(gen)
        return next(gen)

    yield build
    for gen in worlds:
        for _ in gen:
            pass


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI a skipped test is a failure: nothing may skip silently. Under pytest-xdist the
    controller runs the secret scan over every worker's secrets and artifacts together."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    factory = getattr(session.config, "_tmp_path_factory", None)
    if not hasattr(session.config, "workerinput") and getattr(session.config.option, "numprocesses", None) and factory:
        workers, leaks = scan_every_worker(factory.getbasetemp())
        expected = getattr(session.config.option, "numprocesses", 0)
        if leaks or (isinstance(expected, int) and workers < min(expected, session.testscollected or 1)):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            if reporter:
                what = f"secrets leaked into {leaks[:5]}" if leaks else f"only {workers} worker(s) reported their scan"
                reporter.write_line(f"\nsecret scan across workers: {what}", red=True)
        elif reporter:
            reporter.write_line(f"\nsecret scan across {workers} workers: clean")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line(f"CI: {skipped} test(s) skipped; skips are failures here", red=True)
