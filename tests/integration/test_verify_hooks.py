"""``verify:`` and ``after_rotate:`` end to end, against the local hep.gg backed by a real PostgreSQL
cluster and a real MariaDB server (tests/servers.py), through the CLI.

The one proof that a rotation worked is a real connection with the new credentials: apply connects
with the connection strings exactly as rendered, the old ones are refused by the server, the hook
runs once after that, and a failed verification is retried by the next apply without rotating.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pymysql
import pytest
from dotenv import dotenv_values

from hepinfra.emulator.app import EmulatorConfig
from hepinfra.emulator.engines import Engine, open_engine
from hepinfra.state import codec
from tests.cli.test_emulator_command import emulator as emulator_process
from tests.cliutil import invoke, write_project
from tests.conftest import ENV, ISSUED, KEY, Server, record_artifact
from tests.servers import MariaDB, Postgres, TcpForwarder

MANIFEST = """
version: 1
defaults: {verify: true}
environments:
  prod: {}
databases:
  shop:
    engine: postgres
    after_rotate: ["sh", "-c", "echo \\"$HEPINFRA_ADDRESS $HEPINFRA_NAME $HEPINFRA_ENV\\" >> hook.log"]
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
  orders:
    engine: mariadb
    outputs:
      - dotenv: .env
        keys: {ORDERS_URL: "{{ db.connection_string }}"}
      - template: conf.json.j2
        path: out/orders.json
  cache:
    engine: mongo
    outputs:
      - dotenv: .env
        keys: {CACHE_URL: "{{ db.connection_string }}"}
"""
FILES = {".gitignore": ".env\nout/\nhook.log\n", "conf.json.j2": '{"url": {{ db.connection_string | json }}}\n'}


def connect(url: str) -> None:
    """Log in with exactly what the URL says and run SELECT 1."""
    parts = urlsplit(url)
    if parts.scheme == "postgresql":
        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        return
    conn = pymysql.connect(host=parts.hostname, port=parts.port, user=unquote(parts.username or ""),
                           password=unquote(parts.password or ""), database=unquote(parts.path[1:]),
                           connect_timeout=5)  # fmt: skip
    conn.close()


def refused(url: str) -> None:
    with pytest.raises((psycopg.OperationalError, pymysql.err.OperationalError)) as caught:
        connect(url)
    text = str(caught.value)
    assert "password authentication failed" in text or "1045" in text or "Access denied" in text, text


class Behind:
    """A real server whose connection strings point through a TcpForwarder: the emulator changes
    passwords on the server directly, while hepinfra's verification goes through the forwarder,
    which the test can stop (the server looks down to clients only)."""

    def __init__(self, engine: Engine, forwarder: TcpForwarder) -> None:
        self._engine, self.kind, self.host, self.port = engine, engine.kind, "127.0.0.1", forwarder.port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def ping(self) -> None:
        self._engine.ping()

    def create(self, db_name: str, user: str, password: str) -> None:
        self._engine.create(db_name, user, password)

    def set_password(self, user: str, password: str) -> None:
        self._engine.set_password(user, password)

    def set_role_privilege(self, db_name: str, user: str, granted: bool) -> None:
        self._engine.set_role_privilege(db_name, user, granted)


@pytest.fixture
def world(
    make_world: Callable[[EmulatorConfig], Server], postgres_server: Postgres, mariadb_server: MariaDB
) -> Callable[..., tuple[Server, dict[str, TcpForwarder]]]:
    def build(**config: Any) -> tuple[Server, dict[str, TcpForwarder]]:
        forwarders = {
            "postgres": TcpForwarder((postgres_server.host, postgres_server.port)),
            "mariadb": TcpForwarder((mariadb_server.host, mariadb_server.port)),
        }
        servers = {
            "postgres": Behind(open_engine("postgres", postgres_server.url), forwarders["postgres"]),
            "mariadb": Behind(open_engine("mariadb", mariadb_server.url), forwarders["mariadb"]),
        }
        return make_world(EmulatorConfig(servers=servers, **config)), forwarders  # type: ignore[arg-type]

    return build


def urls(root: Path) -> dict[str, str]:
    found = {k: v or "" for k, v in dotenv_values(root / ".env").items()}
    ISSUED.update(unquote(urlsplit(u).password or "") for u in found.values())
    return found


def rotations(server: Server) -> dict[str, int]:
    store = server.app.emu.store
    return {r["name"]: r["rotations"] for r in store.list_databases(store.account_of_db_key(KEY) or "")}


def events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_verify_connects_rotation_kills_the_old_password_and_the_hook_runs_once(
    tmp_path: Path, world: Callable[..., tuple[Server, dict[str, TcpForwarder]]]
) -> None:
    server, _ = world()
    path = write_project(tmp_path, MANIFEST, FILES)
    applied = invoke(["apply", "-f", str(path), "--auto-approve", "--json"], server=server)
    assert applied.code == 0, applied.out + applied.err
    done = {e["address"]: e for e in events(applied.out) if e["event"] == "done"}
    assert done["prod/databases.shop"]["verified_ms"] > 0 and done["prod/databases.orders"]["verified_ms"] > 0
    assert "verified_ms" not in done["prod/databases.cache"]  # mongo: left out by defaults
    before = urls(tmp_path)
    connect(before["SHOP_URL"])
    connect(before["ORDERS_URL"])
    assert json.loads((tmp_path / "out/orders.json").read_text())["url"] == before["ORDERS_URL"]
    assert not (tmp_path / "hook.log").exists(), "after_rotate ran without a rotation"

    rotated = invoke(["rotate", "-f", str(path), "shop", "orders", "--auto-approve", "--json"], server=server)
    assert rotated.code == 0, rotated.out + rotated.err
    after = urls(tmp_path)
    for key in ("SHOP_URL", "ORDERS_URL"):
        assert after[key] != before[key]
        refused(before[key])  # the old password is dead, on the server itself
        connect(after[key])
    assert (tmp_path / "hook.log").read_text().splitlines() == ["prod/databases.shop shop-prod prod"]
    finished = {e["address"]: e for e in events(rotated.out) if e["event"] == "done"}
    shop = finished["prod/databases.shop"]
    assert shop["verified_ms"] > 0 and shop["rotation_window_ms"] >= shop["verified_ms"]
    as_text = invoke(["rotate", "-f", str(path), "orders", "--auto-approve"], server=server)
    assert "max " in as_text.out and " ms (old password dead until outputs were written and verified).\n" in as_text.out
    state = codec.decode((tmp_path / ".hepinfra/state/prod.json").read_bytes(), "s")
    assert state.journal == ()
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server).code == 0


def test_a_server_down_during_rotate_fails_the_database_and_the_next_apply_verifies_without_rotating(
    tmp_path: Path, world: Callable[..., tuple[Server, dict[str, TcpForwarder]]]
) -> None:
    server, forwarders = world()
    path = write_project(tmp_path, MANIFEST, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    forwarders["postgres"].stop()
    try:
        rotated = invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server)
        text = rotated.out + rotated.err
        assert rotated.code == 1 and "prod/databases.shop" in text and "verify of shop-prod failed" in text, text
        where = f"127.0.0.1:{forwarders['postgres'].port}"
        assert f"could not log in at {where} with the rendered credentials: connection refused" in text, text
        assert "Traceback" not in text and urlsplit(urls(tmp_path)["SHOP_URL"]).password not in text
        assert not (tmp_path / "hook.log").exists(), "the hook ran before the credentials were verified"
        state = codec.decode((tmp_path / ".hepinfra/state/prod.json").read_bytes(), "s")
        assert {j.op for j in state.journal} == {"verify", "hook"}
        planned = invoke(["plan", "-f", str(path)], server=server)
        assert "a verification is owed by an earlier apply" in planned.out and "will be rotated" not in planned.out
        assert "   > prod/databases.shop will verify again; will run its after_rotate hook again\n" in planned.out
        again = invoke(["apply", "-f", str(path), "--auto-approve"], server=server)
        assert again.code == 1 and "verify of shop-prod failed" in again.out + again.err
    finally:
        forwarders["postgres"].start()
    count = rotations(server)["shop-prod"]
    resumed = invoke(["apply", "-f", str(path), "--auto-approve", "--json"], server=server)
    assert resumed.code == 0, resumed.out + resumed.err
    assert rotations(server)["shop-prod"] == count == 1, "the next apply rotated again"
    connect(urls(tmp_path)["SHOP_URL"])
    (shop,) = [e for e in events(resumed.out) if e["event"] == "done" and e["address"] == "prod/databases.shop"]
    assert re.fullmatch(r"verified again; ran its after_rotate hook again in \d+ ms: \(no output\)", shop["message"])
    assert shop["hook"]["last_line"] == "(no output)" and shop["verified_ms"] > 0
    assert (tmp_path / "hook.log").read_text().count("\n") == 1
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server).code == 0


def test_a_failing_hook_fails_the_database_and_runs_again_next_time(
    tmp_path: Path, world: Callable[..., tuple[Server, dict[str, TcpForwarder]]]
) -> None:
    server, _ = world()
    manifest = MANIFEST.replace(
        '["sh", "-c", "echo \\"$HEPINFRA_ADDRESS $HEPINFRA_NAME $HEPINFRA_ENV\\" >> hook.log"]',
        '["sh", "-c", "echo run >> hook.log; test -e ok || { echo reload refused: no ok file >&2; exit 3; }"]',
    )
    path = write_project(tmp_path, manifest, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    failed = invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server)
    text = failed.out + failed.err
    assert failed.code == 1 and "after_rotate exited with status 3: reload refused: no ok file" in text
    (tmp_path / "ok").write_text("")
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    assert (tmp_path / "hook.log").read_text().splitlines() == ["run", "run"]
    assert rotations(server)["shop-prod"] == 1
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server).code == 0


def test_the_hook_environment_has_no_credentials_and_a_timeout_kills_it(
    tmp_path: Path, world: Callable[..., tuple[Server, dict[str, TcpForwarder]]]
) -> None:
    server, _ = world()
    manifest = MANIFEST.replace(
        '["sh", "-c", "echo \\"$HEPINFRA_ADDRESS $HEPINFRA_NAME $HEPINFRA_ENV\\" >> hook.log"]',
        '["sh", "-c", "env > hook.env; sleep 30"]\n    after_rotate_timeout: 1s',
    )
    path = write_project(tmp_path, manifest, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    failed = invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server,
                    env={"HEPINFRA_STATE_KEY": "state-key-value-123"})  # fmt: skip
    assert failed.code == 1 and "did not finish within 1s" in failed.out + failed.err
    seen = (tmp_path / "hook.env").read_text()
    assert "HEPINFRA_ADDRESS=prod/databases.shop" in seen and "HEPINFRA_ENV=prod" in seen
    for secret in (KEY, ENV["HEPGG_ID_TOKEN"], ENV["HEPGG_UPLOAD_TOKEN"], "state-key-value-123"):
        assert secret not in seen
    assert urlsplit(urls(tmp_path)["SHOP_URL"]).password not in seen


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  cache:\n    engine: mongo\n", "  cache:\n    engine: mongo\n    verify: true\n",
         "a mongo database cannot be verified"),
        ('after_rotate: ["sh"', 'after_rotate: ["echo {{ db.password }}", "sh"', "an after_rotate argv must not use db"),
        ("after_rotate: [", "after_rotate_timeout: soon\n    after_rotate: [", "bad duration 'soon'"),
        ("after_rotate: [", "verify_timeout: 99d\n    after_rotate: [", "verify_timeout: must be at most 10m"),
    ],
)  # fmt: skip
def test_validate_catches_bad_verify_and_hooks(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = write_project(tmp_path, MANIFEST.replace(old, new, 1), FILES)
    result = invoke(["validate", "-f", str(path)])
    assert result.code == 1 and message in result.err and len(result.err.strip().splitlines()) == 1, result.err


STEPS = ["before:3", "after:3", "step:outputs", "step:verify", "step:hook", "step:done"]


@pytest.mark.parametrize("point", STEPS)
def test_a_rotation_killed_between_any_two_steps_converges_without_a_second_rotation(
    point: str, tmp_path: Path, world: Callable[..., tuple[Server, dict[str, TcpForwarder]]]
) -> None:
    """journal intent -> rotate (HTTP call 3: List, Reveal, Rotate) -> outputs -> verify -> hook."""
    server, _ = world()
    manifest = MANIFEST.split("  orders:")[0]
    path = write_project(tmp_path, manifest, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    old = urls(tmp_path)["SHOP_URL"]
    env = {**os.environ, **ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url, "HEPINFRA_TEST_KILL_AT": point}
    proc = subprocess.run([sys.executable, "-m", "hepinfra", "rotate", "-f", str(path), "shop", "--auto-approve"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    record_artifact(f"rotate killed at {point}", proc.stdout + proc.stderr)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    resumed = invoke(["apply", "-f", str(path), "--auto-approve"], server=server)
    assert resumed.code == 0, resumed.out + resumed.err
    # killed before the rotate call left, the journal's intent makes the next apply rotate (once)
    assert rotations(server)["shop-prod"] == 1, "rotated twice (or lost the rotation)"
    new = urls(tmp_path)["SHOP_URL"]
    connect(new)
    refused(old)
    hooks = (tmp_path / "hook.log").read_text().count("\n") if (tmp_path / "hook.log").exists() else 0
    # the hook runs once a rotation's outputs are verified; killed after it ran and before that was
    # recorded (step:done), it runs again: a hook is run at least once, so it must be idempotent
    assert hooks == (2 if point == "step:done" else 1)
    state = codec.decode((tmp_path / ".hepinfra/state/prod.json").read_bytes(), "s")
    assert state.journal == ()
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server).code == 0


def test_the_emulator_command_with_both_servers_and_verify(
    tmp_path: Path, postgres_server: Postgres, mariadb_server: MariaDB
) -> None:
    """The must-show: ``hepinfra emulator`` with --postgres/--mariadb (URLs from the environment),
    a manifest with verify: true, and the drivers connect with the URLs read from the .env file."""
    env = {"PG_ADMIN": postgres_server.url, "MARIA_ADMIN": mariadb_server.url, "EMU_KEY": KEY}
    args = ["--data", str(tmp_path / "emu"), "--db-key", "env:EMU_KEY", "--postgres", "env:PG_ADMIN",
            "--mariadb", "env:MARIA_ADMIN"]  # fmt: skip
    with emulator_process(*args, env=env) as (_, url):
        path = write_project(tmp_path / "p", MANIFEST, FILES)
        applied = invoke(["apply", "-f", str(path), "--auto-approve"], env={"HEPGG_URL": url, "HEPGG_DB_KEY": KEY})
        assert applied.code == 0, applied.out + applied.err
        found = urls(tmp_path / "p")
        connect(found["SHOP_URL"])
        connect(found["ORDERS_URL"])
        rotated = invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], env={"HEPGG_URL": url,
                         "HEPGG_DB_KEY": KEY})  # fmt: skip
        assert rotated.code == 0, rotated.out + rotated.err
        refused(found["SHOP_URL"])
        connect(urls(tmp_path / "p")["SHOP_URL"])
        assert (tmp_path / "p/hook.log").read_text().count("\n") == 1


def test_the_readme_walkthrough_with_a_real_postgresql(tmp_path: Path, postgres_server: Postgres) -> None:
    """README, "Try it with a real PostgreSQL": the example against the embedded local hep.gg with
    HEPINFRA_LOCAL_POSTGRES, then psql through ``hepinfra run``; a rotation kills the old URL."""
    import shutil

    example = Path(__file__).resolve().parents[2] / "examples/real-postgres"
    project = tmp_path / "real-postgres"
    shutil.copytree(example, project)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEPGG_")}
    env["HEPINFRA_LOCAL_POSTGRES"] = postgres_server.url
    manifest = str(project / "hepinfra.yaml")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "hepinfra", *args], env=env, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)  # fmt: skip
        record_artifact(f"walkthrough {args[0]}", done.stdout + done.stderr)
        return done

    applied = cli("apply", "-f", manifest, "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "verified" in applied.stdout
    psql = cli("run", "-f", manifest, "-e", "dev", "--", "sh", "-c", 'psql "$DATABASE_URL" -tAc "select current_user"')
    assert psql.returncode == 0 and psql.stdout.strip().startswith("dum_"), psql.stdout + psql.stderr
    old = dotenv_values(project / "out/dev/.env")["DATABASE_URL"] or ""
    ISSUED.add(unquote(urlsplit(old).password or ""))
    rotated = cli("rotate", "-f", manifest, "shop", "--auto-approve")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    new = dotenv_values(project / "out/dev/.env")["DATABASE_URL"] or ""
    ISSUED.add(unquote(urlsplit(new).password or ""))
    refused(old)
    connect(new)


@pytest.mark.parametrize(("engine", "driver"), [("postgres", "psycopg"), ("mariadb", "pymysql")])
def test_validate_names_the_extra_when_a_driver_is_missing(tmp_path: Path, engine: str, driver: str) -> None:
    import importlib.util
    from unittest import mock

    real_find_spec = importlib.util.find_spec

    def without(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == driver else real_find_spec(name, *args, **kwargs)

    manifest = f"version: 1\nenvironments: {{prod: {{}}}}\ndatabases:\n  a:\n    engine: {engine}\n    verify: true\n"
    path = write_project(tmp_path, manifest)
    with mock.patch("importlib.util.find_spec", without):
        result = invoke(["validate", "-f", str(path)])
    assert result.code == 1 and "pip install 'hepinfra[verify]'" in result.err and "databases.a.verify" in result.err


# --- what an attacker tried (each once broke something) ------------------------------------------------


def test_hooks_and_exec_outputs_never_get_the_local_admin_urls(
    tmp_path: Path, world: Callable[..., tuple[Server, dict[str, TcpForwarder]]]
) -> None:
    server, _ = world()
    manifest = MANIFEST.replace(
        '["sh", "-c", "echo \\"$HEPINFRA_ADDRESS $HEPINFRA_NAME $HEPINFRA_ENV\\" >> hook.log"]',
        '["sh", "-c", "env > hook.env"]',
    )
    path = write_project(tmp_path, manifest, FILES)
    admin = {"HEPINFRA_LOCAL_POSTGRES": "postgresql://admin:adminSECRETpw77@127.0.0.1:1/postgres",
             "HEPINFRA_LOCAL_MARIADB": "mysql://root:rootSECRETpw77@127.0.0.1:1/"}  # fmt: skip
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=admin).code == 0
    assert invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server, env=admin).code == 0
    seen = (tmp_path / "hook.env").read_text()
    assert "HEPINFRA_ADDRESS=prod/databases.shop" in seen and "SECRETpw77" not in seen


def test_a_hook_line_quoting_part_of_the_new_password_is_not_shown(
    tmp_path: Path, world: Callable[..., tuple[Server, dict[str, TcpForwarder]]]
) -> None:
    server, _ = world()
    hook = """["python3", "-c", "import sys, urllib.parse as u; line = [l for l in open('.env') if l.startswith('SHOP_URL')][0]; pw = u.unquote(u.urlsplit(line.split('=', 1)[1].strip().strip(chr(39))).password); sys.stderr.write('pw starts ' + repr(pw[:len(pw) // 2]) + chr(10)); sys.exit(2)"]"""
    manifest = MANIFEST.replace(
        '["sh", "-c", "echo \\"$HEPINFRA_ADDRESS $HEPINFRA_NAME $HEPINFRA_ENV\\" >> hook.log"]', hook
    )
    path = write_project(tmp_path, manifest, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    failed = invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server)
    password = unquote(urlsplit(urls(tmp_path)["SHOP_URL"]).password or "")
    text = failed.out + failed.err
    assert failed.code == 1 and "after_rotate exited with status 2" in text
    assert password[: len(password) // 2] not in text and "its message is not shown" in text


def test_a_server_that_stalls_the_handshake_cannot_hang_verify(
    tmp_path: Path, make_world: Callable[[EmulatorConfig], Server], mariadb_server: MariaDB
) -> None:
    """A listener that announces a big packet and then drips one byte every 0.5 s: PyMySQL's own
    timeouts bound each read, not the handshake; verify_timeout must bound the whole check. It is
    where hep.gg says the database is (verify dials nowhere else): the database is made on the real
    server, and its connection string points through a forwarder to the listener."""
    import socket
    import threading
    import time as clock

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def drip() -> None:
        conns = []
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                conn.sendall(b"\xff\xff\x00\x00")
                conns.append(conn)
            except OSError:
                pass
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.sendall(b"\x0a")
            clock.sleep(0.3)
        for conn in conns:
            conn.close()
        listener.close()

    threading.Thread(target=drip, daemon=True).start()
    forwarder = TcpForwarder(("127.0.0.1", port))
    stalling = Behind(open_engine("mariadb", mariadb_server.url), forwarder)
    server = make_world(EmulatorConfig(servers={"mariadb": stalling}))  # type: ignore[dict-item]
    manifest = (
        "version: 1\ndefaults: {verify: true}\nenvironments:\n  prod: {}\ndatabases:\n  orders:\n"
        "    engine: mariadb\n    verify_timeout: 2s\n    outputs:\n"
        '      - dotenv: .env\n        keys: {ORDERS_URL: "{{ db.connection_string }}"}\n'
    )
    path = write_project(tmp_path, manifest, FILES)
    env = {**os.environ, **ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url}
    try:
        proc = subprocess.run([sys.executable, "-m", "hepinfra", "apply", "-f", str(path), "--auto-approve"],
                              env=env, capture_output=True, text=True, timeout=90)  # fmt: skip
    finally:
        stop.set()
        forwarder.stop()
    record_artifact("apply against a stalling server", proc.stdout + proc.stderr)
    assert proc.returncode == 1 and "verify of orders-prod failed" in proc.stdout + proc.stderr
    assert f"no answer from 127.0.0.1:{forwarder.port} within the verify_timeout (2s)" in proc.stdout + proc.stderr
    assert "stalled" in proc.stdout + proc.stderr


def test_a_password_option_in_an_admin_url_is_found_however_it_is_spelt() -> None:
    from hepinfra.emulator.engines import has_password

    for url in ("postgresql://u@h/db?pass%77ord=x", "postgresql://u@h/db?PASSWORD=x", "postgresql://u:pw@h/db",
                "postgresql://u@h/db?passfile=/x"):  # fmt: skip
        assert has_password(url), url
    assert not has_password("postgresql://u@h:5432/db?sslmode=disable")


def test_an_owed_hook_whose_after_rotate_was_removed_is_dropped_and_said_so(
    tmp_path: Path, world: Callable[..., tuple[Server, dict[str, TcpForwarder]]]
) -> None:
    server, _ = world()
    failing = MANIFEST.replace(
        '["sh", "-c", "echo \\"$HEPINFRA_ADDRESS $HEPINFRA_NAME $HEPINFRA_ENV\\" >> hook.log"]', '["false"]'
    )
    path = write_project(tmp_path, failing, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    assert invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server).code == 1
    path.write_text(failing.replace('    after_rotate: ["false"]\n', ""))
    planned = invoke(["plan", "-f", str(path)], server=server)
    assert "an after_rotate hook owed by an earlier apply is dropped: after_rotate was removed" in planned.out
    applied = invoke(["apply", "-f", str(path), "--auto-approve"], server=server)
    assert applied.code == 0 and "owed hook dropped" in applied.out and "hook: done" not in applied.out
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server).code == 0


def test_an_interrupted_apply_kills_its_hook_and_owes_it(
    tmp_path: Path, world: Callable[..., tuple[Server, dict[str, TcpForwarder]]]
) -> None:
    import time as clock

    server, _ = world()
    manifest = MANIFEST.split("  orders:")[0].replace(
        '["sh", "-c", "echo \\"$HEPINFRA_ADDRESS $HEPINFRA_NAME $HEPINFRA_ENV\\" >> hook.log"]',
        '["sh", "-c", "echo $$ > hook.pid; sleep 120"]',
    )
    path = write_project(tmp_path, manifest, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    env = {**os.environ, **ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url}
    proc = subprocess.Popen([sys.executable, "-m", "hepinfra", "rotate", "-f", str(path), "shop", "--auto-approve"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    pid_file = tmp_path / "hook.pid"
    deadline = clock.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert clock.monotonic() < deadline and proc.poll() is None, "the hook never started"
        clock.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    record_artifact("rotate interrupted during its hook", out + err)
    assert proc.returncode == 1 and "interrupted" in err
    hook = int(pid_file.read_text())

    def alive(pid: int) -> bool:  # a killed child left unreaped (its parent exited) is a zombie: dead
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    deadline = clock.monotonic() + 5
    while alive(hook) and clock.monotonic() < deadline:
        clock.sleep(0.05)
    assert not alive(hook), "the hook outlived the interrupted run"
    state = codec.decode((tmp_path / ".hepinfra/state/prod.json").read_bytes(), "s")
    assert "hook" in {j.op for j in state.journal}
