"""``hepinfra apply`` / ``rotate`` / ``output`` / ``run`` against the emulator over loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dotenv import dotenv_values

from hepinfra.emulator.app import EmulatorConfig
from hepinfra.state.backend import LockInfo
from hepinfra.state.local import LocalBackend
from tests.cliutil import BASIC, BASIC_FILES, invoke, write_project
from tests.conftest import ENV, HTTP, KEY, KEY_FULL, Server, record_artifact
from tests.unit.test_outputs import read_back_like_compose, read_back_with_bash

DBS = "/api/v1/db/databases"
ROOT = Path(__file__).resolve().parents[2]


def reveal_all(server: Server, key: str = KEY) -> dict[str, dict]:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {key}"}
    rows = HTTP.get(server.url + DBS, headers=headers, timeout=10).json()["data"]["databases"]
    return {
        r["name"]: HTTP.get(f"{server.url}{DBS}/{r['id']}", headers=headers, timeout=10).json()["data"] for r in rows
    }


def test_apply_creates_writes_outputs_and_then_nothing_to_do(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 0, result.err
    assert "+ prod/databases.shop: created" in result.out and "Apply complete: 1 succeeded, 0 failed." in result.out
    live = reveal_all(server)["shop-prod"]
    env = dotenv_values(project.parent / ".env.prod")
    assert env == {"SHOP_DATABASE_URL": live["connectionString"], "SHOP_DB_PASSWORD": live["password"]}
    assert json.loads((project.parent / "deploy/prod/shop.json").read_text())["url"] == live["connectionString"]
    for path in (project.parent / ".env.prod", project.parent / "deploy/prod/shop.json"):
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert again.code == 0 and "No changes to apply." in again.out


def test_rotate_changes_every_output_and_kills_the_old_password(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    before = reveal_all(server)["shop-prod"]
    result = invoke(["rotate", "shop", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 0, result.err
    assert "Rotation window: median" in result.out
    after = reveal_all(server)["shop-prod"]
    assert after["password"] != before["password"]
    assert not server.password_valid(before["dbUser"], before["password"])
    assert dotenv_values(project.parent / ".env.prod")["SHOP_DB_PASSWORD"] == after["password"]
    assert after["password"] in (project.parent / "deploy/prod/shop.json").read_text()
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server).code == 0


def test_requested_and_due_rotation_rotates_once(tmp_path: Path, server: Server) -> None:
    from datetime import UTC, datetime, timedelta

    from hepinfra.state import codec

    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    path = project.parent / ".hepinfra/state/prod.json"
    state = codec.decode(path.read_bytes(), "s")
    db = state.databases["shop"].model_copy(update={"rotated_at": datetime.now(UTC) - timedelta(days=90)})
    path.write_bytes(codec.encode(state.model_copy(update={"databases": {"shop": db}})))
    assert invoke(["rotate", "shop", "-f", str(project), "--auto-approve"], server=server).code == 0
    assert len([r for r in server.requests() if r["path"].endswith("/rotate")]) == 1


def test_partial_failure_goes_on_and_reports_the_api_message(tmp_path: Path, server: Server) -> None:
    project = write_project(
        tmp_path / "p",
        """
        version: 1
        environments: {prod: {}}
        databases: {one: {}, two: {}, three: {}}
    """,
    )
    result = invoke(
        ["apply", "-f", str(project), "--auto-approve", "--parallelism", "1"],
        server=server,
        env={"HEPGG_DB_KEY": KEY_FULL},
    )
    assert result.code == 1
    assert "Apply incomplete: 1 succeeded, 2 failed." in result.out
    assert result.out.count("No free database slots. Buy a pack or upgrade to Premium.") >= 2
    assert "free a slot" not in result.err
    state = LocalBackend(project.parent / ".hepinfra/state").read("prod")
    assert state is not None and list(state.databases) == ["one"] and state.journal != ()
    plan = invoke(["plan", "-f", str(project), "--json"], server=server, env={"HEPGG_DB_KEY": KEY_FULL}).json()
    assert sorted(c["action"] for c in plan["changes"]) == ["create", "create", "noop"]


def test_json_events_one_per_line(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    result = invoke(["apply", "-f", str(project), "--auto-approve", "--json"], server=server)
    assert result.code == 0
    events = [json.loads(line) for line in result.out.splitlines()]
    assert [e["event"] for e in events] == ["plan", "start", "done", "summary"]
    assert events[2]["address"] == "prod/databases.shop" and events[2]["action"] == "create"
    summary = events[3]
    assert summary["elapsed_ms"] > 0 and summary["state_writes"] >= 2
    assert {k: v for k, v in summary.items() if k not in ("elapsed_ms", "state_writes")} == {
        "event": "summary",
        "failed": 0,
        "failures": [],
        "rotation_windows_ms": {},
        "succeeded": 1,
    }
    rotated = invoke(["rotate", "shop", "-f", str(project), "--auto-approve", "--json"], server=server)
    done = [json.loads(line) for line in rotated.out.splitlines()][2]
    assert done["action"] == "rotate" and done["rotation_window_ms"] >= 0


def test_non_interactive_apply_without_auto_approve_is_refused(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    result = invoke(["apply", "-f", str(project)], server=server)
    assert result.code == 1 and "apply needs --auto-approve in a non-interactive session" in result.err
    assert server.requests() == []


@pytest.mark.parametrize("chars", ['aZ9$"# `', "aZ9'\"# \\"], ids=["dollar-backtick", "quote-backslash"])
def test_tricky_passwords_reach_dotenv_readers_exactly(tmp_path: Path, make_world, chars: str) -> None:  # type: ignore[no-untyped-def]
    """Every character in every password; read back by python-dotenv, bash and compose's rules. A random
    password that needs double quotes and ends in '\\' is refused (compose misreads it): then
    nothing is written, and after a rotation behind hepinfra's back the next apply renders it."""
    server = make_world(EmulatorConfig(password_chars=chars, password_length=24))
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    file = project.parent / ".env.prod"
    for _ in range(40):
        result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
        live = reveal_all(server)["shop-prod"]
        password = live["password"]
        assert set(chars) <= set(password)
        if ("'" in password or "\\" in password) and password.endswith("\\"):
            assert result.code == 1 and "cannot be written safely to a dotenv file" in result.out
            assert not file.exists() or password not in file.read_text()
            HTTP.post(f"{server.url}{DBS}/{live['id']}/rotate", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
            continue
        assert result.code == 0, result.out
        expected = {"SHOP_DATABASE_URL": live["connectionString"], "SHOP_DB_PASSWORD": password}
        assert dotenv_values(file) == expected
        assert read_back_with_bash(file, list(expected)) == expected
        lines = dict(line.split("=", 1) for line in file.read_text().splitlines())
        assert {k: read_back_like_compose(v) for k, v in lines.items()} == expected
        return
    raise AssertionError("no writable password in 40 rotations")


def test_password_no_dotenv_can_carry_fails_clearly_and_writes_nothing(tmp_path: Path, make_world) -> None:  # type: ignore[no-untyped-def]
    server = make_world(EmulatorConfig(password_chars="aZ'`$b", password_length=24))
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 1
    assert "SHOP_DB_PASSWORD: the value cannot be written safely to a dotenv file" in result.out
    assert not (project.parent / ".env.prod").exists()
    state = LocalBackend(project.parent / ".hepinfra/state").read("prod")
    assert state is not None and "shop" in state.databases  # the database is known; outputs are owed
    plan = invoke(["plan", "-f", str(project), "--json"], server=server).json()
    assert [c["action"] for c in plan["changes"]] == ["render"]


def test_a_rotation_into_a_tracked_file_is_refused_before_rotating(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "repo"
    project = write_project(root, BASIC, BASIC_FILES)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(root)], check=True)
    subprocess.run([*git, "-C", str(root), "add", "-f", "deploy/prod/shop.json"], check=True)
    before = reveal_all(server)["shop-prod"]["password"]
    result = invoke(["rotate", "shop", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 1 and "is a file tracked by Git" in result.err and result.out == ""
    assert reveal_all(server)["shop-prod"]["password"] == before  # the old password still works
    assert not [r for r in server.requests() if r["path"].endswith("/rotate")]


def test_writing_into_a_git_tracked_file_is_refused(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "repo"
    project = write_project(root, BASIC, BASIC_FILES)
    (root / ".env.prod").write_text("# committed by mistake\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(root)], check=True)
    subprocess.run([*git, "-C", str(root), "add", ".env.prod"], check=True)
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 1
    assert "output path '.env.prod' is a file tracked by Git; writing a secret into it would commit" in result.err
    assert result.err.startswith(f"Error: {project}:") and result.err.count("\n") == 1
    assert (root / ".env.prod").read_text() == "# committed by mistake\n"
    assert not [r for r in server.requests() if r["method"] == "POST"]  # refused before any API call
    project.write_text(
        BASIC.replace(
            '      - dotenv: ".env.{{ env }}"\n', '      - dotenv: ".env.{{ env }}"\n        allow_tracked: true\n'
        )
    )
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    assert "SHOP_DB_PASSWORD" in (root / ".env.prod").read_text()


def test_a_symlink_out_of_the_project_is_refused(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    outside = tmp_path / "outside"
    outside.mkdir()
    (project.parent / "deploy").symlink_to(outside)
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 1 and "resolves through a symbolic link to" in result.err
    assert "outside the manifest's directory; set allow_outside: true" in result.err
    assert list(outside.iterdir()) == []
    assert not [r for r in server.requests() if r["method"] == "POST"]


def test_a_held_lock_names_its_holder_and_lock_timeout_waits(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    backend = LocalBackend(project.parent / ".hepinfra/state")
    held = backend.lock("prod", LockInfo(command="hepinfra apply", pid=os.getpid()))
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 1
    assert f"the state of environment 'prod' is locked by {held.user}@{held.host} (pid {held.pid}" in result.err
    assert f"hepinfra state unlock {held.id} -e prod" in result.err
    threading.Timer(0.5, lambda: backend.unlock("prod", held.id)).start()
    started = time.monotonic()
    waited = invoke(["apply", "-f", str(project), "--auto-approve", "--lock-timeout", "10s"], server=server)
    assert waited.code == 0 and time.monotonic() - started >= 0.5
    held = backend.lock("prod", LockInfo())  # held by this (live) process
    refused = invoke(["state", "unlock", held.id, "-e", "prod", "-f", str(project)], server=server)
    assert refused.code == 1 and "held by a process that is still running" in refused.err
    assert backend.lock_holder("prod") is not None
    forced = invoke(["state", "unlock", held.id, "-e", "prod", "-f", str(project), "--force"], server=server)
    assert forced.code == 0
    assert backend.lock_holder("prod") is None


def test_two_real_applies_on_one_state(tmp_path: Path, make_world) -> None:  # type: ignore[no-untyped-def]
    server = make_world(
        EmulatorConfig(faults=__import__("hepinfra.emulator.app", fromlist=["Faults"]).Faults(latency_ms=150))
    )
    project = write_project(tmp_path / "p", BASIC.replace("databases:\n", "databases:\n  extra: {}\n"), BASIC_FILES)
    env = {**os.environ, **ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url}
    cmd = [sys.executable, "-m", "hepinfra", "apply", "-f", str(project), "--auto-approve"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    for _, out, err in results:
        record_artifact("concurrent apply", out + err)
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, _, err in results if code == 1)
    assert "the state of environment 'prod' is locked by" in loser and "hepinfra apply" in loser
    state = LocalBackend(project.parent / ".hepinfra/state").read("prod")
    assert state is not None and sorted(state.databases) == ["extra", "shop"] and state.journal == ()
    assert len(reveal_all(server)) == 2


def test_output_prints_values_only_on_request(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    live = reveal_all(server)["shop-prod"]
    as_json = invoke(
        ["output", "prod/databases.shop", "-f", str(project), "--format", "json"], server=server, secret_ok=True
    )
    assert json.loads(as_json.out) == {
        "SHOP_DATABASE_URL": live["connectionString"],
        "SHOP_DB_PASSWORD": live["password"],
    }
    dotenv = invoke(["output", "shop", "-f", str(project)], server=server, secret_ok=True)
    (tmp_path / "x.env").write_text(dotenv.out)
    assert dotenv_values(tmp_path / "x.env")["SHOP_DB_PASSWORD"] == live["password"]
    shell = invoke(["output", "shop", "-f", str(project), "--format", "shell"], server=server, secret_ok=True)
    assert shell.out.startswith("export SHOP_DATABASE_URL=")
    missing = invoke(["output", "prod/databases.nope", "-f", str(project)], server=server)
    assert missing.code == 1 and "no database 'nope' is declared" in missing.err


def test_run_passes_values_in_the_environment_not_the_command_line(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    live = reveal_all(server)["shop-prod"]
    env = {**os.environ, **ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url}
    script = "import os,sys; print(len(sys.argv)); print(os.environ['SHOP_DB_PASSWORD'] == sys.argv[-1] if len(sys.argv) > 1 else os.environ['SHOP_DB_PASSWORD'])"
    proc = subprocess.run(
        [sys.executable, "-m", "hepinfra", "run", "-f", str(project), "-e", "prod", "--", sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["1", live["password"]]  # the child printed it on purpose: not recorded


def test_readme_quick_start_against_the_embedded_local_hepgg(tmp_path: Path) -> None:
    """The README's first command, then plan and rotate, on a copy of examples/ with HEPGG_URL unset."""
    work = tmp_path / "examples"
    # what a fresh clone has: the README's first command may already have run in this checkout (CI runs it)
    shutil.copytree(ROOT / "examples", work, ignore=shutil.ignore_patterns(".hepinfra", "out"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEPGG_", "PROD_DB_KEY"))}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hepinfra", *args, "-f", "hepgg.yaml"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = cli("apply", "--auto-approve")
    record_artifact("quick start apply", first.stdout + first.stderr)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Apply complete: 9 succeeded, 0 failed." in first.stdout  # 5 databases, 2 ids and 2 uploads
    assert "SESSION_SECRET" in dotenv_values(work / "out/production/.env")
    assert cli("plan", "--detailed-exitcode").returncode == 0
    before = dotenv_values(work / "out/production/.env")
    rotated = cli("rotate", "shop", "--auto-approve")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    after = dotenv_values(work / "out/production/.env")
    assert after["SHOP_DB_PASSWORD"] != before["SHOP_DB_PASSWORD"]
    assert after["SESSIONS_URL"] == before["SESSIONS_URL"]  # only shop was rotated
    assert after["SESSION_SECRET"] == before["SESSION_SECRET"] and after["LOGO_URL"] == before["LOGO_URL"]
    from hepinfra.emulator.store import Store

    store = Store(work / ".hepinfra/local/hepgg.sqlite3")
    user = after["SHOP_DATABASE_URL"].split("//")[1].split(":")[0]  # type: ignore[union-attr]
    assert store.check_password(user, after["SHOP_DB_PASSWORD"] or "")
    assert not store.check_password(user, before["SHOP_DB_PASSWORD"] or "")
    store.close()
    import base64

    import yaml

    secret = yaml.safe_load((work / "out/production/shop-secret.yaml").read_text())
    assert base64.b64decode(secret["data"]["PASSWORD"]).decode() == after["SHOP_DB_PASSWORD"]
    assert cli("plan", "--detailed-exitcode").returncode == 0


def test_output_formats_carry_what_dotenv_cannot(tmp_path: Path, make_world) -> None:  # type: ignore[no-untyped-def]
    server = make_world(EmulatorConfig(password_chars="aZ'`$b", password_length=24))
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 1  # dotenv refused
    as_dotenv = invoke(["output", "shop", "-f", str(project)], server=server, secret_ok=True)
    assert as_dotenv.code == 1 and "SHOP_DB_PASSWORD: cannot be printed as dotenv" in as_dotenv.err
    assert as_dotenv.err.count("\n") == 1 and "internal error" not in as_dotenv.err
    as_json = invoke(["output", "shop", "-f", str(project), "--format", "json"], server=server, secret_ok=True)
    assert as_json.code == 0
    assert json.loads(as_json.out)["SHOP_DB_PASSWORD"] == reveal_all(server)["shop-prod"]["password"]


def test_a_lock_left_by_a_dead_process_is_cleared_with_a_warning(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    LocalBackend(project.parent / ".hepinfra/state").lock("prod", LockInfo(pid=dead.pid, command="hepinfra apply"))
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 0, result.err
    assert "Warning: cleared the lock of environment 'prod' left by a process that is gone" in result.err
    assert f"pid {dead.pid}" in result.err
