"""``--target ADDR`` on plan, apply and rotate, through the CLI against the emulator over loopback: a
partial plan of only those resources, saying so in text, Markdown and JSON; a saved targeted plan
applies only its targets; an unknown target is refused before any call."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from hepinfra.changeset import fingerprint
from hepinfra.render import json_schema
from hepinfra.state import codec
from hepinfra.values import Plan
from tests.cliutil import invoke, write_project
from tests.conftest import Server

THREE = """
version: 1
environments:
  prod: {}
databases:
  a: {engine: postgres, outputs: [{dotenv: .env.a, keys: {A_URL: "{{ db.connection_string }}"}}]}
  b: {engine: postgres, outputs: [{dotenv: .env.b, keys: {B_URL: "{{ db.connection_string }}"}}]}
  c: {engine: mariadb, outputs: [{dotenv: .env.c, keys: {C_URL: "{{ db.connection_string }}"}}]}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "proj", THREE)


def creates(server: Server) -> list[dict[str, object]]:
    return [r for r in server.requests() if r["method"] == "POST" and r["path"].endswith("/databases")]


def state(project: Path) -> dict[str, object]:
    path = project.parent / ".hepinfra" / "state" / "prod.json"
    return dict(codec.decode(path.read_bytes(), str(path)).databases)


def test_plan_target_is_partial_in_text_markdown_and_json(project: Path, server: Server) -> None:
    text = invoke(["plan", "-f", str(project), "--target", "databases.a"], server=server)
    assert text.code == 0, text.err
    assert "+ prod/databases.a will be created" in text.out
    assert "databases.b" not in text.out and "databases.c" not in text.out
    assert "Partial plan: --target databases.a; 2 resource(s) left out." in text.out
    assert "Plan: 1 to create," in text.out

    md = invoke(["plan", "-f", str(project), "--target", "databases.a", "--markdown"], server=server)
    assert "**Partial plan:** `--target databases.a`; 2 resource(s) left out." in md.out
    assert "`prod/databases.a`" in md.out and "databases.b" not in md.out

    doc = json.loads(invoke(["plan", "-f", str(project), "--json", "--target", "databases.a"], server=server).out)
    jsonschema.validate(doc, json_schema())
    assert doc["targets"] == ["databases.a"] and doc["left_out"] == 2
    assert [c["address"] for c in doc["changes"]] == ["prod/databases.a"] and doc["summary"]["create"] == 1

    whole = json.loads(invoke(["plan", "-f", str(project), "--json"], server=server).out)
    assert whole["targets"] == [] and whole["left_out"] == 0 and whole["summary"]["create"] == 3
    assert "Partial plan" not in invoke(["plan", "-f", str(project)], server=server).out
    assert doc["fingerprint"] != whole["fingerprint"]  # different change sets
    assert doc["fingerprint"] == fingerprint(
        Plan.model_validate({k: v for k, v in doc.items() if k in Plan.model_fields})
    )


def test_apply_target_creates_only_it_and_writes_only_its_output(project: Path, server: Server) -> None:
    result = invoke(["apply", "-f", str(project), "--auto-approve", "--target", "prod/databases.a"], server=server)
    assert result.code == 0, result.err
    assert "Partial plan: --target prod/databases.a; 2 resource(s) left out." in result.out
    assert "Apply complete: 1 succeeded, 0 failed." in result.out
    assert len(creates(server)) == 1
    assert set(state(project)) == {"a"}
    assert (project.parent / ".env.a").exists()
    assert not (project.parent / ".env.b").exists() and not (project.parent / ".env.c").exists()
    rest = json.loads(invoke(["plan", "-f", str(project), "--json"], server=server).out)
    assert {c["address"]: c["action"] for c in rest["changes"]} == {
        "prod/databases.a": "noop",
        "prod/databases.b": "create",
        "prod/databases.c": "create",
    }


def test_several_targets_and_a_bare_key(project: Path, server: Server) -> None:
    doc = json.loads(
        invoke(["plan", "-f", str(project), "--json", "--target", "a", "--target", "c"], server=server).out
    )
    assert sorted(c["address"] for c in doc["changes"]) == ["prod/databases.a", "prod/databases.c"]
    assert doc["targets"] == ["a", "c"] and doc["left_out"] == 1


def test_rotate_with_target_leaves_other_changes_out(project: Path, server: Server) -> None:
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    (project.parent / ".env.b").unlink()  # b needs a render now
    before = len(server.requests())
    result = invoke(["rotate", "a", "-f", str(project), "--auto-approve", "--target", "a"], server=server)
    assert result.code == 0, result.err
    assert "~ prod/databases.a" in result.out and "databases.b" not in result.out
    assert "1 resource(s) left out" not in result.out and "2 resource(s) left out" in result.out
    log = server.requests()[before:]
    assert len([r for r in log if r["path"].endswith("/rotate")]) == 1
    assert not (project.parent / ".env.b").exists()  # left out: not rendered
    untargeted = invoke(["rotate", "a", "-f", str(project), "--auto-approve"], server=server)
    assert untargeted.code == 0 and (project.parent / ".env.b").exists()


def test_saved_targeted_plan_applies_only_its_target(project: Path, server: Server) -> None:
    planfile = project.parent / "a.plan"
    made = invoke(["plan", "-f", str(project), "--target", "databases.b", "--out", str(planfile)], server=server)
    assert made.code == 0, made.err
    assert json.loads(planfile.read_text())["targets"] == ["databases.b"]
    result = invoke(["apply", str(planfile)], server=server, cwd=project.parent)
    assert result.code == 0, result.out + result.err
    assert "Apply complete: 1 succeeded, 0 failed." in result.out
    assert len(creates(server)) == 1 and set(state(project)) == {"b"}
    refused = invoke(["apply", str(planfile), "--target", "databases.a"], server=server, cwd=project.parent)
    assert refused.code == 1 and "--target go to 'plan' instead" in refused.err


def test_a_saved_plan_whose_targets_were_widened_is_refused(project: Path, server: Server) -> None:
    planfile = project.parent / "a.plan"
    assert invoke(["plan", "-f", str(project), "--target", "a", "--out", str(planfile)], server=server).code == 0
    data = json.loads(planfile.read_text())
    data["targets"] = []  # re-planned without targets, the plan made now has 3 creates, the file 1
    planfile.write_text(json.dumps(data))
    result = invoke(["apply", str(planfile)], server=server, cwd=project.parent)
    assert result.code == 1 and "nothing was applied" in result.err
    assert creates(server) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["plan", "--target", "databases.zzz"],
            "--target databases.zzz: no database 'zzz' is declared in the "
            "selected environments nor held in their state",
        ),
        (["plan", "--target", "staging/a"], "--target staging/a: environment 'staging' is not selected"),
        (["apply", "--auto-approve", "--target", "ids.a"], "--target ids.a: no id 'a' is declared"),
        (["rotate", "a", "--auto-approve", "--target", "nope"], "--target nope: no database 'nope'"),
        (["rotate", "a", "--auto-approve", "--target", "b"], "--rotate prod/databases.a: the --target addresses leave"),
        (["plan", "--rotate", "ids.x", "--target", "a"], "--rotate ids.x: no id 'x' is declared"),
    ],
)
def test_unknown_target_is_one_line_and_no_call(project: Path, server: Server, args: list[str], message: str) -> None:
    result = invoke([*args, "-f", str(project)], server=server)
    assert result.code == 1
    assert message in result.err and len(result.err.strip().splitlines()) == 1
    assert server.requests() == []


def test_a_target_held_only_in_state_plans_its_forget(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "proj", THREE)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    project.write_text(THREE.replace("  c: {engine: mariadb", "  # c: {engine: mariadb").replace(
        "  b: {", "  b2: {"))  # fmt: skip
    doc = json.loads(invoke(["plan", "-f", str(project), "--json", "--target", "c"], server=server).out)
    assert {c["address"]: c["action"] for c in doc["changes"]} == {"prod/databases.c": "forget"}
    assert doc["left_out"] == 3  # a (noop), b (forget), b2 (adopt)
