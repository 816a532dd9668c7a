"""Real database servers behind the local hep.gg: a PostgreSQL cluster and a MariaDB server started
by the tests (tests/servers.py). What hep.gg promises must hold on them: a created database takes
logins with the password the API returned, at the address its connection string names; after a
rotation the old password is refused by the server itself; a server that cannot be reached makes
the API answer an error and leaves the record as it was; passwords never reach argv or a message."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import psycopg
import pymysql
import pytest

from hepinfra.emulator.app import EmulatorConfig
from hepinfra.emulator.engines import Engine, EngineError, open_engine
from tests.cli.test_emulator_command import db as api_at
from tests.cli.test_emulator_command import emulator as emulator_process
from tests.cliutil import write_project
from tests.conftest import ISSUED, KEY, Server, record_artifact
from tests.servers import MariaDB, Postgres, TcpForwarder

NASTY = "aZ9$'\"#\\@:/% `!&;<>|*?~=,{}()[]^"  # quotes, backslash, %, @, :, /, $ and friends
ENGINES = ["postgres", "mariadb"]


# --- helpers ---------------------------------------------------------------------------------------


def connect(url: str) -> Any:
    """A login with exactly what a connection string says (user, password, host, port, database)."""
    parts = urlsplit(url)
    if parts.scheme == "postgresql":
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    assert parts.scheme == "mysql", url
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=unquote(parts.path.lstrip("/")),
        autocommit=True,
        connect_timeout=5,
    )


def works(url: str) -> None:
    """Log in, SELECT 1, and create and use a table in the database (the role owns it or has ALL)."""
    conn = connect(url)
    try:
        if isinstance(conn, psycopg.Connection):
            assert conn.execute("SELECT 1").fetchone() == (1,)
            conn.execute("CREATE TABLE IF NOT EXISTS t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
        else:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                assert cursor.fetchone() == (1,)
                cursor.execute("CREATE TABLE IF NOT EXISTS t (x int)")
                cursor.execute("INSERT INTO t VALUES (1)")
    finally:
        conn.close()


def refused(url: str) -> None:
    """The server itself refuses this login: a wrong password, not an unreachable server."""
    try:
        connect(url).close()
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc), exc
        return
    except pymysql.err.OperationalError as exc:
        assert exc.args[0] == 1045, exc  # Access denied
        return
    raise AssertionError("the old password still logs in")


def admin_url(kind: str, postgres: Postgres, mariadb: MariaDB) -> str:
    return postgres.url if kind == "postgres" else mariadb.url


def call(server: Server, method: str, path: str = "", **kw: Any) -> httpx.Response:
    response = api_at(server.url, KEY, method, path, **kw)
    if response.status_code < 300 and "password" in response.json().get("data", {}):
        ISSUED.add(response.json()["data"]["password"])
    return response


@pytest.fixture
def real_world(
    make_world: Callable[[EmulatorConfig], Server], postgres_server: Postgres, mariadb_server: MariaDB
) -> Callable[..., Server]:
    """``real_world(password_chars=...)``: a fresh local hep.gg over a socket, both engines real."""

    def build(servers: dict[str, Engine] | None = None, **config: Any) -> Server:
        if servers is None:
            servers = {
                "postgres": open_engine("postgres", postgres_server.url),
                "mariadb": open_engine("mariadb", mariadb_server.url),
            }
        return make_world(EmulatorConfig(servers=servers, **config))

    return build


# --- through the API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ENGINES)
def test_create_connect_rotate_reveal(
    kind: str, real_world: Callable[..., Server], postgres_server: Postgres, mariadb_server: MariaDB
) -> None:
    server = real_world()
    made = call(server, "POST", json={"name": f"shop-{kind}", "engine": kind})
    assert made.status_code == 201, made.text
    data = made.json()["data"]
    real = postgres_server if kind == "postgres" else mariadb_server
    parts = urlsplit(data["connectionString"])
    assert (parts.hostname, parts.port) == (real.host, real.port)  # that server, not db.teamhydra.dev
    assert unquote(parts.username or "") == data["dbUser"] and parts.path == "/" + data["dbName"]
    works(data["connectionString"])

    rotated = call(server, "POST", f"/{data['id']}/rotate")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["data"]
    assert new["password"] != data["password"]
    refused(data["connectionString"])  # dead at once, on the server itself
    works(new["connectionString"])

    revealed = call(server, "GET", f"/{data['id']}").json()["data"]
    assert revealed["password"] == new["password"]
    assert revealed["connectionString"] == new["connectionString"]
    assert server.password_valid(data["dbUser"], new["password"])
    assert not server.password_valid(data["dbUser"], data["password"])


@pytest.mark.parametrize("kind", ENGINES)
def test_nasty_passwords_connect_and_rotate(kind: str, real_world: Callable[..., Server]) -> None:
    server = real_world(password_chars=NASTY, password_length=48)
    made = call(server, "POST", json={"name": "nasty", "engine": kind}).json()["data"]
    assert set(NASTY) <= set(made["password"])
    works(made["connectionString"])
    assert unquote(urlsplit(made["connectionString"]).password or "") == made["password"]
    new = call(server, "POST", f"/{made['id']}/rotate").json()["data"]
    assert set(NASTY) <= set(new["password"])
    refused(made["connectionString"])
    works(new["connectionString"])


def test_mongo_and_unconfigured_engines_stay_simulated(
    real_world: Callable[..., Server], mariadb_server: MariaDB
) -> None:
    server = real_world(servers={"mariadb": open_engine("mariadb", mariadb_server.url)})
    for engine, port in (("mongo", 27017), ("postgres", 5432)):
        made = call(server, "POST", json={"name": f"sim-{engine}", "engine": engine}).json()["data"]
        assert urlsplit(made["connectionString"]).netloc.endswith(f"@db.teamhydra.dev:{port}")
        rotated = call(server, "POST", f"/{made['id']}/rotate")
        assert rotated.status_code == 200


@pytest.mark.parametrize("kind", ENGINES)
def test_an_unreachable_server_fails_create_and_rotate_and_changes_no_record(
    kind: str, real_world: Callable[..., Server], postgres_server: Postgres, mariadb_server: MariaDB
) -> None:
    real = postgres_server if kind == "postgres" else mariadb_server
    gate = TcpForwarder((real.host, real.port))  # the server, behind a port the test can close
    try:
        url = admin_url(kind, postgres_server, mariadb_server).replace(f":{real.port}/", f":{gate.port}/")
        server = real_world(servers={kind: open_engine(kind, url)})
        first = call(server, "POST", json={"name": "before", "engine": kind}).json()["data"]
        assert urlsplit(first["connectionString"]).port == gate.port
        works(first["connectionString"])
        listed = call(server, "GET").json()["data"]["databases"]

        gate.stop()  # the server is gone: connection refused
        failed = call(server, "POST", json={"name": "during", "engine": kind})
        assert failed.status_code == 503
        body = failed.json()
        assert body["ok"] is False and f"{kind} server 127.0.0.1:{gate.port}: cannot create" in body["error"]
        assert "\n" not in body["error"]
        assert call(server, "GET").json()["data"]["databases"] == listed  # no record
        not_rotated = call(server, "POST", f"/{first['id']}/rotate")
        assert not_rotated.status_code == 503 and not_rotated.json()["ok"] is False
        assert "cannot set the password" in not_rotated.json()["error"]
        revealed = call(server, "GET", f"/{first['id']}").json()["data"]
        assert revealed["password"] == first["password"]  # the record is unchanged
        for secret in (real.password, first["password"]):
            assert secret not in failed.text + not_rotated.text

        gate.start()  # back: the record and the server still agree
        works(first["connectionString"])
        again = call(server, "POST", json={"name": "during", "engine": kind})
        assert again.status_code == 201
        assert again.json()["data"]["dbName"].endswith("_2")  # the failed create used no number
        works(again.json()["data"]["connectionString"])
        rotated = call(server, "POST", f"/{first['id']}/rotate").json()["data"]
        refused(first["connectionString"])
        works(rotated["connectionString"])
    finally:
        gate.stop()


def test_a_record_on_a_server_the_emulator_no_longer_has_cannot_rotate(
    real_world: Callable[..., Server], postgres_server: Postgres
) -> None:
    server = real_world()
    made = call(server, "POST", json={"name": "moved", "engine": "postgres"}).json()["data"]
    server.app.emu.config = EmulatorConfig()  # restarted without HEPINFRA_LOCAL_POSTGRES
    answer = call(server, "POST", f"/{made['id']}/rotate")
    assert answer.status_code == 503 and "HEPINFRA_LOCAL_POSTGRES" in answer.json()["error"]
    revealed = call(server, "GET", f"/{made['id']}").json()["data"]
    assert revealed["password"] == made["password"]
    assert revealed["connectionString"] == made["connectionString"]  # still names where it lives
    works(made["connectionString"])


# --- the adapters on their own -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ENGINES)
def test_names_that_need_quoting(kind: str, postgres_server: Postgres, mariadb_server: MariaDB) -> None:
    """The emulator only makes um_<tag>_<n> names; the adapters take any name the server does."""
    engine = open_engine(kind, admin_url(kind, postgres_server, mariadb_server))
    real = postgres_server if kind == "postgres" else mariadb_server
    db_name, user = f"we\"ird `db-1%_{kind}'; --", f"us'er\"`x% {kind}"
    engine.create(db_name, user, NASTY)
    conn: Any
    if kind == "postgres":
        conn = psycopg.connect(host=real.host, port=real.port, user=user, password=NASTY, dbname=db_name)
        conn.execute("CREATE TABLE t (x int)")
    else:
        conn = pymysql.connect(host=real.host, port=real.port, user=user, password=NASTY, database=db_name)
        conn.cursor().execute("CREATE TABLE t (x int)")
    conn.close()
    engine.set_password(user, NASTY[::-1])
    with pytest.raises((psycopg.OperationalError, pymysql.err.OperationalError)):
        (psycopg.connect(host=real.host, port=real.port, user=user, password=NASTY, dbname=db_name)
         if kind == "postgres" else
         pymysql.connect(host=real.host, port=real.port, user=user, password=NASTY, database=db_name))  # fmt: skip


@pytest.mark.parametrize("kind", ENGINES)
def test_create_again_after_a_half_finished_create(
    kind: str, postgres_server: Postgres, mariadb_server: MariaDB
) -> None:
    engine = open_engine(kind, admin_url(kind, postgres_server, mariadb_server))
    real = postgres_server if kind == "postgres" else mariadb_server
    scheme = "postgresql" if kind == "postgres" else "mysql"
    # a role left behind without its database, then a full create: both reused, new password set
    if kind == "postgres":
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute("CREATE ROLE half_user LOGIN PASSWORD 'first-password'")
    else:
        with mariadb_server.connect() as conn, conn.cursor() as cursor:
            cursor.execute("CREATE USER 'half_user'@'%' IDENTIFIED BY 'first-password'")
    engine.create("half_db", "half_user", "second-password")
    engine.create("half_db", "half_user", "third-password")  # and once more, all of it existing
    works(f"{scheme}://half_user:third-password@{real.host}:{real.port}/half_db")
    refused(f"{scheme}://half_user:second-password@{real.host}:{real.port}/half_db")


def test_a_non_superuser_postgres_admin(postgres_server: Postgres) -> None:
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute("CREATE ROLE hep_admin LOGIN CREATEROLE CREATEDB PASSWORD 'admin-password-1'")
    p = postgres_server
    engine = open_engine("postgres", f"postgresql://hep_admin:admin-password-1@{p.host}:{p.port}/postgres")
    engine.create("by_admin", "by_admin_user", "user-password-1")
    works(f"postgresql://by_admin_user:user-password-1@{p.host}:{p.port}/by_admin")
    engine.set_password("by_admin_user", "user-password-2")
    refused(f"postgresql://by_admin_user:user-password-1@{p.host}:{p.port}/by_admin")


@pytest.mark.parametrize("kind", ENGINES)
def test_engine_errors_are_one_line_without_passwords(
    kind: str, postgres_server: Postgres, mariadb_server: MariaDB
) -> None:
    real = postgres_server if kind == "postgres" else mariadb_server
    wrong = admin_url(kind, postgres_server, mariadb_server).replace(real.password, "wrong-admin-pw-77")
    with pytest.raises(EngineError) as caught:
        open_engine(kind, wrong).create("x_db", "x_user", "generated-pw-99")
    message = str(caught.value)
    assert "\n" not in message and "cannot create database x_db" in message
    assert "wrong-admin-pw-77" not in message and "generated-pw-99" not in message
    engine = open_engine(kind, admin_url(kind, postgres_server, mariadb_server))
    with pytest.raises(EngineError) as caught:
        engine.set_password("no_such_user_anywhere", "generated-pw-98")
    assert "generated-pw-98" not in str(caught.value) and real.password not in str(caught.value)
    with pytest.raises(EngineError, match="without NUL"):
        engine.create("bad\x00name", "u", "p")


# --- hepinfra emulator (a process) ----------------------------------------------------------------------


def _run_emulator(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "hepinfra", "emulator", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    record_artifact(f"hepinfra emulator {' '.join(args)}", proc.stdout + proc.stderr)
    return proc


@pytest.mark.parametrize("kind", ENGINES)
def test_the_cli_refuses_a_password_in_argv(kind: str, tmp_path: Path) -> None:
    url = f"{'postgresql' if kind == 'postgres' else 'mysql'}://admin:argv-secret-55@127.0.0.1:1/"
    proc = _run_emulator(["--data", str(tmp_path), f"--{kind}", url], {})
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    var = "HEPINFRA_LOCAL_POSTGRES" if kind == "postgres" else "HEPINFRA_LOCAL_MARIADB"
    assert proc.stderr.startswith(f"Error: --{kind}: a password on the command line") and var in proc.stderr
    assert "argv-secret-55" not in proc.stderr + proc.stdout


def test_the_cli_takes_both_servers_from_the_environment(
    tmp_path: Path, postgres_server: Postgres, mariadb_server: MariaDB
) -> None:
    env = {"HEPINFRA_LOCAL_POSTGRES": postgres_server.url, "MY_MARIA": mariadb_server.url, "EMU_KEY": "cli-key-1"}
    args = ["--data", str(tmp_path / "d"), "--db-key", "env:EMU_KEY", "--mariadb", "env:MY_MARIA"]
    with emulator_process(*args, env=env) as (proc, url):
        assert proc.stdout is not None
        announced = [proc.stdout.readline().strip() for _ in range(2)]
        assert announced == [
            f"postgres databases are real, on the server at {postgres_server.host}:{postgres_server.port}",
            f"mariadb databases are real, on the server at {mariadb_server.host}:{mariadb_server.port}",
        ]
        for kind in ENGINES:
            made = api_at(url, "cli-key-1", "POST", json={"name": f"cli-{kind}", "engine": kind}).json()["data"]
            ISSUED.add(made["password"])
            works(made["connectionString"])
            new = api_at(url, "cli-key-1", "POST", f"/{made['id']}/rotate").json()["data"]
            ISSUED.add(new["password"])
            refused(made["connectionString"])
            works(new["connectionString"])
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        record_artifact("hepinfra emulator with real servers", proc.stdout.read() + proc.stderr.read())


def test_the_cli_names_the_variable_of_a_server_it_cannot_use(
    tmp_path: Path, postgres_server: Postgres, mariadb_server: MariaDB
) -> None:
    bad_pg = postgres_server.url.replace(postgres_server.password, "not-the-pw-31")
    proc = _run_emulator(["--data", str(tmp_path)], {"HEPINFRA_LOCAL_POSTGRES": bad_pg})
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("Error: HEPINFRA_LOCAL_POSTGRES: postgres server 127.0.0.1:")
    assert "password authentication failed" in proc.stderr and "not-the-pw-31" not in proc.stderr
    gone = "mysql://root:gone-pw-32@127.0.0.1:9/"
    proc = _run_emulator(["--data", str(tmp_path), "--mariadb", "env:GONE"], {"GONE": gone})
    assert proc.returncode == 1 and proc.stderr.startswith("Error: --mariadb env:GONE: mariadb server 127.0.0.1:9")
    assert "gone-pw-32" not in proc.stderr
    no_pw = mariadb_server.url_without_password  # accepted in argv; this server wants a password
    proc = _run_emulator(["--data", str(tmp_path), "--mariadb", no_pw], {})
    assert proc.returncode == 1 and proc.stderr.startswith("Error: --mariadb: mariadb server") and "1045" in proc.stderr
    proc = _run_emulator(["--data", str(tmp_path)], {"HEPINFRA_LOCAL_MARIADB": "http://root:pw-33@x/"})
    assert (
        proc.returncode == 1 and "HEPINFRA_LOCAL_MARIADB: the mariadb admin URL must start with mysql://" in proc.stderr
    )
    assert "pw-33" not in proc.stderr


# --- the embedded local hep.gg (url: local) -----------------------------------------------------------------

MANIFEST = """
version: 1
hepgg: {url: local}
environments:
  prod: {}
databases:
  shop:
    engine: postgres
    outputs:
      - dotenv: ".env.{{ env }}"
        keys: {SHOP_DATABASE_URL: "{{ db.connection_string }}"}
  cart:
    engine: mariadb
    outputs:
      - dotenv: ".env.{{ env }}"
        keys: {CART_DATABASE_URL: "{{ db.connection_string }}"}
"""


def _hepinfra(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HEPGG_", "HEPINFRA_LOCAL_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "hepinfra", *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        env={**environ, **env},
    )  # fmt: skip
    record_artifact(f"hepinfra {' '.join(args)}", proc.stdout + proc.stderr)
    return proc


def _dotenv(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    values = {k: v or "" for k, v in dotenv_values(path).items()}
    for url in values.values():
        ISSUED.add(unquote(urlsplit(url).password or ""))
    return values


@pytest.fixture
def local_project(tmp_path: Path) -> Iterator[Path]:
    yield write_project(tmp_path / "p", MANIFEST)


def test_the_embedded_local_hepgg_uses_the_servers_in_the_environment(
    local_project: Path, postgres_server: Postgres, mariadb_server: MariaDB
) -> None:
    env = {"HEPINFRA_LOCAL_POSTGRES": postgres_server.url, "HEPINFRA_LOCAL_MARIADB": mariadb_server.url}
    cwd = local_project.parent
    applied = _hepinfra(["apply", "-f", str(local_project), "--auto-approve"], env, cwd)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    first = _dotenv(cwd / ".env.prod")
    assert urlsplit(first["SHOP_DATABASE_URL"]).port == postgres_server.port
    assert urlsplit(first["CART_DATABASE_URL"]).port == mariadb_server.port
    works(first["SHOP_DATABASE_URL"])
    works(first["CART_DATABASE_URL"])

    for name in ("shop", "cart"):
        rotated = _hepinfra(["rotate", name, "-f", str(local_project), "--auto-approve"], env, cwd)
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    second = _dotenv(cwd / ".env.prod")
    for key in ("SHOP_DATABASE_URL", "CART_DATABASE_URL"):
        assert second[key] != first[key]
        refused(first[key])
        works(second[key])
    plan = _hepinfra(["plan", "-f", str(local_project), "--detailed-exitcode"], env, cwd)
    assert plan.returncode == 0, plan.stdout + plan.stderr


def test_the_embedded_local_hepgg_names_a_bad_variable_without_its_password(
    local_project: Path, postgres_server: Postgres
) -> None:
    bad = postgres_server.url.replace(postgres_server.password, "embedded-wrong-pw-41")
    proc = _hepinfra(["plan", "-f", str(local_project)], {"HEPINFRA_LOCAL_POSTGRES": bad}, local_project.parent)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: HEPINFRA_LOCAL_POSTGRES: postgres server 127.0.0.1:"), proc.stderr
    assert proc.stderr.count("\n") == 1 and "embedded-wrong-pw-41" not in proc.stderr + proc.stdout
