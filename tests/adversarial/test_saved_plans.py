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
        f"Error: {plan_file}: the plan file is not signed for environment 'production' by a runner holding its key "
        "(edited, or made with another key or by an older hepinfra); nothing was applied (hint: make a new plan)\n"
    )
    assert rotations(server) == before and service_calls(server, "idgen") == minted
    doc["rotate"] = [change["address"]]  # the options the file records are covered too
    plan_file.write_text(json.dumps(doc))
    again = run(["apply", str(plan_file)], server)
    assert again.code == 1 and "is not signed for environment 'production'" in again.err
    assert rotations(server) == before and service_calls(server, "idgen") == minted


def test_an_edited_reason_or_output_is_refused(tmp_path: Path, server: Server) -> None:
    _, plan_file, doc = saved(tmp_path, server, "--rotate", "shop")
    change = next(c for c in doc["changes"] if c["action"] == "rotate")
    change["outputs"] = change["outputs"][:1]
    plan_file.write_text(json.dumps(doc))
    result = run(["apply", str(plan_file)], server)
    assert result.code == 1 and "is not signed for environment 'production'" in result.err
    assert set(rotations(server).values()) == {0}


def test_a_plan_made_again_at_apply_must_give_the_same_change_set() -> None:
    """What the signature cannot see: the world moved on (an action, an output, a change gone or new)."""
    from datetime import UTC, datetime

    from hepinfra.apply.pins import check_same
    from hepinfra.errors import StalePlanError
    from hepinfra.values import Action, Change, OutputChange, Plan

    def plan(*changes: Change) -> Plan:
        return Plan(created_at=datetime.now(UTC), manifest="m", manifest_digest="d", refreshed=True,
                    environments={}, changes=changes)  # fmt: skip

    shop = Change(address="p/databases.shop", env="p", key="shop", action=Action.ROTATE, name="s", engine="postgres",
                  reasons=("due: last rotated 31d ago (every 30d)",),
                  outputs=(OutputChange(path=".env", kind="dotenv", reason="with the new credentials"),))  # fmt: skip
    later = shop.model_copy(update={"reasons": ("due: last rotated 32d ago (every 30d)",)})
    check_same(plan(shop), plan(later), "f")  # ages are not the change set
    for now, words in [
        (shop.model_copy(update={"action": Action.NOOP}), "plans to rotate p/databases.shop, which a plan made now does not"),
        (shop.model_copy(update={"outputs": ()}), "plans rotate of p/databases.shop, which a plan made now does not give "
         "(outputs differs)"),
    ]:  # fmt: skip
        with pytest.raises(StalePlanError) as refused:
            check_same(plan(shop), plan(now), "f")
        assert words in refused.value.message
    with pytest.raises(StalePlanError) as refused:
        check_same(plan(), plan(shop), "f")
    assert "plans no change of p/databases.shop, which a plan made now would rotate" in refused.value.message


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
