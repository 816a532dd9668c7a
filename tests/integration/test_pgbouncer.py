"""The pgbouncer output: rotation without outage, proved by the consumer probe (bench/probe.py).

The local hep.gg is backed by a real PostgreSQL cluster; Debian's PgBouncer (tests/servers.py) runs
in session or transaction pooling and %include-s the file the output writes; consumers log in to
PgBouncer with a credential of their own. Every rotation: PAUSE -> hep.gg's rotate -> file ->
RELOAD -> RECONNECT -> RESUME. The probe opens a new connection every 10 ms through PgBouncer and
holds one running SELECT 1: none fails, the held one never drops. A run SIGKILLed at any step of
the cut-over converges on the next apply: PgBouncer not paused, the file holds the live password,
a client connects.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.probe import Probe, from_url
from hepinfra.emulator.app import EmulatorConfig
from hepinfra.emulator.engines import open_engine
from hepinfra.state import codec
from tests.cliutil import invoke, write_project
from tests.conftest import ENV, HTTP, KEY, Server, record_artifact
from tests.integration.test_outage import per_rotation
from tests.servers import PgBouncer, Postgres

MANIFEST = """
version: 1
environments:
  prod: {}
databases:
  shop:
    engine: postgres
    outputs:
      - pgbouncer: deploy/pgbouncer/databases.ini
        database: shop
        admin_url_env: PGBOUNCER_ADMIN_URL
"""
FILE = "deploy/pgbouncer/databases.ini"
TRICKY = "aZ9$'\"#\\@:/% `!&;<>|*?~=,{}()[]^"


@pytest.fixture
def pg_world(make_world: Callable[[EmulatorConfig], Server], postgres_server: Postgres) -> Callable[..., Server]:
    def build(**config: Any) -> Server:
        return make_world(EmulatorConfig(servers={"postgres": open_engine("postgres", postgres_server.url)}, **config))

    return build


def started(
    tmp_path: Path, server: Server, pgbouncer_server: Any, mode: str, **settings: str
) -> tuple[Path, PgBouncer, dict[str, str]]:
    path = write_project(tmp_path, MANIFEST, {".gitignore": "deploy/\n"})
    bouncer: PgBouncer = pgbouncer_server(tmp_path / FILE, mode, **settings)
    env = {"PGBOUNCER_ADMIN_URL": bouncer.admin_url}
    applied = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=env)
    assert applied.code == 0, applied.out + applied.err
    return path, bouncer, env


def live_password_in_file(server: Server, root: Path) -> bool:
    """The file's password is the one hep.gg (and so PostgreSQL) takes now."""
    line = next(ln for ln in (root / FILE).read_text().splitlines() if ln.startswith("shop ="))
    fields = dict(part.split("=", 1) for part in line.split(" = ", 1)[1].split(" ", 4))
    password = fields["password"][1:-1].replace("''", "'")
    return server.password_valid(fields["user"][1:-1], password)


def connects(bouncer: PgBouncer) -> None:
    with psycopg.connect(bouncer.url("shop"), connect_timeout=5, autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_rotations_through_pgbouncer_fail_no_connection_and_never_drop_the_held_one(
    tmp_path: Path, pg_world: Callable[..., Server], pgbouncer_server: Any, mode: str
) -> None:
    server = pg_world()
    path, bouncer, env = started(tmp_path, server, pgbouncer_server, mode)
    assert stat.S_IMODE(os.stat(tmp_path / FILE).st_mode) == 0o600
    probe = Probe(from_url(bouncer.url("shop")), workers=2).start()
    try:
        probe.wait(successes=3)
        marks = []
        for _ in range(4):
            marks.append(probe.mark())
            rotated = invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server, env=env)
            assert rotated.code == 0, rotated.out + rotated.err
            probe.wait(successes=3)
    finally:
        whole = probe.stop()
    reports = per_rotation(probe, marks)
    assert [r.failures for r in reports] == [0, 0, 0, 0], whole
    assert all(r.attempts > 0 for r in reports)  # the probe did connect during every rotation
    assert whole.failures == 0 and whole.held_failures == 0 and whole.held_drops == 0, whole
    assert whole.held_queries > 0
    assert live_password_in_file(server, tmp_path)
    row = bouncer.database("shop")
    assert row is not None and row["paused"] == 0
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server, env=env).code == 0


def test_a_rotation_pgbouncer_is_not_cut_over_for_fails_the_same_probe(
    tmp_path: Path, pg_world: Callable[..., Server], pgbouncer_server: Any
) -> None:
    """The control: the same PgBouncer and probe, the password rotated at hep.gg behind hepinfra's
    back (as in the dashboard) and PgBouncer's old server connections retired: new server logins use
    the file's dead password and consumers fail, until an apply writes the file and cuts over.

    How they fail is PgBouncer's choice: at once ("server login has been failing") when the pool has
    no server left, or, when a server connection outlived the RECONNECT for a moment, by waiting for
    one until ``query_wait_timeout`` (120 s by default, which outlasted this test's wait in CI): the
    control's PgBouncer sets it to 2 s, as docs/pgbouncer.md advises, so either way is a failure (and
    ``server_login_retry`` to 1 s: after the cut-over, the next login is tried within a second, not 15)."""

    server = pg_world()
    path, bouncer, env = started(tmp_path, server, pgbouncer_server, "transaction", query_wait_timeout="2",
                                 server_login_retry="1")  # fmt: skip
    probe = Probe(from_url(bouncer.url("shop")), workers=2).start()
    try:
        probe.wait(successes=3)
        mark = probe.mark()
        db_id = rows(server)[0]["id"]
        answer = HTTP.post(
            f"{server.url}/api/v1/db/databases/{db_id}/rotate", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert answer.status_code == 200
        with psycopg.connect(bouncer.admin_url, autocommit=True) as admin:
            admin.execute("RECONNECT shop")
        deadline = time.monotonic() + 20
        while probe.report(since=mark).failures == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert probe.report(since=mark).failures > 0, "no consumer failed before the apply"
        applied = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=env)
        assert applied.code == 0, applied.out + applied.err
        probe.wait(successes=3)
    finally:
        whole = probe.stop()
    assert probe.report(since=mark).failures > 0, whole
    assert live_password_in_file(server, tmp_path)


def rows(server: Server) -> list[Any]:
    store = server.app.emu.store
    return list(store.list_databases(store.account_of_db_key(KEY) or ""))


STEPS = ["step:paused", "before:3", "after:3", "step:outputs", "step:reload", "step:resume"]


@pytest.mark.parametrize("point", STEPS)
def test_a_cut_over_killed_at_any_step_converges_on_the_next_apply(
    point: str, tmp_path: Path, pg_world: Callable[..., Server], pgbouncer_server: Any
) -> None:
    """intent -> PAUSE (step:paused) -> rotate (HTTP call 3: List, Reveal, Rotate) -> file (step:outputs
    before it) -> RELOAD (step:reload before it) -> RECONNECT -> RESUME (step:resume before it)."""
    server = pg_world()
    path, bouncer, env = started(tmp_path, server, pgbouncer_server, "session")
    connects(bouncer)
    run_env = {**os.environ, **ENV, **env, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url,
               "HEPINFRA_TEST_KILL_AT": point}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "hepinfra", "rotate", "-f", str(path), "shop", "--auto-approve"],
                          env=run_env, capture_output=True, text=True, timeout=120)  # fmt: skip
    record_artifact(f"pgbouncer rotate killed at {point}", proc.stdout + proc.stderr)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    row = bouncer.database("shop")
    assert row is not None and row["paused"] == 1, "the kill came after PAUSE: PgBouncer is left paused"
    resumed = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=env)
    assert resumed.code == 0, resumed.out + resumed.err
    row = bouncer.database("shop")
    assert row is not None and row["paused"] == 0
    assert live_password_in_file(server, tmp_path)
    connects(bouncer)
    rotations = {r["name"]: r["rotations"] for r in rows(server)}
    assert rotations["shop-prod"] == 1, "rotated twice (or lost the rotation)"
    state = codec.decode((tmp_path / ".hepinfra/state/prod.json").read_bytes(), "s")
    assert state.journal == ()
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server, env=env).code == 0


def test_a_password_of_quoting_characters_reaches_postgres_through_pgbouncer(
    tmp_path: Path, pg_world: Callable[..., Server], pgbouncer_server: Any
) -> None:
    server = pg_world(password_chars=TRICKY)
    path, bouncer, env = started(tmp_path, server, pgbouncer_server, "transaction")
    connects(bouncer)
    rotated = invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server, env=env)
    assert rotated.code == 0, rotated.out + rotated.err
    connects(bouncer)
    assert live_password_in_file(server, tmp_path)


def test_pgbouncer_unreachable_refuses_the_rotation_before_it_starts(
    tmp_path: Path, pg_world: Callable[..., Server], pgbouncer_server: Any
) -> None:
    server = pg_world()
    path, bouncer, _ = started(tmp_path, server, pgbouncer_server, "transaction")
    before = (tmp_path / FILE).read_bytes()
    dead = {"PGBOUNCER_ADMIN_URL": bouncer.admin_url.replace(f":{bouncer.port}/", ":1/")}
    failed = invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server, env=dead)
    text = failed.out + failed.err
    assert failed.code == 1, text
    assert "cannot hold its consumers for the rotation" in text and "nothing was rotated" in text, text
    assert "cannot reach PgBouncer's admin console at 127.0.0.1:1" in text, text
    assert bouncer.users["pgb_admin"] not in text and "Traceback" not in text
    assert (tmp_path / FILE).read_bytes() == before
    assert {r["name"]: r["rotations"] for r in rows(server)} == {"shop-prod": 0}
    state = codec.decode((tmp_path / ".hepinfra/state/prod.json").read_bytes(), "s")
    assert state.journal == ()
    connects(bouncer)


def test_a_rotate_hepgg_refuses_resumes_pgbouncer_at_once(
    tmp_path: Path, pg_world: Callable[..., Server], pgbouncer_server: Any, postgres_server: Postgres
) -> None:
    """PAUSE, then hep.gg refuses the rotate (503: its server cannot change the role, renamed away for
    the test): Reveal shows the old password still works, so PgBouncer is resumed as it was."""
    from psycopg import sql

    server = pg_world()
    path, bouncer, env = started(tmp_path, server, pgbouncer_server, "session")
    before = (tmp_path / FILE).read_bytes()
    user = rows(server)[0]["db_user"]
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(user), sql.Identifier(user + "_x")))
        try:
            failed = invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server, env=env)
            row = bouncer.database("shop")
        finally:
            admin.execute(
                sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(user + "_x"), sql.Identifier(user))
            )
    assert failed.code == 1, failed.out + failed.err
    assert row is not None and row["paused"] == 0, failed.out + failed.err
    assert {r["name"]: r["rotations"] for r in rows(server)} == {"shop-prod": 0}
    assert (tmp_path / FILE).read_bytes() == before and live_password_in_file(server, tmp_path)
    connects(bouncer)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("engine: postgres", "engine: mariadb", "a pgbouncer output serves postgres databases only (this one is mariadb)"),
        ("admin_url_env: PGBOUNCER_ADMIN_URL", "admin_url_env: HEPGG_DB_KEY",
         "admin_url_env: HEPGG_DB_KEY is a credential hepinfra reads (hepinfra's own)"),
        ("database: shop", "database: 'shop prod'", "database: must be letters, digits"),
        ("admin_url_env: PGBOUNCER_ADMIN_URL", "admin_url_env: PGBOUNCER_ADMIN_URL\n    after_rotate: [\"true\"]\n"
         "    after_rotate_pass_env: [PGBOUNCER_ADMIN_URL]",
         "PGBOUNCER_ADMIN_URL is a credential hepinfra reads (databases.shop.outputs[0].admin_url_env)"),
    ],
)  # fmt: skip
def test_validate_catches_bad_pgbouncer_outputs(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = write_project(tmp_path, MANIFEST.replace(old, new), {".gitignore": "deploy/\n"})
    result = invoke(["validate", "-f", str(path)])
    assert result.code == 1 and message in result.err and len(result.err.strip().splitlines()) == 1, result.err
