"""``hepinfra emulator reset`` (issue 22, item 8): clears a manifest's local sandbox (the embedded hep.gg's
world under .hepinfra/local and the manifest's state) after a confirmation; ``--yes`` skips it; not on a
terminal it needs ``--yes`` and clears nothing without it; a manifest whose hep.gg is not ``local`` (or
whose runs HEPGG_URL sends elsewhere) is refused, as is a reset while a run holds a lock. ``hepinfra
emulator`` with its serving options still serves. Each through the real CLI, the exact lines.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hepinfra.state.backend import LockInfo
from hepinfra.state.local import LocalBackend
from tests.cliutil import Result, invoke, write_project
from tests.conftest import Server, record_artifact

KEY_ENV = {"HEPINFRA_STATE_KEY": "correct horse battery staple"}

LOCAL = """
version: 1
hepgg: {url: local}
environments:
  prod: {}
  staging: {}
databases:
  shop:
    outputs:
      - dotenv: "{{ env }}.env"
        keys: {SHOP_URL: "{{ db.connection_string }}"}
ids:
  token:
    type: uuid
    outputs:
      - dotenv: "{{ env }}.env"
        keys: {TOKEN: "{{ id.value }}"}
"""


def sandbox(tmp_path: Path) -> Path:
    path = write_project(tmp_path / "p", LOCAL)
    applied = invoke(["apply", "-f", str(path), "--auto-approve"])
    assert applied.code == 0, applied.out + applied.err
    assert (path.parent / ".hepinfra/local/hepgg.sqlite3").exists()
    return path


def plan(path: Path, server: Server | None = None, env: dict[str, str] | None = None) -> Result:
    result = invoke(["plan", "-f", str(path)], server=server, env=env)
    assert result.code == 0, result.err
    return result


def untouched(path: Path) -> None:
    """The sandbox and its state are as the apply left them: a plan has nothing to do."""
    assert (path.parent / ".hepinfra/state/prod.json").exists()
    assert "No changes." in plan(path).out


def described(path: Path) -> str:
    root = path.parent
    return (
        f"the local hep.gg in {root}/.hepinfra/local (its databases, ids, uploads and credentials) and the state "
        f"of environment(s) prod, staging in {root}/.hepinfra/state"
    )


def test_yes_clears_the_world_and_the_state_and_the_next_apply_starts_again(tmp_path: Path) -> None:
    path = sandbox(tmp_path)
    result = invoke(["emulator", "reset", "-f", str(path), "--yes"])
    assert result.code == 0, result.err
    assert result.out == (
        f"Cleared the local hep.gg ({path.parent}/.hepinfra/local) and the state of prod, staging; "
        "the next apply creates everything again.\n"
    )
    assert not (path.parent / ".hepinfra/local").exists()
    assert sorted(p.name for p in (path.parent / ".hepinfra/state").glob("*.json*")) == []
    after = plan(path).out
    # a new, empty world: the database is created again (not adopted: its old world is gone)
    assert "+ prod/databases.shop will be created as 'shop-prod'" in after and "<=" not in after
    assert "Plan: 4 to create, 0 to adopt, 0 to rotate, 0 to render, 0 to forget." in after


def test_not_on_a_terminal_without_yes_it_refuses_in_one_line_and_clears_nothing(tmp_path: Path) -> None:
    path = sandbox(tmp_path)
    result = invoke(["emulator", "reset", "-f", str(path)], stdin="yes\n")
    assert result.code == 1 and result.out == ""
    assert result.err == (
        f"Error: emulator reset would clear {described(path)}; not a terminal, so it cannot ask: pass --yes "
        "(nothing was cleared)\n"
    )
    untouched(path)


def test_a_manifest_whose_hepgg_is_not_local_is_refused(tmp_path: Path, server: Server) -> None:
    path = write_project(tmp_path / "p", LOCAL.replace("url: local", f"url: {server.url}"))
    applied = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=KEY_ENV)
    assert applied.code == 0, applied.out + applied.err
    before = (path.parent / ".hepinfra/state/prod.json").read_bytes()
    result = invoke(["emulator", "reset", "-f", str(path), "--yes"], server=server)
    assert result.code == 1 and result.out == ""
    assert result.err == (
        f"Error: {path}: its hep.gg is {server.url}, not the local one (hepgg: {{url: local}}); emulator reset "
        "never clears a real account's state (use 'hepinfra state rm' to stop managing a resource)\n"
    )
    assert (path.parent / ".hepinfra/state/prod.json").read_bytes() == before
    assert "No changes." in plan(path, server, KEY_ENV).out


def test_a_local_manifest_that_hepgg_url_sends_elsewhere_is_refused(tmp_path: Path, server: Server) -> None:
    path = sandbox(tmp_path)
    result = invoke(["emulator", "reset", "-f", str(path), "--yes"], env={"HEPGG_URL": server.url})
    assert result.code == 1 and result.out == ""
    assert result.err == (
        f"Error: HEPGG_URL is {server.url}: this manifest's runs go to that hep.gg, not the local one; emulator "
        "reset clears nothing while it is set (unset it)\n"
    )
    untouched(path)


def test_a_run_holding_a_lock_stops_the_reset_before_anything_is_cleared(tmp_path: Path) -> None:
    path = sandbox(tmp_path)
    backend = LocalBackend(path.parent / ".hepinfra/state")
    held = backend.lock("staging", LockInfo())
    try:
        result = invoke(["emulator", "reset", "-f", str(path), "--yes"])
    finally:
        backend.unlock("staging", held.id)
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("Error: the state of environment 'staging' is locked by ")
    assert result.err.count("\n") <= 2  # the error and its hint
    untouched(path)
    assert (path.parent / ".hepinfra/local/hepgg.sqlite3").exists()


def on_a_terminal(path: Path, answer: str) -> str:
    """``hepinfra emulator reset`` with a terminal for stdin, stdout and stderr (click writes its question
    to stderr); ``answer`` typed at the question."""
    controller, terminal = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HEPGG_", "HEPINFRA_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hepinfra", "emulator", "reset", "-f", str(path)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=environ,
    )
    os.close(terminal)
    seen, deadline = b"", time.monotonic() + 60
    answered = False
    while True:
        assert time.monotonic() < deadline, seen.decode(errors="replace")
        ready, _, _ = select.select([controller], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the other end closed: the process is done
            break
        if not chunk:
            break
        seen += chunk
        if not answered and b"Only 'yes' will be accepted" in seen:
            os.write(controller, answer.encode() + b"\n")
            answered = True
    os.close(controller)
    text = seen.decode().replace("\r\n", "\n")
    record_artifact("emulator reset on a terminal", text)
    assert proc.wait(timeout=30) == 0, text
    return text


def test_on_a_terminal_it_asks_and_only_yes_clears(tmp_path: Path) -> None:
    path = sandbox(tmp_path)
    question = (
        f"This clears {described(path)}.\n"
        "Outputs already written stay as they are; the next apply creates everything again.\n"
        "Clear it? Only 'yes' will be accepted: "
    )
    refused = on_a_terminal(path, "y")
    assert refused == question + "y\nNothing was cleared.\n"
    untouched(path)
    cleared = on_a_terminal(path, "yes")
    assert cleared == (
        question + f"yes\nCleared the local hep.gg ({path.parent}/.hepinfra/local) and the state of prod, staging; "
        "the next apply creates everything again.\n"
    )
    assert not (path.parent / ".hepinfra/local").exists()
    assert not (path.parent / ".hepinfra/state/prod.json").exists()


def test_the_emulator_still_serves_with_its_options_and_they_are_refused_before_reset(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hepinfra", "emulator", "--port", "0", "--data", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("hep.gg emulator listening on http://127.0.0.1:"), line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    path = sandbox(tmp_path)
    result = invoke(["emulator", "--port", "0", "reset", "-f", str(path), "--yes"])
    assert result.code == 1 and result.out == ""
    assert result.err == "Error: --port is an option of the emulator itself, not of 'emulator reset'\n"
    untouched(path)


@pytest.mark.parametrize("args", [["emulator", "--help"], ["emulator", "reset", "--help"]])
def test_help_names_reset(args: list[str]) -> None:
    result = invoke(args)
    assert result.code == 0
    assert "reset" in result.out
