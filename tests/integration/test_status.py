"""``hepinfra status`` before and after a rotation and an interrupted hook: real PostgreSQL and
MariaDB behind the local hep.gg, verify on, the hook killed by SIGKILL at its step."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cliutil import invoke, write_project
from tests.conftest import Server
from tests.integration.test_crash_and_faults import kill_run
from tests.integration.test_verify_hooks import FILES, MANIFEST, world  # noqa: F401  (the fixture)
from tests.servers import TcpForwarder


def status(path: Path, server: Server, *args: str) -> dict[str, dict[str, Any]]:
    shown = invoke(["status", "-f", str(path), "--json", *args], server=server)
    assert shown.code == 0, shown.err
    return {r["address"]: r for r in json.loads(shown.out)["resources"]}


def test_status_before_and_after_a_rotation_and_an_interrupted_hook(
    tmp_path: Path,
    world: Callable[..., tuple[Server, dict[str, TcpForwarder]]],  # noqa: F811
) -> None:
    server, _ = world()
    manifest = MANIFEST.replace(
        "  shop:\n    engine: postgres\n", "  shop:\n    engine: postgres\n    rotate_every: 30d\n"
    )
    path = write_project(tmp_path, manifest, FILES)
    fresh = status(path, server)
    assert fresh["prod/databases.shop"]["managed"] is False
    assert {o["health"] for o in fresh["prod/databases.shop"]["outputs"]} == {"never written"}
    calls = len(server.requests())
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    assert len(server.requests()) > calls

    mark = len(server.requests())
    first = status(path, server)
    assert len(server.requests()) == mark  # state alone: no call
    shop = first["prod/databases.shop"]
    assert shop["rotations"] == 0 and shop["owed"] == [] and shop["overdue"] is False
    assert shop["verify_ok"] is True and shop["verify_ms"] > 0
    assert shop["next_due"] > shop["last_rotated"]
    assert first["prod/databases.cache"]["verify_ok"] is None  # mongo: not verified
    plain = invoke(["status", "-f", str(path)], server=server)
    header, *lines = plain.out.splitlines()
    assert header.split() == ["address", "last", "rotated", "next", "due", "owed", "last", "verify", "outputs"]
    shop_line = next(line for line in lines if line.startswith("prod/databases.shop "))
    assert "in 29d" in shop_line and "ms)" in shop_line and shop_line.endswith("1 ok")

    # a rotation whose hook is killed: rotated, verified, the hook owed
    assert kill_run(path, server, kill_at="step:hook", args=("--rotate", "shop")) == -9
    second = status(path, server)["prod/databases.shop"]
    assert second["rotations"] == 1 and second["last_rotated"] > shop["last_rotated"]
    # the check passed before the kill but is recorded with the hook's completion: both are owed again
    assert second["owed"] == ["hook", "verify"] and second["verified_at"] == shop["verified_at"]
    line = next(x for x in invoke(["status", "-f", str(path)], server=server).out.splitlines() if "shop " in x)
    assert " hook, verify " in line

    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    third = status(path, server)["prod/databases.shop"]
    assert third["owed"] == [] and third["rotations"] == 1
    assert third["verify_ok"] is True and third["verified_at"] > shop["verified_at"]
    refreshed = status(path, server, "--refresh")["prod/databases.shop"]
    assert {o["health"] for o in refreshed["outputs"]} == {"ok"}
    (tmp_path / ".env").unlink()
    missing = status(path, server, "--refresh")["prod/databases.shop"]
    assert {o["health"] for o in missing["outputs"]} == {"missing"}
