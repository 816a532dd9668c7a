"""What a rotation costs the consumers, measured by the consumer probe (bench/probe.py) against the
local hep.gg backed by a real PostgreSQL cluster and a real MariaDB server (tests/servers.py).

The probe opens a new connection every 10 ms with the credential as a consumer reads it, and holds
one long-lived connection running SELECT 1. Today's single-user rotation (``hepinfra rotate``) kills
the old password at once, so a consumer that re-reads ``.env`` fails in the window before the file
holds the new one: the probe sees it. Existing sessions survive (both servers keep them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.probe import Probe, Report, from_dotenv
from hepinfra.emulator.app import EmulatorConfig
from hepinfra.emulator.engines import open_engine
from tests.cliutil import invoke, write_project
from tests.conftest import Server
from tests.servers import MariaDB, Postgres

BASELINE = """
version: 1
environments:
  prod: {}
databases:
  shop:
    engine: postgres
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
  orders:
    engine: mariadb
    outputs:
      - dotenv: .env
        keys: {ORDERS_URL: "{{ db.connection_string }}"}
"""


@pytest.fixture
def real_world(
    make_world: Callable[[EmulatorConfig], Server], postgres_server: Postgres, mariadb_server: MariaDB
) -> Server:
    servers = {
        "postgres": open_engine("postgres", postgres_server.url),
        "mariadb": open_engine("mariadb", mariadb_server.url),
    }
    return make_world(EmulatorConfig(servers=servers))


def rotate_under(probe: Probe, server: Server, path: Path, key: str, times: int) -> list[float]:
    """Rotate ``times`` times under the probe, each until it has seen 3 working connections in a
    row; returns when each rotation began (a rotation's window ends where the next begins)."""
    marks = []
    for _ in range(times):
        marks.append(probe.mark())
        rotated = invoke(["rotate", "-f", str(path), key, "--auto-approve"], server=server)
        assert rotated.code == 0, rotated.out + rotated.err
        probe.wait(successes=3)
    return marks


def per_rotation(probe: Probe, marks: list[float]) -> list[Report]:
    """After ``stop``: one report per rotation window."""
    ends: list[float | None] = [*marks[1:], None]
    return [probe.report(since=start, until=end) for start, end in zip(marks, ends, strict=True)]


@pytest.mark.parametrize(("key", "variable"), [("shop", "SHOP_URL"), ("orders", "ORDERS_URL")])
def test_the_single_user_rotation_fails_consumers_that_reread_the_dotenv(
    tmp_path: Path, real_world: Server, key: str, variable: str
) -> None:
    path = write_project(tmp_path, BASELINE, {".gitignore": ".env\n"})
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=real_world).code == 0
    probe = Probe(from_dotenv(tmp_path / ".env", variable), workers=2).start()
    try:
        probe.wait(successes=3)
        marks = rotate_under(probe, real_world, path, key, 5)
    finally:
        whole = probe.stop()
    failed = [r.failures for r in per_rotation(probe, marks)]
    assert sum(failed) > 0, f"no failed connection in 5 rotations: {failed}"
    assert whole.failures == sum(failed)  # every failure fell inside a rotation's window
    assert whole.held_drops == 0 and whole.held_failures == 0, whole  # the open session survives
    assert all("password" in e or "Access denied" in e for e in whole.errors), whole.errors
