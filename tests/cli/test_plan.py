"""``hepinfra plan`` against the emulator over loopback: every action, error, warning and format."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from hepinfra.render import json_schema
from hepinfra.state import codec
from tests.cliutil import BASIC, BASIC_FILES, invoke, write_project
from tests.conftest import HTTP, KEY, KEY_OTHER, Server

DBS = "/api/v1/db/databases"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "proj", BASIC, BASIC_FILES)


def plan_json(project: Path, server: Server, *args: str) -> dict:  # type: ignore[type-arg]
    result = invoke(["plan", "-f", str(project), "--json", *args], server=server)
    assert result.code in (0, 1), result.err
    doc = result.json()
    jsonschema.validate(doc, json_schema())
    return doc  # type: ignore[no-any-return]


def actions(doc: dict) -> dict[str, tuple[str, list[str]]]:  # type: ignore[type-arg]
    return {c["address"]: (c["action"], c["reasons"]) for c in doc["changes"]}


def apply(project: Path, server: Server, *args: str) -> None:
    result = invoke(["apply", "-f", str(project), "--auto-approve", *args], server=server)
    assert result.code == 0, result.out + result.err


def api(server: Server, method: str, path: str = "", key: str = KEY, **kw: object) -> dict:  # type: ignore[type-arg]
    r = HTTP.request(method, server.url + DBS + path, headers={"Authorization": f"Bearer {key}"}, timeout=10, **kw)  # type: ignore[arg-type]
    return r.json()["data"]  # type: ignore[no-any-return]


def edit_state(project: Path, env: str, **update: object) -> None:
    path = project.parent / ".hepinfra" / "state" / f"{env}.json"
    state = codec.decode(path.read_bytes(), str(path))
    path.write_bytes(codec.encode(state.model_copy(update=update)))


def test_create_then_noop_with_detailed_exit_codes(project: Path, server: Server) -> None:
    first = invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server)
    assert first.code == 2
    assert "+ prod/databases.shop will be created as 'shop-prod' (postgres)" in first.out
    assert "Plan: 1 to create, 0 to adopt, 0 to rotate, 0 to render, 0 to forget." in first.out
    doc = plan_json(project, server)
    assert actions(doc) == {"prod/databases.shop": ("create", ["not on hep.gg yet"])}
    assert doc["summary"]["create"] == 1 and doc["has_changes"] and not doc["has_errors"]
    apply(project, server)
    again = invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server)
    assert again.code == 0 and "No changes." in again.out


def test_adopt_an_existing_database_without_rotating(project: Path, server: Server) -> None:
    made = api(server, "POST", json={"name": "shop-prod", "engine": "postgres"})
    doc = plan_json(project, server)
    action, reasons = actions(doc)["prod/databases.shop"]
    assert action == "adopt" and "taken over without rotating" in reasons[0]
    apply(project, server)
    assert server.password_valid(made["dbUser"], made["password"])  # adopting did not rotate
    assert made["password"] in (project.parent / ".env.prod").read_text()


def test_rotation_due_by_age_and_requested(project: Path, server: Server) -> None:
    apply(project, server)
    assert actions(plan_json(project, server))["prod/databases.shop"][0] == "noop"
    requested = plan_json(project, server, "--rotate", "shop")
    assert actions(requested)["prod/databases.shop"] == ("rotate", ["requested"])
    assert actions(plan_json(project, server, "--rotate", "prod/databases.shop"))["prod/databases.shop"][0] == "rotate"
    path = project.parent / ".hepinfra" / "state" / "prod.json"
    state = codec.decode(path.read_bytes(), "s")
    old = datetime.now(UTC) - timedelta(days=31, hours=2)
    db = state.databases["shop"].model_copy(update={"rotated_at": old})
    path.write_bytes(codec.encode(state.model_copy(update={"databases": {"shop": db}})))
    action, reasons = actions(plan_json(project, server))["prod/databases.shop"]
    assert action == "rotate" and reasons == ["due: last rotated 31d ago (every 30d)"]


@pytest.mark.parametrize(
    "address,message",
    [
        ("nope", "--rotate nope: no database 'nope' is declared"),
        ("staging/databases.shop", "environment 'staging' is not selected"),
    ],
)
def test_bad_rotate_address_is_an_error_before_any_call(
    project: Path, server: Server, address: str, message: str
) -> None:
    result = invoke(["plan", "-f", str(project), "--rotate", address], server=server)
    assert result.code == 1 and message in result.err and server.requests() == []


def test_interrupted_rotation_is_finished_not_repeated(project: Path, server: Server) -> None:
    from hepinfra.state.model import JournalEntry

    apply(project, server)
    path = project.parent / ".hepinfra" / "state" / "prod.json"
    state = codec.decode(path.read_bytes(), "s")
    entry = JournalEntry(
        op="rotate",
        database="shop",
        name="shop-prod",
        database_id=state.databases["shop"].id,
        started_at=datetime.now(UTC),
        outputs=(".env.prod", "deploy/prod/shop.json"),
    )
    path.write_bytes(codec.encode(state.model_copy(update={"journal": (entry,)})))
    doc = plan_json(project, server)
    change = next(c for c in doc["changes"] if c["address"] == "prod/databases.shop")
    assert change["action"] == "rotate" and change["finish_rotation"] is True
    assert "finishing an interrupted rotation" in change["reasons"][0]
    apply(project, server)
    assert not [r for r in server.requests() if r["path"].endswith("/rotate")]  # Reveal, never a rotate


def test_interrupted_create_is_adopted_by_name(project: Path, server: Server) -> None:
    from hepinfra.state.model import JournalEntry, State

    api(server, "POST", json={"name": "shop-prod", "engine": "postgres"})  # the POST that "succeeded"
    state = State(
        environment="prod",
        journal=(JournalEntry(op="create", database="shop", name="shop-prod", started_at=datetime.now(UTC)),),
    )
    path = project.parent / ".hepinfra" / "state" / "prod.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(codec.encode(state))
    action, reasons = actions(plan_json(project, server))["prod/databases.shop"]
    assert action == "adopt" and reasons == ["finishing an interrupted create: found by name"]


def test_render_reasons_missing_edited_stale_and_definition(project: Path, server: Server) -> None:
    apply(project, server)
    root = project.parent
    (root / ".env.prod").unlink()
    action, reasons = actions(plan_json(project, server))["prod/databases.shop"]
    assert action == "render" and reasons == [".env.prod: missing"]
    apply(project, server)

    (root / "deploy/prod/shop.json").write_text("{}")
    assert actions(plan_json(project, server))["prod/databases.shop"][1] == [
        "deploy/prod/shop.json: edited since it was written"
    ]
    apply(project, server)

    db_id = api(server, "GET")["databases"][0]["id"]
    api(server, "POST", f"/{db_id}/rotate")  # behind hepinfra's back
    action, reasons = actions(plan_json(project, server))["prod/databases.shop"]
    assert action == "render" and reasons == [
        ".env.prod: holds an old password",
        "deploy/prod/shop.json: holds an old password",
    ]
    assert (
        actions(plan_json(project, server, "--no-refresh"))["prod/databases.shop"][0] == "noop"
    )  # no Reveal, no way to know
    apply(project, server)

    (root / "shop.json.j2").write_text('{"url": {{ db.connection_string | json }}}\n')
    assert actions(plan_json(project, server))["prod/databases.shop"][1] == [
        "deploy/prod/shop.json: its definition in the manifest changed"
    ]


def test_forget_says_the_database_stays(project: Path, server: Server) -> None:
    apply(project, server)
    project.write_text(
        BASIC.replace("  shop:\n", "  other:\n    environments: [prod]\n  shop:\n    environments: []\n", 1)
    )
    doc = plan_json(project, server)
    action, reasons = actions(doc)["prod/databases.shop"]
    assert action == "forget" and "hep.gg cannot delete databases, so it stays on the account" in reasons[0]
    text = invoke(["plan", "-f", str(project)], server=server).out
    assert "- prod/databases.shop will no longer be managed: 'shop-prod' stays on hep.gg" in text


def test_engine_mismatch_blocks_with_a_fix(project: Path, server: Server) -> None:
    api(server, "POST", json={"name": "shop-prod", "engine": "mariadb"})
    result = invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server)
    assert result.code == 1
    assert "'shop-prod' is a mariadb database on hep.gg, but the manifest declares postgres" in result.err
    assert "no API changes an engine" in result.err and result.err.startswith("Error: prod/databases.shop: ")
    assert "No changes" not in result.out
    doc = plan_json(project, server)
    assert doc["has_errors"] and doc["diagnostics"][0]["severity"] == "error"
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 1


def test_renamed_platform_name_is_an_error(project: Path, server: Server) -> None:
    apply(project, server)
    project.write_text(BASIC.replace("    engine: postgres\n", '    engine: postgres\n    name: "shop2-{{ env }}"\n'))
    doc = plan_json(project, server)
    errors = [d for d in doc["diagnostics"] if d["severity"] == "error"]
    assert (
        len(errors) == 1
        and "from 'shop-prod' to 'shop2-prod', but hep.gg cannot rename a database" in errors[0]["message"]
    )
    assert "hepinfra state rm prod/databases.shop" in errors[0]["hint"]


def test_missing_key_is_a_blocking_error_for_that_environment(tmp_path: Path, server: Server) -> None:
    project = write_project(
        tmp_path / "p",
        """
        version: 1
        environments:
          prod: {db_key_env: PROD_KEY}
          dev: {}
        databases:
          shop: {}
    """,
    )
    result = invoke(["plan", "-f", str(project), "--json"], server=server)
    assert result.code == 1
    doc = result.json()
    assert doc["diagnostics"] == [
        {
            "severity": "error",
            "env": "prod",
            "address": None,
            "message": "no database key for environment 'prod'",
            "hint": "export PROD_KEY",
        }
    ]
    assert actions(doc) == {"dev/databases.shop": ("create", ["not on hep.gg yet"])}
    ok = invoke(["plan", "-f", str(project), "--json"], server=server, env={"PROD_KEY": KEY_OTHER})
    assert ok.code == 0


def test_env_specific_key_variable_wins(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", "version: 1\nenvironments: {staging: {}}\ndatabases: {shop: {}}\n")
    api(server, "POST", json={"name": "shop-staging"}, key=KEY_OTHER)
    doc = plan_json(project, server)  # HEPGG_DB_KEY's account: nothing there
    assert actions(doc)["staging/databases.shop"][0] == "create"
    result = invoke(["plan", "-f", str(project), "--json"], server=server, env={"HEPGG_DB_KEY_STAGING": KEY_OTHER})
    assert actions(result.json())["staging/databases.shop"][0] == "adopt"


def test_warnings_for_unmanaged_and_statuses(project: Path, server: Server) -> None:
    api(server, "POST", json={"name": "legacy"})
    made = api(server, "POST", json={"name": "shop-prod", "engine": "postgres"})
    server.control("PATCH", f"/databases/{made['id']}", json={"status": "over_quota"})
    doc = plan_json(project, server)
    warnings = [d for d in doc["diagnostics"] if d["severity"] == "warning"]
    messages = sorted(w["message"] for w in warnings)
    assert messages == [
        "'shop-prod' has status over_quota",
        "1 database(s) on the account of prod are not managed: legacy",
    ]
    server.control("PATCH", f"/databases/{made['id']}", json={"status": "disabled"})
    assert any("has status disabled" in d["message"] for d in plan_json(project, server)["diagnostics"])
    text = invoke(["plan", "-f", str(project)], server=server).out
    assert "Warning: prod: 1 database(s) on the account of prod are not managed: legacy" in text


def test_no_refresh_makes_exactly_one_call_per_environment(tmp_path: Path, server: Server) -> None:
    project = write_project(
        tmp_path / "p", BASIC.replace("  prod: {}\n", "  prod: {}\n  dev: {}\n  qa: {}\n"), BASIC_FILES
    )
    apply(project, server)
    server.control("DELETE", "/requests")
    plan_json(project, server, "--no-refresh")
    log = server.requests()
    assert [(r["method"], r["path"]) for r in log] == [("GET", DBS)] * 3
    server.control("DELETE", "/requests")
    plan_json(project, server)
    assert sorted(r["path"].count("/") for r in server.requests()) == [4, 4, 4, 5, 5, 5]  # 3 lists + 3 reveals


def test_markdown_is_fit_for_a_pull_request(project: Path, server: Server) -> None:
    api(server, "POST", json={"name": "legacy"})
    result = invoke(["plan", "-f", str(project), "--markdown"], server=server)
    assert result.code == 0
    assert result.out.startswith("### hepinfra plan: 1 to create, 0 to adopt, 0 to rotate, 0 to render, 0 to forget.")
    assert "| `+` | `prod/databases.shop` | create | `.env.prod`, `deploy/prod/shop.json` | not on hep.gg yet |" in (
        result.out
    )
    assert ":warning: **warning** `prod`: 1 database(s)" in result.out


def test_colour_only_on_a_tty_and_never_with_no_color(project: Path, server: Server) -> None:
    from hepinfra.render import text
    from hepinfra.values import Plan

    assert "\x1b[" not in invoke(["plan", "-f", str(project)], server=server).out  # not a TTY
    doc = plan_json(project, server)
    plan = Plan.model_validate(
        {k: v for k, v in doc.items() if k not in ("summary", "has_changes", "has_errors", "fingerprint")}
    )
    assert "\x1b[" in text(plan, colour=True) and "\x1b[" not in text(plan, colour=False)


def test_saved_plan_is_pinned_and_applies_once(project: Path, server: Server, tmp_path: Path) -> None:
    planfile = tmp_path / "tfplan.json"
    assert invoke(["plan", "-f", str(project), "--out", str(planfile)], server=server).code == 0
    saved = json.loads(planfile.read_text())
    assert saved["environments"]["prod"] == {
        "lineage": None,
        "serial": 0,
        "remote_digest": saved["environments"]["prod"]["remote_digest"],
    }
    result = invoke(["apply", str(planfile), "-f", str(project)], server=server)
    assert result.code == 0, result.err
    assert "created" in result.out
    again = invoke(["apply", str(planfile), "-f", str(project)], server=server)
    assert again.code == 1 and "changed since the plan was made (serial 0 -> " in again.err
    assert "a plan file applies once" in again.err


def test_saved_plan_refused_when_remote_or_manifest_changed(project: Path, server: Server, tmp_path: Path) -> None:
    apply(project, server)
    planfile = tmp_path / "p.json"
    assert invoke(["plan", "-f", str(project), "--out", str(planfile), "--rotate", "shop"], server=server).code == 0
    api(server, "POST", json={"name": "surprise"})
    result = invoke(["apply", str(planfile), "-f", str(project)], server=server)
    assert result.code == 1 and "the databases on hep.gg for 'prod' changed since the plan was made" in result.err
    assert invoke(["plan", "-f", str(project), "--out", str(planfile), "--rotate", "shop"], server=server).code == 0
    (project.parent / "shop.json.j2").write_text("changed {{ db.user }}\n")
    result = invoke(["apply", str(planfile), "-f", str(project)], server=server)
    assert result.code == 1 and "the manifest or one of its templates changed since the plan was made" in result.err
    assert not [r for r in server.requests() if r["path"].endswith("/rotate")]


@pytest.mark.parametrize(
    "content,message",
    [
        ("not json", "not a hepinfra plan file (not JSON, or nested too deeply)"),
        ('{"format_version": 7}', "not a hepinfra plan file of format 1"),
        ('{"format_version": 1}', "created_at: Field required"),
    ],
)
def test_bad_plan_file_is_one_line(project: Path, server: Server, tmp_path: Path, content: str, message: str) -> None:
    planfile = tmp_path / "bad.json"
    planfile.write_text(content)
    result = invoke(["apply", str(planfile), "-f", str(project)], server=server)
    assert result.code == 1 and message in result.err and result.err.count("\n") == 1
    assert server.requests() == []


def test_plan_with_errors_is_not_saved(project: Path, server: Server, tmp_path: Path) -> None:
    api(server, "POST", json={"name": "shop-prod", "engine": "mongo"})
    planfile = tmp_path / "p.json"
    assert invoke(["plan", "-f", str(project), "--out", str(planfile)], server=server).code == 1
    assert not planfile.exists()


def test_plan_files_hold_no_secret(project: Path, server: Server, tmp_path: Path) -> None:
    apply(project, server)
    planfile = tmp_path / "p.json"
    invoke(["plan", "-f", str(project), "--out", str(planfile), "--rotate", "shop"], server=server)
    blob = planfile.read_text() + (project.parent / ".hepinfra/state/prod.json").read_text()
    for secret in server.issued_secrets():
        assert secret not in blob


def test_shared_account_name_clash_between_environments(tmp_path: Path, server: Server) -> None:
    project = write_project(
        tmp_path / "p",
        """
        version: 1
        environments: {a: {}, b: {}}
        databases:
          shop: {name: shop-shared}
    """,
    )
    doc = invoke(["plan", "-f", str(project), "--json"], server=server).json()
    assert any(
        "also declared in environment 'a', which uses the same hep.gg account" in d["message"]
        for d in doc["diagnostics"]
    )
