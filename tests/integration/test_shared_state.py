"""Shared state end to end, through the real CLI: S3 (moto in server mode) and PostgreSQL (a real
server), as CI runners and teammates use them.

- two working directories ("runners") share one S3 state: the second plans nothing and keeps
  rotate_every timing;
- six concurrent rotations on S3 and on PostgreSQL: all succeed, six rotations, no lost update;
- a SIGKILLed apply: on PostgreSQL it leaves no lock; on S3 the next run on this host takes its
  lock over at once (its holder's process is gone), and converges;
- ``state migrate --from local``: lineage and serial kept, a non-empty target refused;
- errors are one line naming the backend; ``validate`` checks the block offline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from dotenv import dotenv_values

from hepinfra.emulator.app import EmulatorConfig, Faults
from hepinfra.state.model import State
from hepinfra.state.postgres import PostgresBackend
from hepinfra.state.s3 import S3Backend
from hepinfra.state.spec import PostgresState, S3State
from tests.cliutil import invoke, write_project
from tests.conftest import ENV, Server, record_artifact
from tests.integration.test_rotation_and_locks import reveal, rotations
from tests.servers import Moto, Postgres

MANIFEST = """
version: 1
state:
{state}
environments: {{prod: {{}}}}
databases:
  shop:
    engine: postgres
    rotate_every: 30d
    outputs:
      - dotenv: .env
        keys: {{SHOP_PASSWORD: "{{{{ db.password }}}}"}}
"""


def s3_block(bucket: str) -> str:
    return f"  backend: s3\n  bucket: {bucket}\n  prefix: team/"


def pg_block(schema: str) -> str:
    return f"  backend: postgres\n  schema: {schema}"


def project_with(root: Path, block: str) -> Path:
    return write_project(root, MANIFEST.format(state=block))


@pytest.fixture
def shared(request: pytest.FixtureRequest, moto_server: Moto, postgres_server: Postgres) -> dict[str, Any]:
    """``{"block": state: block, "env": what a run needs, "read": env -> State}`` per backend."""
    kind = getattr(request, "param", "s3")
    if kind == "s3":
        bucket = moto_server.bucket()
        spec = S3State(backend="s3", bucket=bucket, prefix="team/")

        def read(env: str) -> State | None:
            with mock.patch.dict(os.environ, moto_server.env):
                return S3Backend(spec).read(env)

        return {"kind": kind, "block": s3_block(bucket), "env": dict(moto_server.env), "read": read}
    schema = postgres_server.schema()
    pg = PostgresState(backend="postgres", schema=schema)
    env = {"HEPINFRA_STATE_PG": postgres_server.url}
    return {
        "kind": kind,
        "block": pg_block(schema),
        "env": env,
        "read": lambda e: PostgresBackend(pg, env).read(e),
        "backend": lambda: PostgresBackend(pg, env),
    }


def spawn(project: Path, server: Server, extra_env: dict[str, str], *args: str, kill_at: str = "") -> Any:
    env = {**os.environ, **ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url, **extra_env}
    if kill_at:
        env["HEPINFRA_TEST_KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, "-m", "hepinfra", *args, "-f", str(project), "--auto-approve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: Any, label: str) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=180)
    record_artifact(label, out + err)
    return int(proc.returncode), out, err


def test_two_runners_share_one_s3_state(tmp_path: Path, server: Server, shared: dict[str, Any]) -> None:
    first = project_with(tmp_path / "runner-1", shared["block"])
    second = project_with(tmp_path / "runner-2", shared["block"])
    done = invoke(["apply", "-f", str(first), "--auto-approve"], server=server, env=shared["env"])
    assert done.code == 0, done.err
    before = shared["read"]("prod")
    assert before is not None and "shop" in before.databases
    assert not (first.parent / ".hepinfra" / "state").exists()  # nothing on the runner's disk
    planned = invoke(["plan", "-f", str(second), "--json"], server=server, env=shared["env"])
    assert planned.code == 0, planned.err
    actions = {c["address"]: c["action"] for c in planned.json()["changes"]}
    assert actions == {"prod/databases.shop": "render"}  # runner 2 has no .env yet: only that
    applied = invoke(["apply", "-f", str(second), "--auto-approve"], server=server, env=shared["env"])
    assert applied.code == 0, applied.err
    after = shared["read"]("prod")
    assert after is not None
    kept = after.databases["shop"]
    assert kept.managed_since == before.databases["shop"].managed_since  # rotate_every counts from here
    assert kept.rotated_at == before.databases["shop"].rotated_at and not kept.adopted
    assert kept.rotations == 0 and rotations(server) == 0
    assert after.lineage == before.lineage and after.serial > before.serial
    again = invoke(["plan", "-f", str(first), "--detailed-exitcode"], server=server, env=shared["env"])
    assert again.code == 0, again.out + again.err


@pytest.mark.parametrize("shared", ["s3", "postgres"], indirect=True)
def test_six_concurrent_rotations_lose_nothing(tmp_path: Path, make_world: Any, shared: dict[str, Any]) -> None:
    server = make_world(EmulatorConfig(faults=Faults(latency_ms=20)))
    project = project_with(tmp_path / "p", shared["block"])
    done = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=shared["env"])
    assert done.code == 0, done.err
    start = shared["read"]("prod")
    runs = 6
    procs = [spawn(project, server, shared["env"], "rotate", "shop", "--lock-timeout", "60s") for _ in range(runs)]
    for proc in procs:
        code, out, err = finish(proc, f"concurrent rotate on {shared['kind']}")
        assert code == 0, out + err
    assert rotations(server) == runs
    assert dotenv_values(project.parent / ".env")["SHOP_PASSWORD"] == reveal(server, "shop-prod")["password"]
    final = shared["read"]("prod")
    assert final.databases["shop"].rotations == runs and final.journal == ()
    assert final.serial >= start.serial + 2 * runs  # each run: intent, then result, on the one before
    assert final.lineage == start.lineage


@pytest.mark.parametrize("shared", ["postgres"], indirect=True)
def test_a_killed_apply_on_postgres_leaves_no_lock(tmp_path: Path, server: Server, shared: dict[str, Any]) -> None:
    project = project_with(tmp_path / "p", shared["block"])
    code, _, _ = finish(spawn(project, server, shared["env"], "apply", kill_at="after:2"), "killed apply on pg")
    assert code == -signal.SIGKILL
    assert shared["backend"]().lock_holder("prod") is None  # the session died with the process
    again = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=shared["env"])
    assert again.code == 0, again.err
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=shared["env"]).code == 0
    assert len([r for r in server.requests() if r["method"] == "POST" and r["path"].endswith("/databases")]) == 1


def test_a_killed_apply_on_s3_leaves_a_lock_the_next_run_here_takes_over(
    tmp_path: Path, server: Server, shared: dict[str, Any]
) -> None:
    """Its holder was a process of this host (same boot id and PID namespace) that is gone: taken over
    at once, with a warning naming it. (A holder on another machine is named until ``state unlock``:
    tests/integration/test_state_backends.py.)"""
    project = project_with(tmp_path / "p", shared["block"])
    code, _, _ = finish(spawn(project, server, shared["env"], "apply", kill_at="after:2"), "killed apply on s3")
    assert code == -signal.SIGKILL
    again = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=shared["env"])
    assert again.code == 0, again.err
    warning = next(line for line in again.err.splitlines() if "took over the lock" in line)
    assert "'hepinfra apply" in warning and "on this host) is gone" in warning
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=shared["env"]).code == 0
    assert len([r for r in server.requests() if r["method"] == "POST" and r["path"].endswith("/databases")]) == 1


@pytest.mark.parametrize("shared", ["s3", "postgres"], indirect=True)
def test_migrate_from_local_keeps_lineage_and_serial(tmp_path: Path, server: Server, shared: dict[str, Any]) -> None:
    project = project_with(tmp_path / "p", "  backend: local")
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    assert invoke(["rotate", "shop", "-f", str(project), "--auto-approve"], server=server).code == 0
    local = json.loads((project.parent / ".hepinfra/state/prod.json").read_text())
    project.write_text(MANIFEST.format(state=shared["block"]))
    moved = invoke(["state", "migrate", "--from", "local", "-f", str(project)], env=shared["env"])
    assert moved.code == 0, moved.err
    assert f"serial {local['serial']}" in moved.out
    there = shared["read"]("prod")
    assert there.lineage == local["lineage"] and there.serial == local["serial"]
    assert there.databases["shop"].rotations == 1
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=shared["env"]).code == 0
    again = invoke(["state", "migrate", "--from", "local", "-f", str(project)], env=shared["env"])
    assert again.code == 0 and again.out.startswith("Already there: the state of 'prod'")  # a rerun resumes
    rotated = invoke(["rotate", "shop", "-f", str(project), "--auto-approve"], server=server, env=shared["env"])
    assert rotated.code == 0, rotated.err
    newer = shared["read"]("prod")
    refused = invoke(["state", "migrate", "--from", "local", "-f", str(project)], env=shared["env"])
    assert refused.code == 1 and "already holds the state of 'prod'" in refused.err and "--force" in refused.err
    assert shared["read"]("prod") == newer
    forced = invoke(["state", "migrate", "--from", "local", "-f", str(project), "--force"], env=shared["env"])
    assert forced.code == 0, forced.err
    assert shared["read"]("prod").serial == newer.serial + 1  # past the target's own serial
    assert shared["read"]("prod").databases["shop"].rotations == 1  # the local copy, as asked
    listed = invoke(["state", "list", "-f", str(project)], env=shared["env"])
    assert listed.code == 0 and listed.out.startswith("prod/databases.shop\tshop-prod\t")
    pulled = invoke(["state", "pull", "-e", "prod", "-f", str(project)], env=shared["env"])
    assert json.loads(pulled.out)["lineage"] == local["lineage"]


def test_backend_errors_are_one_line_naming_the_backend(
    tmp_path: Path, server: Server, moto_server: Moto, postgres_server: Postgres
) -> None:
    cases = [
        (s3_block("no-such-bucket"), dict(moto_server.env), "bucket 'no-such-bucket' does not exist"),
        (pg_block("hepinfra"), {}, "HEPINFRA_STATE_PG is not set"),
        (
            pg_block("hepinfra"),
            {"HEPINFRA_STATE_PG": postgres_server.url.replace(postgres_server.password, "wrong")},
            "password authentication failed",
        ),
    ]
    for block, env, cause in cases:
        project = project_with(tmp_path / cause[:8].replace(" ", "_"), block)
        for args in (["plan"], ["apply", "--auto-approve"], ["state", "list"]):
            result = invoke([*args, "-f", str(project)], server=server, env=env)
            assert result.code == 1 and result.out == "", (args, result.out)
            assert result.err.count("\n") == 1 and cause in result.err and "state backend" in result.err, result.err
            assert postgres_server.password not in result.err
    assert [r for r in server.requests() if r["method"] == "POST"] == []  # no database was created


def test_validate_checks_the_state_block_offline(tmp_path: Path) -> None:
    bad = {
        "  backend: s3\n  bucket: Not_A_Bucket": "not a valid S3 bucket name",
        "  backend: s3": "bucket",
        "  backend: gcs\n  bucket: b": "'backend' must be one of: local, s3, postgres",
        "  backend: postgres\n  url: postgresql://u:p@h/db": "url",
        "  backend: postgres\n  url_env: lower-case": "url_env",
        "  backend: s3\n  bucket: abc\n  prefix: /abs": "prefix",
    }
    for block, words in bad.items():
        project = project_with(tmp_path / str(abs(hash(block))), block)
        result = invoke(["validate", "-f", str(project)], env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
        assert result.code == 1 and words in result.err and "hepinfra.yaml:" in result.err, (block, result.err)
        assert result.err.count("\n") == 1
    good = project_with(tmp_path / "good", s3_block("acme-hepinfra"))
    result = invoke(["validate", "-f", str(good)], env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert result.code == 0 and "state: s3 (s3://acme-hepinfra/team/)" in result.out
