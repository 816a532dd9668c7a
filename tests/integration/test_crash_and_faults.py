"""Crash safety and fault tolerance of apply, end to end.

A real ``hepinfra apply`` process is SIGKILLed at every remote-call boundary (just before a
request leaves, just after its answer arrives: HEPINFRA_TEST_KILL_AT) and at random moments;
one plain apply afterwards must converge: no duplicate or lost database, no double rotation,
every output holding the current password, no temp file left, a valid state, a clean plan.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from dotenv import dotenv_values

from hepinfra.emulator.app import EmulatorConfig, Faults
from hepinfra.fsutil import TMP_PREFIX
from hepinfra.state import codec
from hepinfra.state.local import LocalBackend
from tests.cliutil import invoke, write_project
from tests.conftest import ENV, HTTP, KEY, Server, record_artifact

pytestmark = pytest.mark.slow

COUNT = 20
NAMES = [f"db{i:02d}" for i in range(COUNT)]
MANIFEST = "version: 1\nenvironments: {prod: {}}\ndatabases:\n" + "".join(
    f"""  {name}:
    engine: {("mariadb", "postgres", "mongo")[i % 3]}
    rotate_every: 30d
    outputs:
      - dotenv: .env
        keys: {{{name.upper()}_URL: "{{{{ db.connection_string }}}}"}}
      - template: conn.json.j2
        path: "out/{name}.json"
"""
    for i, name in enumerate(NAMES)
)
FILES = {"conn.json.j2": '{"url": {{ db.connection_string | json }}, "password": {{ db.password | json }}}\n'}


def project_for(root: Path) -> Path:
    return write_project(root, MANIFEST, FILES)


def kill_run(
    project: Path,
    server: Server,
    *,
    kill_at: str | None = None,
    kill_after: float | None = None,
    args: tuple[str, ...] = (),
) -> int:
    env = {**os.environ, **ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url}
    if kill_at:
        env["HEPINFRA_TEST_KILL_AT"] = kill_at
    proc = subprocess.Popen(
        [sys.executable, "-m", "hepinfra", "apply", "-f", str(project), "--auto-approve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    record_artifact(f"killed apply {kill_at or kill_after}", out + err)
    return proc.returncode


def account_rows(server: Server) -> list:  # type: ignore[type-arg]
    store = server.app.emu.store
    return store.list_databases(store.account_of_db_key(KEY) or "")


def assert_converged(
    project: Path,
    server: Server,
    *,
    rotations: int | None = None,
    old_passwords: dict[str, str] | None = None,
    real: bool = False,
) -> None:
    """One plain apply converges, and everything the issue lists holds. ``real``: postgres and
    mariadb databases live on real servers: each output's URL logs in, each old password is refused."""
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 0, result.out + result.err
    rows = account_rows(server)
    names = [r["name"] for r in rows]
    assert sorted(names) == sorted(f"{n}-prod" for n in NAMES), "a database was lost or duplicated"
    state = LocalBackend(project.parent / ".hepinfra/state").read("prod")
    assert state is not None and state.journal == ()
    assert {k: v.id for k, v in state.databases.items()} == {r["name"][:-5]: r["id"] for r in rows}
    env = dotenv_values(project.parent / ".env")
    for row in rows:
        key = row["name"][:-5]
        current = server.app.emu.connection_string(row)
        assert env[f"{key.upper()}_URL"] == current
        assert json.loads((project.parent / f"out/{key}.json").read_text()) == {
            "url": current,
            "password": row["password"],
        }
        if rotations is not None:
            assert row["rotations"] == rotations, f"{key} rotated {row['rotations']} times"
        if old_passwords is not None:
            assert not server.password_valid(row["db_user"], old_passwords[key])
        if real and row["engine"] != "mongo":
            from tests.integration.test_verify_hooks import connect, refused

            connect(current)
            if old_passwords is not None and rotations:
                refused(current.replace(quote(row["password"], safe=""), quote(old_passwords[key], safe=""), 1))
    temps = [p for p in project.parent.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert temps == []
    plan = invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server)
    assert plan.code == 0, plan.out


def age_state(project: Path) -> None:
    path = project.parent / ".hepinfra/state/prod.json"
    state = codec.decode(path.read_bytes(), str(path))
    old = datetime.now(UTC) - timedelta(days=45)
    databases = {k: v.model_copy(update={"rotated_at": old}) for k, v in state.databases.items()}
    path.write_bytes(codec.encode(state.model_copy(update={"databases": databases})))


def passwords(server: Server) -> dict[str, str]:
    return {r["name"][:-5]: r["password"] for r in account_rows(server)}


CALLS = COUNT + 1  # one List, then one POST per database
BOUNDARIES = [f"{moment}:{n}" for n in range(1, CALLS + 1) for moment in ("before", "after")]


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_create_killed_at_every_call_boundary_converges(
    boundary: str, make_world: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_world(EmulatorConfig())
    project = project_for(tmp_path / "p")
    assert kill_run(project, server, kill_at=boundary) == -signal.SIGKILL
    assert_converged(project, server, rotations=0)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_rotation_killed_at_every_call_boundary_converges(
    boundary: str, make_world: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_world(EmulatorConfig())
    project = project_for(tmp_path / "p")
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    age_state(project)  # every database is now due: one List, then one rotate each
    before = passwords(server)
    assert kill_run(project, server, kill_at=boundary) == -signal.SIGKILL
    assert_converged(project, server, rotations=1, old_passwords=before)


@pytest.mark.parametrize("seed", range(50))
def test_apply_killed_at_random_moments_converges(seed: int, make_world: Callable[..., Server], tmp_path: Path) -> None:
    rng = random.Random(seed)
    server = make_world(EmulatorConfig(faults=Faults(latency_ms=15, jitter_ms=10)))
    project = project_for(tmp_path / "p")
    rotating = seed % 2 == 1
    before = None
    if rotating:
        assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
        age_state(project)
        before = passwords(server)
    kill_run(project, server, kill_after=rng.uniform(0.3, 1.2), args=("--parallelism", "4"))
    assert_converged(project, server, rotations=1 if rotating else 0, old_passwords=before)


def apply_until_clean(project: Path, server: Server, runs: int = 6) -> int:
    """Apply through a faulty hep.gg until a plan says nothing is left; the number of applies."""
    for attempt in range(1, runs + 1):
        invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
        if invoke(["plan", "-f", str(project), "--detailed-exitcode", "--no-refresh"], server=server).code == 0:
            return attempt
    raise AssertionError(f"apply did not converge in {runs} runs")


def test_apply_converges_through_a_faulty_hepgg(make_world: Callable[..., Server], tmp_path: Path) -> None:
    """--fail-rate 0.2 mixing 5xx, 429 and drops before and after commit: no duplicate, no double rotation."""
    server = make_world(EmulatorConfig(faults=Faults(fail_rate=0.2, retry_after=0), seed=7))
    project = project_for(tmp_path / "p")
    apply_until_clean(project, server)
    age_state(project)
    before = passwords(server)
    apply_until_clean(project, server)
    faults = [r["fault"] for r in server.requests() if r["fault"]]
    assert {"500", "502", "503", "429", "drop-before", "drop-after"} <= set(faults), faults
    server.faults(fail_rate=0)
    assert_converged(project, server, rotations=1, old_passwords=before)


def test_kill_hook_really_kills() -> None:
    """The boundary hook is what the tests above rely on: prove it fires at the named call."""
    env = {**os.environ, "HEPINFRA_TEST_KILL_AT": "before:1", "HEPGG_URL": "http://127.0.0.1:9", "HEPGG_DB_KEY": "k"}
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio\nfrom hepinfra.hepgg import Hepgg\n"
            "async def m():\n    async with Hepgg.from_env() as h:\n        await h.databases().list()\n"
            "asyncio.run(m())",
        ],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - started < 30


def test_sigterm_unwinds_releases_the_lock_and_the_next_apply_converges(
    make_world: Callable[..., Server], tmp_path: Path
) -> None:
    """A cancelled CI job gets SIGTERM: apply stops cleanly (exit 1, one line, lock released)."""
    server = make_world(EmulatorConfig(faults=Faults(latency_ms=100)))
    project = project_for(tmp_path / "p")
    env = {**os.environ, **ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hepinfra", "apply", "-f", str(project), "--auto-approve", "--parallelism", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not [r for r in server.requests() if r["method"] == "POST"] and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    record_artifact("sigterm apply", out + err)
    assert proc.returncode == 1, err
    assert err.startswith("Error: terminated by SIGTERM: ") and err.count("\n") == 1
    assert "not started" in err and "in flight" in err
    assert not (project.parent / ".hepinfra/state/prod.lock").exists()
    assert_converged(project, server, rotations=0)


# --- the same with real servers behind the local hep.gg ------------------------------------------------


@pytest.fixture
def real_world(make_world: Callable[..., Server], postgres_server: Any, mariadb_server: Any) -> Callable[..., Server]:
    """A local hep.gg whose postgres and mariadb databases are real (mongo stays simulated)."""
    from hepinfra.emulator.engines import open_engine

    def build(**config: Any) -> Server:
        servers = {"postgres": open_engine("postgres", postgres_server.url),
                   "mariadb": open_engine("mariadb", mariadb_server.url)}  # fmt: skip
        return make_world(EmulatorConfig(servers=servers, **config))

    return build


@pytest.mark.parametrize("boundary", ["after:1", "before:9", "after:9", f"after:{CALLS}"])
def test_real_engines_create_killed_at_call_boundaries_converges(
    boundary: str, real_world: Callable[..., Server], tmp_path: Path
) -> None:
    server = real_world()
    project = project_for(tmp_path / "p")
    assert kill_run(project, server, kill_at=boundary) == -signal.SIGKILL
    assert_converged(project, server, rotations=0, real=True)


@pytest.mark.parametrize("boundary", ["before:3", "after:3", "after:20", f"after:{2 * COUNT + 1}"])
def test_real_engines_rotation_killed_at_call_boundaries_converges(
    boundary: str, real_world: Callable[..., Server], tmp_path: Path
) -> None:
    server = real_world()
    project = project_for(tmp_path / "p")
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    age_state(project)  # one List, then a Reveal and a rotate per database
    before = passwords(server)
    assert kill_run(project, server, kill_at=boundary, args=("--parallelism", "1")) == -signal.SIGKILL
    assert_converged(project, server, rotations=1, old_passwords=before, real=True)


@pytest.mark.parametrize("seed", range(4))
def test_real_engines_apply_killed_at_random_moments_converges(
    seed: int, real_world: Callable[..., Server], tmp_path: Path
) -> None:
    rng = random.Random(seed)
    server = real_world(faults=Faults(latency_ms=15, jitter_ms=10))
    project = project_for(tmp_path / "p")
    rotating = seed % 2 == 1
    before = None
    if rotating:
        assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
        age_state(project)
        before = passwords(server)
    kill_run(project, server, kill_after=rng.uniform(0.3, 1.2), args=("--parallelism", "4"))
    assert_converged(project, server, rotations=1 if rotating else 0, old_passwords=before, real=True)


def test_real_engines_converge_through_a_faulty_hepgg(real_world: Callable[..., Server], tmp_path: Path) -> None:
    server = real_world(faults=Faults(fail_rate=0.2, retry_after=0), seed=7)
    project = project_for(tmp_path / "p")
    apply_until_clean(project, server)
    age_state(project)
    before = passwords(server)
    apply_until_clean(project, server)
    server.faults(fail_rate=0)
    assert_converged(project, server, rotations=1, old_passwords=before, real=True)


# --- a create that lands late (its answer came, or not, but List does not show it yet) ---------------

ONE = """version: 1
environments: {prod: {}}
databases:
  shop:
    engine: postgres
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
"""


def _post_create(server: Server, name: str, engine: str) -> None:
    answer = HTTP.post(f"{server.url}/api/v1/db/databases", json={"name": name, "engine": engine},
                        headers={"Authorization": f"Bearer {KEY}"}, timeout=30)  # fmt: skip
    assert answer.status_code == 201, answer.text


def test_a_killed_runs_create_that_lands_late_is_settled_by_name_not_a_409(
    make_world: Callable[..., Server], tmp_path: Path
) -> None:
    """Killed right after its create was answered; the next apply's List does not show the database
    yet (list_lag_ms), so it plans + create and meets 409: it lists again until the name shows and
    takes it as its own create, never a failure, never a second database, never a rotation."""
    server = make_world(EmulatorConfig(faults=Faults(list_lag_ms=6000)))
    project = write_project(tmp_path / "p", ONE)
    assert kill_run(project, server, kill_at="after:2") == -signal.SIGKILL
    journal = LocalBackend(project.parent / ".hepinfra/state").read("prod")
    assert journal is not None and [j.op for j in journal.journal] == ["create"] and not journal.databases
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 0, result.out + result.err
    assert "created by an interrupted earlier run (its create landed late: 409, found by name)" in result.out
    rows = account_rows(server)
    assert [(r["name"], r["rotations"]) for r in rows] == [("shop-prod", 0)]
    state = LocalBackend(project.parent / ".hepinfra/state").read("prod")
    assert state is not None and state.journal == () and state.databases["shop"].id == rows[0]["id"]
    assert not state.databases["shop"].adopted
    assert dotenv_values(project.parent / ".env")["SHOP_URL"] == server.app.emu.connection_string(rows[0])
    server.faults(list_lag_ms=0)
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server).code == 0


def test_a_name_created_elsewhere_after_the_plan_is_adopted_not_a_409(
    make_world: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_world(EmulatorConfig(faults=Faults(list_lag_ms=3000)))
    project = write_project(tmp_path / "p", ONE)
    _post_create(server, "shop-prod", "postgres")
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 0, result.out + result.err
    assert "adopted (the name was created after the plan: 409, found by name)" in result.out
    state = LocalBackend(project.parent / ".hepinfra/state").read("prod")
    assert state is not None and state.databases["shop"].adopted and state.databases["shop"].rotated_at is None
    assert [r["rotations"] for r in account_rows(server)] == [0]


def test_a_name_taken_late_by_another_engine_is_refused_and_nothing_is_written(
    make_world: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_world(EmulatorConfig(faults=Faults(list_lag_ms=3000)))
    project = write_project(tmp_path / "p", ONE)
    _post_create(server, "shop-prod", "mariadb")
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 1
    assert "'shop-prod' is taken by a mariadb database, not postgres; nothing was written" in result.out
    assert not (project.parent / ".env").exists()
    state = LocalBackend(project.parent / ".hepinfra/state").read("prod")
    assert state is None or "shop" not in state.databases
