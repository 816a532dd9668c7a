"""``hepinfra emulator`` as a real process: announce, serve, persist, seed, stop on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import HTTP

SEED = """
accounts:
  - id: seeded
    slots: 2
    db_keys: [{key: seeded-key}, {key: off-key, disabled: true}]
    databases: [{name: legacy, engine: postgres, status: over_quota, size_bytes: 4096}]
  - status: suspended
    db_keys: [gone-key]
"""


@contextmanager
def emulator(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hepinfra", "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("hep.gg emulator listening on http://127.0.0.1:"), line + (
            proc.stderr.read() if proc.stderr else ""
        )
        yield proc, line.split()[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def db(url: str, key: str, method: str = "GET", path: str = "", **kw: object) -> httpx.Response:
    return HTTP.request(
        method, f"{url}/api/v1/db/databases{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10, **kw
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_then_stops_cleanly_on_signal_and_restart_keeps_the_world(tmp_path: Path, sig: int) -> None:
    data = tmp_path / "data"
    env = {"EMU_KEY": "key-from-env"}
    with emulator("--data", str(data), "--db-key", "env:EMU_KEY", "--db-key", "plain-key", env=env) as (proc, url):
        made = db(url, "key-from-env", "POST", json={"name": "keep-me", "engine": "mongo"})
        assert made.status_code == 201
        assert db(url, "plain-key").json()["data"]["databases"] == []  # a separate account
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    with emulator("--data", str(data), "--db-key", "env:EMU_KEY", env=env) as (proc, url):
        again = db(url, "key-from-env", path="/" + made.json()["data"]["id"])
        assert again.status_code == 200
        assert again.json()["data"]["password"] == made.json()["data"]["password"]
    assert oct(os.stat(data / "hepgg.sqlite3").st_mode & 0o777) == "0o600"


def test_seed_file_world(tmp_path: Path) -> None:
    seed = tmp_path / "world.yaml"
    seed.write_text(SEED)
    with emulator("--data", str(tmp_path / "d"), "--seed", str(seed)) as (_, url):
        rows = db(url, "seeded-key").json()["data"]["databases"]
        assert [(r["name"], r["engine"], r["status"], r["sizeBytes"]) for r in rows] == [
            ("legacy", "postgres", "over_quota", 4096)
        ]
        assert db(url, "seeded-key", "POST", json={"name": "second"}).status_code == 201
        assert db(url, "seeded-key", "POST", json={"name": "third"}).json()["code"] == "OUT_OF_SLOTS"
        assert db(url, "off-key").json()["code"] == "KEY_DISABLED"
        assert db(url, "gone-key").status_code == 403


def test_flags_for_faults_and_passwords(tmp_path: Path) -> None:
    args = [
        "--data",
        str(tmp_path / "d"),
        "--db-key",
        "k",
        "--password-chars",
        "$'\" #\\",
        "--fail-rate",
        "1",
        "--fault-kinds",
        "503",
        "--latency",
        "5",
    ]
    with emulator(*args) as (_, url):
        assert db(url, "k").status_code == 503
        faults = HTTP.put(url + "/_emulator/faults", json={"fail_rate": 0}, timeout=5).json()["data"]
        assert faults["latency_ms"] == 5 and faults["kinds"] == ["503"]
        password = db(url, "k", "POST", json={"name": "q"}).json()["data"]["password"]
        assert set("$'\" #\\") <= set(password)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--id-key", "nocolon"], "--id-key must be USER:TOKEN"),
        (["--db-key", "env:HEPINFRA_TEST_UNSET_VAR"], "HEPINFRA_TEST_UNSET_VAR is not set"),
        (["--engines", "mariadb,oracle"], "unknown engine(s) oracle"),
        (["--fail-rate", "2"], "--fail-rate"),
        (["--fault-kinds", "boom"], "unknown fault kinds ['boom']"),
        (["--seed", "/nonexistent/seed.yaml"], "/nonexistent/seed.yaml: cannot read seed file"),
        (
            ["--postgres", "postgresql://admin:pw-in-argv@127.0.0.1/postgres"],
            "put the admin URL in HEPINFRA_LOCAL_POSTGRES",
        ),
        (["--mariadb", "mysql://root:p/w@127.0.0.1/"], "put the admin URL in HEPINFRA_LOCAL_MARIADB"),
        (["--mariadb", "env:HEPINFRA_TEST_UNSET_VAR"], "HEPINFRA_TEST_UNSET_VAR is not set"),
    ],
)
def test_bad_flags_give_one_line_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hepinfra", "emulator", "--data", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr and "pw-in-argv" not in proc.stderr and "p/w" not in proc.stderr


def test_bad_seed_file_names_file_line_and_column(tmp_path: Path) -> None:
    seed = tmp_path / "bad.yaml"
    seed.write_text("accounts:\n  - id: x\n    slots: [\n")
    proc = subprocess.run(
        [sys.executable, "-m", "hepinfra", "emulator", "--data", str(tmp_path), "--seed", str(seed)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and f"{seed}:4:1: not valid YAML" in proc.stderr
    seed.write_text("accounts:\n  - slotz: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "hepinfra", "emulator", "--data", str(tmp_path), "--seed", str(seed)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and "accounts.0.slotz: Extra inputs are not permitted" in proc.stderr


def _cut(url: str, request: bytes, *, reset: bool = False) -> None:
    """Send ``request`` (usually incomplete), then hang up (with an RST when ``reset``)."""
    import socket
    import struct
    import time
    from urllib.parse import urlparse

    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port), timeout=5) as sock:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(request)
        time.sleep(0.05)


def test_client_disconnects_never_print_tracebacks(tmp_path: Path) -> None:
    partial_json = b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"na'
    multipart = (
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000\r\n\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nabc'
    )
    requests = [
        b"POST /api/v1/db/databases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n" + partial_json,
        b"POST / HTTP/1.1\r\nHost: x\r\n" + partial_json,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: t\r\n" + multipart,
        b"PUT /_emulator/faults HTTP/1.1\r\nHost: x\r\n" + partial_json,
        b"GET /api/v1/db/databases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\n",
        b"GET /api/v1/db/data",
    ]
    with emulator("--data", str(tmp_path / "d"), "--db-key", "k", "--latency", "100") as (proc, url):
        for request in requests:
            _cut(url, request)
            _cut(url, request, reset=True)
        assert db(url, "k").status_code == 200  # still serving
        log = HTTP.get(url + "/_emulator/requests", timeout=5).json()["data"]["requests"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "Exception in ASGI" not in stderr, stderr
    assert all(entry["status"] != 500 for entry in log), log  # a hang-up is not a server error


def _next_line(proc: subprocess.Popen[str], timeout: float = 10) -> str:
    import threading

    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


def test_without_db_key_it_prints_the_key_it_accepts_and_keeps_it(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    with emulator("--data", data) as (proc, url):
        line = _next_line(proc)
        assert line.startswith("accepting database key: "), line
        key = line.split()[-1]
        assert db(url, key).status_code == 200
        assert db(url, key, "POST", json={"name": "kept"}).status_code == 201
    with emulator("--data", data) as (proc, url):  # a restart accepts the same key, same account
        assert _next_line(proc).split()[-1] == key
        assert [r["name"] for r in db(url, key).json()["data"]["databases"]] == ["kept"]
    assert oct(os.stat(Path(data) / "db-key").st_mode & 0o777) == "0o600"


def test_with_a_db_key_it_prints_no_key(tmp_path: Path) -> None:
    with emulator("--data", str(tmp_path / "d"), "--db-key", "given-key") as (proc, _):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None and proc.stdout.read() == ""
    assert not (tmp_path / "d" / "db-key").exists()
