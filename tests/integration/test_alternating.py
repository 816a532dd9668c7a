"""``rotation: {strategy: alternating}`` end to end, against the local hep.gg backed by real PostgreSQL and
MariaDB servers (tests/servers.py), through the CLI.

What the strategy promises, proven with real logins: switching keeps what the hep.gg user owns usable by
both roles and what either role creates usable by the other; a rotation changes the idle role only, the
previous password keeps working until the next rotation (``--revoke``: until its successor is published);
the privilege it needs is checked with a real login and, missing, fails the database in one line with
nothing made and the database still on its single-user credential.
"""

# ruff: noqa: S608  (table names carry a random suffix: the session's servers keep each database)

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pymysql
import pytest
from dotenv import dotenv_values

from hepinfra.state import codec
from tests.cliutil import invoke, write_project
from tests.conftest import HTTP, ISSUED, KEY, Server

MANIFEST = """
version: 1
defaults: {verify: true, rotation: {strategy: alternating}}
environments:
  prod: {}
databases:
  shop:
    engine: postgres
    after_rotate: ["sh", "-c", "echo shop >> hook.log"]
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}", SHOP_USER: "{{ db.user }}", SHOP_PASSWORD: "{{ db.password }}"}
  orders:
    engine: mariadb
    outputs:
      - dotenv: .env
        keys: {ORDERS_URL: "{{ db.connection_string }}", ORDERS_USER: "{{ db.user }}"}
  cache:
    engine: mongo
    outputs:
      - dotenv: .env
        keys: {CACHE_URL: "{{ db.connection_string }}"}
"""
FILES = {".gitignore": ".env\nhook.log\n"}
URLS = {"shop": "SHOP_URL", "orders": "ORDERS_URL"}
STATE_KEY = {"HEPINFRA_STATE_KEY": "alternating roles state key 1"}


def env_of(root: Path) -> dict[str, str]:
    found = {k: v or "" for k, v in dotenv_values(root / ".env").items()}
    ISSUED.update(unquote(urlsplit(u).password or "") for k, u in found.items() if k.endswith("_URL"))
    return found


def login(url: str, sql: str | None = None) -> Any:
    """Log in with exactly what the URL says; run ``sql`` (or SELECT 1) and return its first row."""
    parts = urlsplit(url)
    if parts.scheme == "postgresql":
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            cur = conn.execute(sql or "SELECT 1")
            return cur.fetchone() if cur.description else None
    conn = pymysql.connect(host=parts.hostname, port=parts.port, user=unquote(parts.username or ""),
                           password=unquote(parts.password or ""), database=unquote(parts.path[1:]),
                           connect_timeout=5, autocommit=True)  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute(sql or "SELECT 1")
            return cur.fetchone()
    finally:
        conn.close()


def session(url: str) -> Any:
    """An open connection with exactly what the URL says (psycopg or PyMySQL), left open."""
    parts = urlsplit(url)
    if parts.scheme == "postgresql":
        return psycopg.connect(url, connect_timeout=5, autocommit=True)
    return pymysql.connect(host=parts.hostname, port=parts.port, user=unquote(parts.username or ""),
                           password=unquote(parts.password or ""), database=unquote(parts.path[1:]),
                           connect_timeout=5, read_timeout=5, autocommit=True)  # fmt: skip


def gone(conn: Any) -> bool:
    """Was this open connection ended by the server (SELECT 1 fails)?"""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        return False
    except (psycopg.Error, pymysql.MySQLError):
        return True


def refused(url: str) -> None:
    with pytest.raises((psycopg.OperationalError, pymysql.err.OperationalError)) as caught:
        login(url)
    text = str(caught.value)
    assert (
        "password authentication failed" in text
        or "not permitted to log in" in text
        or "1045" in text
        or ("4151" in text or "locked" in text)
    ), text


def hepgg_url(server: Server, key: str) -> str:
    store = server.app.emu.store
    row = next(r for r in store.list_databases(store.account_of_db_key(KEY) or "") if r["name"] == f"{key}-prod")
    return str(server.app.emu.connection_string(row))


def state_of(root: Path) -> Any:
    return codec.decode((root / ".hepinfra/state/prod.json").read_bytes(), "s")


def test_alternating_switch_rotation_and_revoke_with_real_logins(
    tmp_path: Path, roles_world: Callable[..., Server]
) -> None:
    server = roles_world(role_privilege=True)
    path = write_project(tmp_path, MANIFEST, FILES)
    applied = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=STATE_KEY)
    assert applied.code == 0, applied.out + applied.err
    first = env_of(tmp_path)
    assert first["SHOP_USER"].endswith("_a") and first["ORDERS_USER"].endswith("_a")
    for key, var in URLS.items():
        login(first[var])
        assert urlsplit(first[var]).username != urlsplit(hepgg_url(server, key)).username
    assert "switched to alternating roles" in applied.out, applied.out
    state = state_of(tmp_path)
    assert state.journal == ()
    shop = state.databases["shop"].roles
    assert (
        shop.active == 0
        and shop.group
        and shop.roles[0].ciphertext
        and first["SHOP_PASSWORD"] not in path.parent.joinpath(".hepinfra/state/prod.json").read_text()
    )
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server, env=STATE_KEY).code == 0

    rotated = invoke(["rotate", "-f", str(path), "shop", "orders", "--auto-approve"], server=server, env=STATE_KEY)
    assert rotated.code == 0, rotated.out + rotated.err
    second = env_of(tmp_path)
    assert second["SHOP_USER"].endswith("_b") and second["ORDERS_USER"].endswith("_b")
    for var in URLS.values():
        login(second[var])
        login(first[var])  # the previous role stays valid until the next rotation
    assert (tmp_path / "hook.log").read_text().splitlines() == ["shop", "shop"]

    third = invoke(["rotate", "-f", str(path), "shop", "orders", "--auto-approve"], server=server, env=STATE_KEY)
    assert third.code == 0, third.out + third.err
    now = env_of(tmp_path)
    assert now["SHOP_USER"] == first["SHOP_USER"] and now["SHOP_URL"] != first["SHOP_URL"]
    for var in URLS.values():
        refused(first[var])  # its old password died at the rotation after next
        login(second[var])
        login(now[var])

    held = {var: session(now[var]) for var in URLS.values()}  # a leaked password's holder, still connected
    revoked = invoke(
        ["rotate", "-f", str(path), "shop", "orders", "--revoke", "--auto-approve"], server=server, env=STATE_KEY
    )
    assert revoked.code == 0, revoked.out + revoked.err
    assert f"{now['SHOP_USER']} disabled (--revoke); 1 open session(s) ended" in revoked.out, revoked.out
    # hep.gg's mariadb user may not see or end another user's connections: said, not hidden
    assert (
        f"{now['ORDERS_USER']} disabled (--revoke); sessions already open as it are not ended: that needs the "
        "PROCESS and CONNECTION ADMIN privileges, which hep.gg's user lacks; end them yourself"
    ) in " ".join(revoked.out.split()), revoked.out
    assert gone(held["SHOP_URL"])  # PostgreSQL: the revoked role's session was ended
    assert not gone(held["ORDERS_URL"])  # MariaDB without the privileges: it was not, as the line says
    held["ORDERS_URL"].close()
    last = env_of(tmp_path)
    for var in URLS.values():
        login(last[var])
        refused(now[var])  # disabled at once: a leaked password
    assert state_of(tmp_path).journal == ()
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server, env=STATE_KEY).code == 0


def test_the_managing_credential_rotated_at_hepgg_changes_nothing_and_the_next_rotation_works(
    tmp_path: Path, roles_world: Callable[..., Server]
) -> None:
    """hep.gg's user is only hepinfra's: rotated in the dashboard, no output is owed a change (none
    carries it), consumers keep logging in, and the next rotation logs in with the new one (Reveal)."""
    server = roles_world(role_privilege=True)
    path = write_project(tmp_path, MANIFEST, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve", "--target", "shop", "--target", "orders"],
                  server=server, env=STATE_KEY).code == 0  # fmt: skip
    before = env_of(tmp_path)
    for key in URLS:
        old = hepgg_url(server, key)
        row_id = next(r["id"] for r in server.app.emu.store.list_databases(server.app.emu.store.account_of_db_key(KEY) or "")
                      if r["name"] == f"{key}-prod")  # fmt: skip
        answer = HTTP.post(
            f"{server.url}/api/v1/db/databases/{row_id}/rotate", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert answer.status_code == 200 and hepgg_url(server, key) != old
    plan = invoke(["plan", "-f", str(path), "--detailed-exitcode", "--target", "shop", "--target", "orders"],
                  server=server, env=STATE_KEY)  # fmt: skip
    assert plan.code == 0, plan.out + plan.err
    for var in URLS.values():
        login(before[var])
    rotated = invoke(["rotate", "-f", str(path), "shop", "orders", "--auto-approve"], server=server, env=STATE_KEY)
    assert rotated.code == 0, rotated.out + rotated.err
    after = env_of(tmp_path)
    for var in URLS.values():
        login(after[var])
        login(before[var])  # the previous role, still valid until the next rotation


def test_revoke_ends_a_mariadb_roles_sessions_where_hepggs_user_may(
    tmp_path: Path, roles_world: Callable[..., Server], mariadb_server: Any
) -> None:
    """Given PROCESS and CONNECTION ADMIN (a server that grants them), --revoke ends the MariaDB
    sessions of the role it disables too, as it does in PostgreSQL."""
    server = roles_world(role_privilege=True)
    path = write_project(tmp_path, MANIFEST, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve", "--target", "orders"], server=server,
                  env=STATE_KEY).code == 0  # fmt: skip
    user = urlsplit(hepgg_url(server, "orders")).username
    admin = urlsplit(mariadb_server.url)
    conn = pymysql.connect(host=admin.hostname, port=admin.port, user=unquote(admin.username or ""),
                           password=unquote(admin.password or ""), autocommit=True)  # fmt: skip
    with conn, conn.cursor() as cur:
        for host in ("%", "localhost"):
            cur.execute("GRANT PROCESS, CONNECTION ADMIN ON *.* TO %s@%s", (user, host))
    active = env_of(tmp_path)
    held = [session(active["ORDERS_URL"]), session(active["ORDERS_URL"])]
    revoked = invoke(["rotate", "-f", str(path), "orders", "--revoke", "--auto-approve"], server=server, env=STATE_KEY)
    assert revoked.code == 0, revoked.out + revoked.err
    assert f"{active['ORDERS_USER']} disabled (--revoke); 2 open session(s) ended" in revoked.out, revoked.out
    assert all(gone(conn) for conn in held)
    refused(active["ORDERS_URL"])
    login(env_of(tmp_path)["ORDERS_URL"])


SINGLE = MANIFEST.replace("defaults: {verify: true, rotation: {strategy: alternating}}", "defaults: {verify: true}")


def roles_on_server(postgres_server: Any, mariadb_server: Any) -> set[str]:
    """Every role or user on the two servers whose name ends like one of hepinfra's."""
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        found = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname ~ '_(a|b|g)$'")}
    admin = urlsplit(mariadb_server.url)
    conn = pymysql.connect(host=admin.hostname, port=admin.port, user=unquote(admin.username or ""),
                           password=unquote(admin.password or ""))  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT user FROM mysql.user WHERE user REGEXP '_(a|b)$'")
            found |= {r[0] for r in cur.fetchall()}
    finally:
        conn.close()
    return found


def test_the_privilege_missing_is_one_line_nothing_made_and_the_database_stays_single(
    tmp_path: Path, roles_world: Callable[..., Server], postgres_server: Any, mariadb_server: Any
) -> None:
    server = roles_world()  # the emulator's switch withholds the privilege (its default)
    path = write_project(tmp_path, SINGLE, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=STATE_KEY).code == 0
    single = env_of(tmp_path)
    before = roles_on_server(postgres_server, mariadb_server)
    path.write_text(path.read_text().replace("defaults: {verify: true}", MANIFEST.split("\n")[2]))
    switched = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=STATE_KEY)
    assert switched.code == 1
    lines = [line for line in switched.out.splitlines() if line.startswith("   ! ")]
    assert sorted(lines) == [
        "   ! prod/databases.orders: rotate failed: rotation: alternating needs the CREATE USER privilege, which "
        "hep.gg's user of 'orders-prod' lacks on its server; nothing was created: the database stays on its "
        "single-user credential (hint: ask for the privilege, or keep rotation: single (see "
        "docs/rotation-strategies.md))",
        "   ! prod/databases.shop: rotate failed: rotation: alternating needs the CREATEROLE privilege, which hep.gg's "
        "user of 'shop-prod' lacks on its server; nothing was created: the database stays on its single-user "
        "credential (hint: ask for the privilege, or keep rotation: single (see docs/rotation-strategies.md))",
    ], switched.out
    assert "Traceback" not in switched.out + switched.err
    assert roles_on_server(postgres_server, mariadb_server) == before  # nothing made
    assert env_of(tmp_path) == single  # still the hep.gg user's credential
    for key, var in URLS.items():
        assert single[var] == hepgg_url(server, key)
        login(single[var])
    state = state_of(tmp_path)
    assert state.journal == () and all(db.roles is None for db in state.databases.values())
    assert state.crypto is None or not state.sealed()


SERIAL = {"postgres": "id serial PRIMARY KEY", "mariadb": "id INT AUTO_INCREMENT PRIMARY KEY"}


def test_switching_keeps_the_hepgg_users_objects_and_either_roles_objects_usable_by_both(
    tmp_path: Path, roles_world: Callable[..., Server]
) -> None:
    server = roles_world(role_privilege=True)
    path = write_project(tmp_path, SINGLE, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=STATE_KEY).code == 0
    engines = {"shop": "postgres", "orders": "mariadb"}
    run = secrets.token_hex(3)  # the session's servers keep each database: this test's own tables
    for key, engine in engines.items():  # objects the hep.gg user owns before the switch
        owner = hepgg_url(server, key)
        login(owner, f"CREATE TABLE t_old_{run} ({SERIAL[engine]}, v VARCHAR(20))")
        login(owner, f"INSERT INTO t_old_{run} (v) VALUES ('hepgg')")
    path.write_text(MANIFEST)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=STATE_KEY).code == 0
    first = env_of(tmp_path)
    for key, engine in engines.items():
        a = first[URLS[key]]
        assert login(a, f"SELECT v FROM t_old_{run}") == ("hepgg",)
        login(a, f"INSERT INTO t_old_{run} (v) VALUES ('a')")
        login(a, f"UPDATE t_old_{run} SET v = 'hepgg2' WHERE v = 'hepgg'")
        login(a, f"CREATE TABLE t_a_{run} ({SERIAL[engine]}, v VARCHAR(20))")
        login(a, f"INSERT INTO t_a_{run} (v) VALUES ('a')")
    assert (
        invoke(["rotate", "-f", str(path), "shop", "orders", "--auto-approve"], server=server, env=STATE_KEY).code == 0
    )
    second = env_of(tmp_path)
    for key, engine in engines.items():
        a, b = first[URLS[key]], second[URLS[key]]
        assert urlsplit(a).username != urlsplit(b).username
        assert login(b, f"SELECT count(*) FROM t_old_{run}")[0] == 2
        login(b, f"DELETE FROM t_old_{run} WHERE v = 'a'")
        assert login(b, f"SELECT v FROM t_a_{run}") == ("a",)
        login(b, f"INSERT INTO t_a_{run} (v) VALUES ('b')")
        login(b, f"ALTER TABLE t_a_{run} ADD COLUMN w INT")  # the table's owner's right: the group owns it
        login(b, f"CREATE TABLE t_b_{run} ({SERIAL[engine]}, v VARCHAR(20))")
        login(b, f"INSERT INTO t_b_{run} (v) VALUES ('b')")
        login(a, f"INSERT INTO t_b_{run} (v) VALUES ('a')")  # the previous role still logs in, and uses b's table
        login(a, f"ALTER TABLE t_b_{run} ADD COLUMN w INT")
        assert (
            login(a, f"SELECT count(*) FROM t_b_{run}")[0] == 2 and login(a, f"SELECT count(*) FROM t_a_{run}")[0] == 2
        )
        if engine == "postgres":
            owners = login(
                b,
                f"SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE tablename IN ('t_a_{run}', 't_b_{run}')",
            )
            assert owners[0].endswith("_g"), owners


ROTATIONS = 8


@pytest.mark.parametrize(("key", "variable"), list(URLS.items()))
def test_alternating_rotations_fail_no_consumer_and_keep_the_long_lived_connection(
    tmp_path: Path, roles_world: Callable[..., Server], key: str, variable: str
) -> None:
    """The consumer probe (bench/probe.py): a new connection every 10 ms with the credential the .env holds
    at that moment, and one long-lived connection, across alternating rotations (the single strategy's
    rotation fails such consumers: tests/integration/test_outage.py)."""
    from bench.probe import Probe, from_dotenv

    server = roles_world(role_privilege=True)
    path = write_project(tmp_path, MANIFEST, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=STATE_KEY).code == 0
    probe = Probe(from_dotenv(tmp_path / ".env", variable), workers=2).start()
    try:
        probe.wait(successes=3)
        marks = []
        for _ in range(ROTATIONS):
            marks.append(probe.mark())
            rotated = invoke(["rotate", "-f", str(path), key, "--auto-approve"], server=server, env=STATE_KEY)
            assert rotated.code == 0, rotated.out + rotated.err
            probe.wait(successes=3)
    finally:
        whole = probe.stop()
    ends: list[float | None] = [*marks[1:], None]
    reports = [probe.report(since=a, until=b) for a, b in zip(marks, ends, strict=True)]
    assert all(r.attempts > 0 for r in reports)
    assert whole.failures == 0 and whole.outage_ms == 0, whole.errors
    assert whole.held_drops == 0 and whole.held_failures == 0 and whole.held_queries > 0, whole
    env_of(tmp_path)


def test_output_shows_the_active_role_state_rekey_reseals_the_roles_and_switching_back_is_refused(
    tmp_path: Path, roles_world: Callable[..., Server]
) -> None:
    server = roles_world(role_privilege=True)
    path = write_project(tmp_path, MANIFEST, FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=STATE_KEY).code == 0
    shown = invoke(["output", "prod/databases.shop", "-f", str(path), "--format", "json"], server=server, env=STATE_KEY,
                   secret_ok=True)  # fmt: skip
    assert shown.code == 0, shown.out + shown.err
    values = json.loads(shown.out)
    assert env_of(tmp_path)["SHOP_URL"] in values.values(), list(values)  # the active role's
    new_key = {
        "HEPINFRA_STATE_KEY": "alternating roles state key 2",
        "HEPINFRA_STATE_KEY_OLD": STATE_KEY["HEPINFRA_STATE_KEY"],
    }
    rekeyed = invoke(["state", "rekey", "-f", str(path)], server=server, env=new_key)
    assert rekeyed.code == 0, rekeyed.out + rekeyed.err
    before = env_of(tmp_path)
    rotated = invoke(["rotate", "-f", str(path), "shop", "orders", "--auto-approve"], server=server,
                     env={"HEPINFRA_STATE_KEY": new_key["HEPINFRA_STATE_KEY"]})  # fmt: skip
    assert rotated.code == 0, rotated.out + rotated.err
    for var in URLS.values():
        login(env_of(tmp_path)[var])
        login(before[var])
    wrong = invoke(["plan", "-f", str(path)], server=server, env=STATE_KEY)  # the old key opens nothing now
    assert wrong.code == 1 and "HEPINFRA_STATE_KEY is not the key" in wrong.err, wrong.out + wrong.err
    path.write_text(MANIFEST.replace("strategy: alternating", "strategy: single"))
    back = invoke(["plan", "-f", str(path)], server=server, env={"HEPINFRA_STATE_KEY": new_key["HEPINFRA_STATE_KEY"]})
    assert back.code == 1 and "rotation: single on a database that uses alternating roles" in back.out + back.err
