"""``hepinfra state ...`` commands, and apply's confirmation and progress on a real terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hepinfra.state import codec
from hepinfra.state.local import LocalBackend
from tests.cliutil import BASIC, BASIC_FILES, invoke, write_project
from tests.conftest import ENV, Server, record_artifact


@pytest.fixture
def applied(tmp_path: Path, server: Server) -> Path:
    project = write_project(tmp_path / "p", BASIC.replace("databases:\n", "databases:\n  extra: {}\n"), BASIC_FILES)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    return project


def test_state_list_and_show(applied: Path, server: Server) -> None:
    listed = invoke(["state", "list", "-f", str(applied)], server=server)
    assert listed.code == 0
    rows = [line.split("\t") for line in listed.out.splitlines()]
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("prod/databases.extra", "extra-prod", "mariadb"),
        ("prod/databases.shop", "shop-prod", "postgres"),
    ]
    shown = invoke(["state", "show", "prod/databases.shop", "-f", str(applied)], server=server)
    doc = json.loads(shown.out)
    assert doc["database"]["name"] == "shop-prod" and doc["journal"] == []
    assert sorted(o["path"] for o in doc["outputs"]) == [".env.prod", "deploy/prod/shop.json"]
    assert all(len(o["digest"]) == 40 for o in doc["outputs"])
    missing = invoke(["state", "show", "prod/databases.nope", "-f", str(applied)], server=server)
    assert missing.code == 1 and "not in the state of environment 'prod'" in missing.err


def test_state_rm_stops_managing_but_the_database_stays(applied: Path, server: Server) -> None:
    result = invoke(["state", "rm", "prod/databases.extra", "-f", str(applied)], server=server)
    assert result.code == 0 and "the database stays on hep.gg" in result.out
    state = LocalBackend(applied.parent / ".hepinfra/state").read("prod")
    assert state is not None and sorted(state.databases) == ["shop"]
    plan = invoke(["plan", "-f", str(applied), "--json"], server=server).json()
    assert {c["address"]: c["action"] for c in plan["changes"]}["prod/databases.extra"] == "adopt"


def test_state_pull_and_push_round_trip_with_checks(applied: Path, server: Server, tmp_path: Path) -> None:
    pulled = invoke(["state", "pull", "-e", "prod", "-f", str(applied)], server=server)
    assert pulled.code == 0
    state = codec.decode(pulled.out.encode(), "pulled")
    saved = tmp_path / "prod.json"
    saved.write_text(pulled.out)
    ok = invoke(["state", "push", str(saved), "-e", "prod", "-f", str(applied)], server=server)
    assert ok.code == 0, ok.err

    older = state.model_copy(update={"serial": state.serial - 1, "databases": {}})
    saved.write_bytes(codec.encode(older))
    refused = invoke(["state", "push", str(saved), "-e", "prod", "-f", str(applied)], server=server)
    assert refused.code == 1 and f"serial {state.serial - 1} is older than the current {state.serial}" in refused.err

    foreign = older.model_copy(update={"lineage": "another-lineage", "serial": 99})
    saved.write_bytes(codec.encode(foreign))
    refused = invoke(["state", "push", str(saved), "-e", "prod", "-f", str(applied)], server=server)
    assert refused.code == 1 and "lineage another-lineage differs" in refused.err
    forced = invoke(["state", "push", str(saved), "-e", "prod", "-f", str(applied), "--force"], server=server)
    assert forced.code == 0
    now = LocalBackend(applied.parent / ".hepinfra/state").read("prod")
    assert now is not None and now.lineage == "another-lineage" and now.databases == {}

    wrong_env = state.model_copy(update={"environment": "staging"})
    saved.write_bytes(codec.encode(wrong_env))
    refused = invoke(["state", "push", str(saved), "-e", "prod", "-f", str(applied)], server=server)
    assert refused.code == 1 and "holds environment 'staging', not 'prod'" in refused.err
    saved.write_text("{broken")
    refused = invoke(["state", "push", str(saved), "-e", "prod", "-f", str(applied)], server=server)
    assert refused.code == 1 and "not valid JSON" in refused.err


def test_state_commands_reject_unknown_environments(applied: Path, server: Server) -> None:
    result = invoke(["state", "pull", "-e", "nope", "-f", str(applied)], server=server)
    assert result.code == 1 and "no such environment" in result.err


def run_on_a_terminal(
    args: list[str], server: Server, answer: str, cwd: Path, extra_env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run hepinfra with stdin/stdout on a pseudo-terminal, answer its question, return (code, screen)."""
    env = {**os.environ, **ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url, "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    env.update(extra_env or {})
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hepinfra", *args],
        stdin=child,
        stdout=child,
        stderr=child,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(child)
    screen, answered = b"", False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(main, 4096)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        if not answered and b"Only 'yes' will be accepted" in screen:
            os.write(main, answer.encode() + b"\n")
            answered = True
        if proc.poll() is not None and not ready:
            break
    code = proc.wait(10)
    os.close(main)
    text = screen.decode(errors="replace")
    record_artifact(f"tty {args}", text)
    return code, text


def test_apply_asks_on_a_terminal_and_only_yes_proceeds(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    code, screen = run_on_a_terminal(["apply", "-f", str(project)], server, "no", tmp_path)
    assert code == 1 and "apply cancelled; nothing was changed" in screen
    assert "\x1b[" in screen  # colour on a terminal
    assert not [r for r in server.requests() if r["method"] == "POST"]
    code, screen = run_on_a_terminal(["apply", "-f", str(project)], server, "yes", tmp_path)
    assert code == 0, screen
    assert "created" in screen and "Apply complete: 1 succeeded, 0 failed." in screen


def test_no_color_is_honoured_on_a_terminal(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    code, screen = run_on_a_terminal(["plan", "-f", str(project)], server, "", tmp_path, {"NO_COLOR": "1"})
    assert code == 0 and "will be created" in screen and "\x1b[" not in screen
    code, screen = run_on_a_terminal(["plan", "-f", str(project)], server, "", tmp_path)
    assert code == 0 and "\x1b[" in screen
