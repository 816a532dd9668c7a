"""``rotation: alternating`` under SIGKILL: a real ``hepinfra`` process is killed between every two steps
of a switch and of a rotation (``HEPINFRA_TEST_KILL_AT=step:NAME``, and at its hep.gg calls), against
the local hep.gg backed by real PostgreSQL and MariaDB. Right after each kill every output still logs
in (a consumer sees no failed connection across kills: the role the outputs carry never had its
password changed, and two roles are never invalid at once); the next plain apply converges with one
active role, every output on it, the previous role still valid (or, with --revoke, disabled), an
empty journal and a clean plan, and hep.gg's own rotate never called.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.cliutil import invoke, write_project
from tests.conftest import ENV, KEY, Server, record_artifact
from tests.integration.test_alternating import (
    FILES,
    MANIFEST,
    SINGLE,
    STATE_KEY,
    URLS,
    env_of,
    login,
    refused,
    state_of,
)

pytestmark = pytest.mark.slow

# the two real engines only (a mongo database stays single, and its create is no step of these)
TWO = MANIFEST.split("  cache:")[0]
TWO_SINGLE = SINGLE.split("  cache:")[0]

SWITCH_STEPS = ["role-password", "role-verified", "outputs", "verify", "hook", "done", "role-activate"]
ROTATE_STEPS = [*SWITCH_STEPS, "role-revoke"]


def kill_run(root: Path, server: Server, kill_at: str, *args: str) -> int:
    env = {**os.environ, **ENV, **STATE_KEY, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url,
           "HEPINFRA_TEST_KILL_AT": kill_at}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "hepinfra", *args, "-f", str(root / "hepinfra.yaml"), "--auto-approve"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    record_artifact(f"killed {args[0]} at {kill_at}", proc.stdout + proc.stderr)
    return proc.returncode


def hepgg_rotations(server: Server) -> int:
    store = server.app.emu.store
    return sum(r["rotations"] for r in store.list_databases(store.account_of_db_key(KEY) or ""))


def every_output_logs_in(root: Path) -> dict[str, str]:
    found = env_of(root)
    for var in URLS.values():
        login(found[var])
    return found


def converged(root: Path, server: Server, previous: dict[str, str] | None, *, revoked: bool = False) -> None:
    applied = invoke(["apply", "-f", str(root / "hepinfra.yaml"), "--auto-approve"], server=server, env=STATE_KEY)
    assert applied.code == 0, applied.out + applied.err
    state = state_of(root)
    assert state.journal == ()
    now = every_output_logs_in(root)
    for key, var in URLS.items():
        roles = state.databases[key].roles
        assert roles is not None and roles.ready and roles.incoming is None and roles.revoke is None
        assert roles.active is not None and urlsplit(now[var]).username == roles.roles[roles.active].name
        if previous is not None:  # the role the outputs carried before the rotation
            assert urlsplit(previous[var]).username == roles.roles[1 - roles.active].name
            refused(previous[var]) if revoked else login(previous[var])
    assert hepgg_rotations(server) == 0, "hep.gg's rotate was used"
    plan = invoke(["plan", "-f", str(root / "hepinfra.yaml"), "--detailed-exitcode"], server=server, env=STATE_KEY)
    assert plan.code == 0, plan.out


@pytest.mark.parametrize("step", SWITCH_STEPS)
def test_a_switch_killed_between_any_two_steps_converges(
    step: str, tmp_path: Path, roles_world: Callable[..., Server]
) -> None:
    server = roles_world(role_privilege=True)
    write_project(tmp_path, TWO_SINGLE, FILES)
    assert (
        invoke(["apply", "-f", str(tmp_path / "hepinfra.yaml"), "--auto-approve"], server=server, env=STATE_KEY).code
        == 0
    )
    (tmp_path / "hepinfra.yaml").write_text(TWO)
    assert kill_run(tmp_path, server, f"step:{step}", "apply") == -signal.SIGKILL
    every_output_logs_in(tmp_path)
    converged(tmp_path, server, None)


@pytest.mark.parametrize("step", ROTATE_STEPS)
def test_a_rotation_killed_between_any_two_steps_converges(
    step: str, tmp_path: Path, roles_world: Callable[..., Server]
) -> None:
    server = roles_world(role_privilege=True)
    write_project(tmp_path, TWO, FILES)
    assert (
        invoke(["apply", "-f", str(tmp_path / "hepinfra.yaml"), "--auto-approve"], server=server, env=STATE_KEY).code
        == 0
    )
    assert invoke(["rotate", "-f", str(tmp_path / "hepinfra.yaml"), "shop", "orders", "--auto-approve"], server=server,
                  env=STATE_KEY).code == 0  # fmt: skip
    before = every_output_logs_in(tmp_path)
    revoke = step == "role-revoke"
    args = ("rotate", "shop", "orders", *(("--revoke",) if revoke else ()))
    assert kill_run(tmp_path, server, f"step:{step}", *args) == -signal.SIGKILL
    every_output_logs_in(tmp_path)
    for var in URLS.values():
        login(before[var])  # the role the outputs carried is untouched until its successor is active
    converged(tmp_path, server, before, revoked=revoke)


@pytest.mark.parametrize("boundary", ["before:2", "after:2", "after:3"])
def test_a_rotation_killed_at_its_hepgg_calls_converges(
    boundary: str, tmp_path: Path, roles_world: Callable[..., Server]
) -> None:
    """One List, then a Reveal per database (the managing credential): killed around them."""
    server = roles_world(role_privilege=True)
    write_project(tmp_path, TWO, FILES)
    assert (
        invoke(["apply", "-f", str(tmp_path / "hepinfra.yaml"), "--auto-approve"], server=server, env=STATE_KEY).code
        == 0
    )
    before = every_output_logs_in(tmp_path)
    assert kill_run(tmp_path, server, boundary, "rotate", "shop", "orders", "--parallelism", "1") == -signal.SIGKILL
    every_output_logs_in(tmp_path)
    converged(tmp_path, server, None)
    after = state_of(tmp_path)
    assert {db.rotations for db in after.databases.values()} <= {1, 2}, "a rotation was made twice"
    for var in URLS.values():
        login(before[var])  # finished or never begun, the previous role stays valid
