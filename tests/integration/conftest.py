"""Fixtures shared by integration test modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hepinfra.emulator.app import EmulatorConfig
from hepinfra.emulator.engines import open_engine
from tests.conftest import Server


@pytest.fixture
def roles_world(make_world: Callable[..., Server], postgres_server: Any, mariadb_server: Any) -> Callable[..., Server]:
    """A local hep.gg whose postgres and mariadb databases are real (``rotation: alternating``);
    ``role_privilege=True``: the emulator's switch that grants the hep.gg users the privilege to make
    roles (withheld by default)."""

    def build(**config: Any) -> Server:
        servers = {"postgres": open_engine("postgres", postgres_server.url),
                   "mariadb": open_engine("mariadb", mariadb_server.url)}  # fmt: skip
        return make_world(EmulatorConfig(servers=servers, **config))

    return build
