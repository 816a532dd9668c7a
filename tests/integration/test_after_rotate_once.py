"""``after_rotate_once``: identical after_rotate hooks of the databases rotated in one run run once,
after all of them, with HEPINFRA_ADDRESSES listing them; a kill before that run leaves the hook owed
by each, and the next apply runs it once, rotating nothing again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cliutil import invoke, write_project
from tests.conftest import Server
from tests.integration.test_crash_and_faults import kill_run

MANIFEST = """
version: 1
defaults: {after_rotate_once: true}
environments: {prod: {}}
databases:
  a: {after_rotate: [python3, hook.py, shared]}
  b: {after_rotate: [python3, hook.py, shared]}
  c: {after_rotate: [python3, hook.py, shared]}
  d: {after_rotate: [python3, hook.py, own]}
  e: {after_rotate: [python3, hook.py, alone], after_rotate_once: false}
"""
HOOK = """
import json, os, sys
with open("hook.log", "a") as f:
    f.write(json.dumps([sys.argv[1], os.environ.get("HEPINFRA_ADDRESSES", ""), os.environ["HEPINFRA_ADDRESS"]]) + "\\n")
"""


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def rotations(server: Server) -> int:
    return sum(1 for r in server.requests() if r["method"] == "POST" and r["path"].endswith("/rotate"))


def test_identical_hooks_run_once_after_every_rotation(tmp_path: Path, server: Server) -> None:
    path = write_project(tmp_path, MANIFEST, {"hook.py": HOOK})
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    assert calls(tmp_path / "hook.log") == []  # created, not rotated: no hook
    rotated = invoke(["rotate", "a", "b", "c", "d", "e", "-f", str(path), "--auto-approve", "--json"], server=server)
    assert rotated.code == 0, rotated.err
    found = sorted(calls(tmp_path / "hook.log"))
    assert found == [
        ["alone", "", "prod/databases.e"],  # after_rotate_once: false: its own run, right after its rotation
        ["own", "prod/databases.d", "prod/databases.d"],
        ["shared", "prod/databases.a\nprod/databases.b\nprod/databases.c", "prod/databases.a"],
    ]
    events = [json.loads(line) for line in rotated.out.splitlines()]
    done = {e["address"]: e for e in events if e.get("event") == "done"}
    assert "hook" not in done["prod/databases.b"] and done["prod/databases.e"]["hook"]["ms"] >= 0
    once = [e for e in events if e["event"] == "after_rotate_once"]
    assert sorted(e["addresses"] for e in once) == [
        ["prod/databases.a", "prod/databases.b", "prod/databases.c"],
        ["prod/databases.d"],
    ]
    assert all(e["ok"] and e["message"].startswith("ran after_rotate in ") for e in once)
    text = invoke(["rotate", "a", "b", "c", "-f", str(path), "--auto-approve"], server=server)
    assert "⟳ prod/databases.a, prod/databases.b, prod/databases.c: ran after_rotate in " in text.out, text.out
    state = json.loads((tmp_path / ".hepinfra/state/prod.json").read_text())
    assert state["journal"] == []


def test_a_kill_before_the_shared_run_runs_it_once_on_the_next_apply(tmp_path: Path, server: Server) -> None:
    path = write_project(tmp_path, MANIFEST.replace("  d:", "  # d:").replace("  e:", "  # e:"), {"hook.py": HOOK})
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    assert kill_run(path, server, kill_at="step:hook", args=("--rotate", "a", "--rotate", "b", "--rotate", "c")) == -9
    assert calls(tmp_path / "hook.log") == [] and rotations(server) == 3
    planned = invoke(["plan", "-f", str(path)], server=server)
    assert planned.out.count("will run its after_rotate hook again") == 3, planned.out
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    assert calls(tmp_path / "hook.log") == [
        ["shared", "prod/databases.a\nprod/databases.b\nprod/databases.c", "prod/databases.a"]
    ]
    assert rotations(server) == 3  # nothing rotated again
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server).code == 0
