"""A saved plan file is data that others may write: ``apply PLANFILE`` plans again from the manifest,
state and hep.gg, and applies only if every change is the one the file holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEY, Server
from tests.integration.test_ids_uploads import MANIFEST, project, run, service_calls

WITH_DATABASES = MANIFEST.replace(
    "ids:\n",
    """databases:
  shop:
    engine: postgres
    outputs:
      - dotenv: "out/{{ env }}/.env"
        keys: {SHOP_URL: "{{ db.connection_string }}"}
      - template: conn.j2
        path: "out/{{ env }}/conn.txt"
ids:
""",
)


def rotations(server: Server) -> dict[str, int]:
    store = server.app.emu.store
    return {r["name"]: r["rotations"] for r in store.list_databases(store.account_of_db_key(KEY) or "")}


def saved(tmp_path: Path, server: Server, *args: str) -> tuple[Path, Path, dict[str, Any]]:
    path = project(tmp_path, WITH_DATABASES)
    (tmp_path / "conn.j2").write_text("{{ db.connection_string }}\n")
    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    plan_file = tmp_path / "plan.json"
    result = run(["plan", "-f", str(path), "--out", str(plan_file), *args], server)
    assert result.code == 0, result.err
    return path, plan_file, json.loads(plan_file.read_text())


@pytest.mark.parametrize("kind", ["databases", "ids"])
def test_a_noop_edited_into_a_rotation_is_refused(kind: str, tmp_path: Path, server: Server) -> None:
    _, plan_file, doc = saved(tmp_path, server)
    change = next(c for c in doc["changes"] if c["kind"] == kind and c["action"] == "noop")
    change.update(action="rotate", reasons=["requested"])
    plan_file.write_text(json.dumps(doc))
    before, minted = rotations(server), service_calls(server, "idgen")
    result = run(["apply", str(plan_file)], server)
    assert result.code == 1
    assert result.err == (
        f"Error: {plan_file}: the saved plan plans to rotate {change['address']}, which a plan made now does not; "
        "nothing was applied (edited, or the world changed since) (hint: make a new plan)\n"
    )
    assert rotations(server) == before and service_calls(server, "idgen") == minted


def test_an_edited_reason_or_output_is_refused(tmp_path: Path, server: Server) -> None:
    _, plan_file, doc = saved(tmp_path, server, "--rotate", "shop")
    change = next(c for c in doc["changes"] if c["action"] == "rotate")
    change["outputs"] = change["outputs"][:1]
    plan_file.write_text(json.dumps(doc))
    result = run(["apply", str(plan_file)], server)
    assert result.code == 1 and "(outputs differs)" in result.err
    assert set(rotations(server).values()) == {0}


def test_the_options_that_shaped_the_plan_are_applied_again(tmp_path: Path, server: Server) -> None:
    """--rotate is recorded in the file: the plan made again at apply rotates the same, once."""
    _, plan_file, doc = saved(tmp_path, server, "--rotate", "shop")
    assert doc["rotate"] == ["shop"]
    result = run(["apply", str(plan_file)], server)
    assert result.code == 0, result.err
    assert rotations(server) == {"shop-production": 1}
    again = run(["apply", str(plan_file)], server)
    assert again.code == 1  # the state moved on: a plan file is applied once


@pytest.mark.parametrize("named", ["/etc/hepinfra.yaml", "../other/hepinfra.yaml", "a/../../b.yaml", ""])
def test_a_plan_file_naming_a_manifest_outside_its_directory_is_refused(
    named: str, tmp_path: Path, server: Server
) -> None:
    _, plan_file, doc = saved(tmp_path, server)
    assert doc["manifest"] == "hepinfra.yaml"  # relative to the plan file's directory
    doc["manifest"] = named
    plan_file.write_text(json.dumps(doc))
    result = run(["apply", str(plan_file)], server)
    assert result.code == 1 and result.err.count("\n") == 1
    assert "not a path inside the plan file's directory; apply it with -f MANIFEST" in result.err
