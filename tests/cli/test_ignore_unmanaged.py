"""``ignore_unmanaged:`` (under ``defaults:`` and per environment) and databases a manifest forgot:
neither is warned about as an unmanaged database on the account, nor classed as drift. Through the
CLI against the emulator over loopback."""

from __future__ import annotations

import json
from pathlib import Path

from hepinfra.github.drift import classify
from hepinfra.state import codec
from hepinfra.values import Plan
from tests.cliutil import invoke, write_project
from tests.conftest import HTTP, KEY, Server

MANIFEST = """
version: 1
defaults:
  ignore_unmanaged: DEFAULTS
environments:
  prod:
    ignore_unmanaged: PROD
  dev:
    db_key_env: HEPGG_DB_KEY_DEV
databases:
  shop:
    engine: postgres
    outputs: [{dotenv: ".env.{{ env }}", keys: {URL: "{{ db.connection_string }}"}}]
"""


def add(server: Server, name: str) -> None:
    r = HTTP.post(
        server.url + "/api/v1/db/databases",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"name": name, "engine": "postgres"},
        timeout=10,
    )
    assert r.status_code < 300, r.text


def project_with(tmp_path: Path, defaults: str, prod: str) -> Path:
    return write_project(tmp_path / "proj", MANIFEST.replace("DEFAULTS", defaults).replace("PROD", prod))


def warnings(project: Path, server: Server, *args: str) -> list[str]:
    result = invoke(["plan", "-f", str(project), "--json", *args], server=server)
    assert result.code == 0, result.err
    doc = result.json()
    return [d["message"] for d in doc["diagnostics"] if "not managed" in d["message"]]


def drift_classes(project: Path, server: Server, *args: str) -> list[tuple[str, str, str]]:
    doc = invoke(["plan", "-f", str(project), "--json", *args], server=server).json()
    return classify(Plan.model_validate({k: v for k, v in doc.items() if k in Plan.model_fields}))


def test_names_and_globs_from_defaults_and_the_environment(tmp_path: Path, server: Server) -> None:
    for name in ("legacy", "scratch-1", "scratch-2", "analytics-eu", "keep-me"):
        add(server, name)
    bare = project_with(tmp_path / "bare", "[]", "[]")
    assert warnings(bare, server, "-e", "prod") == [
        "5 database(s) on the account of prod are not managed: legacy, scratch-1, scratch-2, analytics-eu, keep-me"
    ]
    project = project_with(tmp_path, '["scratch-*", legacy]', '["analytics-??"]')
    assert warnings(project, server, "-e", "prod") == ["1 database(s) on the account of prod are not managed: keep-me"]
    assert [c for c in drift_classes(project, server, "-e", "prod") if c[0] == "undeclared-database"] == [
        ("undeclared-database", "prod", "1 database(s) on the account of prod are not managed: keep-me")
    ]
    # dev has only the defaults' patterns (prod, unselected, shares its key: shop-prod is prod's)
    dev = invoke(["plan", "-f", str(project), "--json", "-e", "dev"], server=server, env={"HEPGG_DB_KEY_DEV": KEY})
    assert [d["message"] for d in dev.json()["diagnostics"] if "not managed" in d["message"]] == [
        "2 database(s) on the account of dev are not managed: analytics-eu, keep-me"
    ]
    everything = project_with(tmp_path / "all", '["*"]', "[]")
    assert warnings(everything, server, "-e", "prod") == []
    assert not [c for c in drift_classes(everything, server, "-e", "prod") if c[0] == "undeclared-database"]


def test_a_forgotten_database_is_not_warned_about(tmp_path: Path, server: Server) -> None:
    project = project_with(tmp_path, "[]", "[]")
    two = project.read_text() + "  orders: {engine: postgres}\n"
    project.write_text(two)
    assert invoke(["apply", "-f", str(project), "--auto-approve", "-e", "prod"], server=server).code == 0
    assert warnings(project, server, "-e", "prod") == []
    project.write_text(two.replace("  orders: {engine: postgres}\n", ""))  # no longer declared
    plan = invoke(["plan", "-f", str(project), "-e", "prod"], server=server)
    assert "- prod/databases.orders will no longer be managed" in plan.out
    assert "not managed" not in plan.out  # it is still managed until the forget is applied
    assert invoke(["apply", "-f", str(project), "--auto-approve", "-e", "prod"], server=server).code == 0
    path = project.parent / ".hepinfra" / "state" / "prod.json"
    state = codec.decode(path.read_bytes(), str(path))
    assert "orders" not in state.databases and list(state.forgotten.values()) == ["orders-prod"]
    assert warnings(project, server, "-e", "prod") == []  # on the account, unmanaged, and not warned about
    assert not [c for c in drift_classes(project, server, "-e", "prod") if c[0] == "undeclared-database"]
    add(server, "stranger")  # one the manifest never managed is still warned about
    assert warnings(project, server, "-e", "prod") == ["1 database(s) on the account of prod are not managed: stranger"]
    # declared again: adopted (not warned about, not created), and the forgotten record goes at the next forget
    project.write_text(two)
    doc = invoke(["plan", "-f", str(project), "--json", "-e", "prod"], server=server).json()
    assert {c["address"]: c["action"] for c in doc["changes"]}["prod/databases.orders"] == "adopt"


def test_state_without_forgotten_databases_is_written_as_before(tmp_path: Path, server: Server) -> None:
    project = project_with(tmp_path, "[]", "[]")
    assert invoke(["apply", "-f", str(project), "--auto-approve", "-e", "prod"], server=server).code == 0
    raw = json.loads((project.parent / ".hepinfra" / "state" / "prod.json").read_text())
    assert "forgotten" not in raw


def test_bad_patterns_are_one_line_with_the_position(tmp_path: Path, server: Server) -> None:
    for bad, what in (
        ('[""]', "defaults.ignore_unmanaged[0]: "),
        ("shop", "defaults.ignore_unmanaged: must be a list"),
    ):
        project = project_with(tmp_path, bad, "[]")
        result = invoke(["validate", "-f", str(project)])
        assert result.code == 1, result.out
        line = result.err.strip()
        assert len(line.splitlines()) == 1 and "hepinfra.yaml:4:" in line and what in line
    assert server.requests() == []
