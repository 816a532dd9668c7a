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
    return httpx.request(
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
        faults = httpx.put(url + "/_emulator/faults", json={"fail_rate": 0}, timeout=5).json()["data"]
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
    assert "Traceback" not in proc.stderr


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
