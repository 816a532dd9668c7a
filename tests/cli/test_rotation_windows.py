"""Rotation windows, ``--max-rotations`` and failed rotations in a row (issue 23, item 5), through the CLI
against the local hep.gg over loopback. ``HEPINFRA_TEST_NOW`` puts the plan at a chosen time."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema

from hepinfra.render import json_schema
from hepinfra.state import codec
from tests.cliutil import invoke, write_project
from tests.conftest import Server

THURSDAY = "2026-12-03T10:00:00+00:00"  # the window below is closed: it opens Saturday 02:00 UTC
SATURDAY = "2026-12-05T03:00:00+00:00"  # inside it

MANIFEST = """
version: 1
environments: {prod: {}}
defaults:
  rotate_window: {start: "23:00", end: "01:00", tz: Europe/Zurich}
databases:
  shop:
    rotate_every: 30d
    rotate_window: {days: [sat, sun], start: "02:00", end: "04:00", tz: UTC}
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
  blog:
    rotate_every: 30d
    rotate_window: null
    outputs:
      - dotenv: .env
        keys: {BLOG_URL: "{{ db.connection_string }}"}
ids:
  session:
    type: uuid
    rotate_every: 30d
    outputs:
      - dotenv: .env
        keys: {SESSION: "{{ id.value }}"}
"""


STATE_KEY = {"HEPINFRA_STATE_KEY": "correct horse battery staple"}


def run(project: Path, server: Server, *args: str, now: str | None = None) -> Any:
    return invoke(
        [*args, "-f", str(project)], server=server, env={**STATE_KEY, **({"HEPINFRA_TEST_NOW": now} if now else {})}
    )


def plan_json(project: Path, server: Server, *args: str, now: str) -> dict[str, Any]:
    result = run(project, server, "plan", "--json", *args, now=now)
    assert result.code == 0, result.out + result.err
    doc: dict[str, Any] = result.json()
    jsonschema.validate(doc, json_schema())
    return doc


def by_address(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["address"]: c for c in doc["changes"]}


def age(project: Path, now: str, **days: int) -> None:
    """Set each resource's last rotation ``days`` before ``now`` (databases by key, ids as ids_KEY)."""
    path = project.parent / ".hepinfra/state/prod.json"
    state = codec.decode(path.read_bytes(), "s")
    at = datetime.fromisoformat(now)
    dbs = {k: v.model_copy(update={"rotated_at": at - timedelta(days=days[k])}) if k in days else v
           for k, v in state.databases.items()}  # fmt: skip
    ids = {k: v.model_copy(update={"rotated_at": at - timedelta(days=days[f"ids_{k}"])}) if f"ids_{k}" in days else v
           for k, v in state.ids.items()}  # fmt: skip
    path.write_bytes(codec.encode(state.model_copy(update={"databases": dbs, "ids": ids})))


def rotations(server: Server) -> int:
    return len([r for r in server.requests() if r["method"] == "POST" and r["path"].endswith("/rotate")])


def test_a_due_rotation_waits_for_its_window_and_the_plan_says_until_when(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", MANIFEST)
    assert run(project, server, "apply", "--auto-approve").code == 0
    age(project, THURSDAY, shop=31, blog=31, ids_session=31)

    doc = plan_json(project, server, now=THURSDAY)
    changes = by_address(doc)
    shop, blog, session = changes["prod/databases.shop"], changes["prod/databases.blog"], changes["prod/ids.session"]
    assert shop["action"] == "noop" and shop["held"] == {
        "reason": "window",
        "until": "2026-12-05T02:00:00Z",
        "message": "due: last rotated 31d ago (every 30d); waits for its rotation window, next opening "
        "2026-12-05 02:00 UTC",
    }
    assert blog["action"] == "rotate" and blog["held"] is None  # rotate_window: null opts out of the default
    # the id has the default window (every day 23:00-01:00 in Zurich: 22:00 UTC in December)
    assert session["action"] == "noop" and session["held"]["until"] == "2026-12-03T22:00:00Z"
    assert "next opening 2026-12-03 23:00 Europe/Zurich" in session["held"]["message"]

    text = run(project, server, "plan", now=THURSDAY).out
    assert "Rotations held:" in text
    assert (
        "prod/databases.shop: due: last rotated 31d ago (every 30d); waits for its rotation window, next opening "
        "2026-12-05 02:00 UTC" in text
    )
    assert "Plan: 0 to create, 0 to adopt, 1 to rotate" in text
    markdown = run(project, server, "plan", "--markdown", now=THURSDAY).out
    assert "**Rotations held:**" in markdown and "- prod/ids.session: due: last rotated 31d ago" in markdown

    # apply rotates only what is not held; a --rotate request is never held
    server.control("DELETE", "/requests")
    assert run(project, server, "apply", "--auto-approve", now=THURSDAY).code == 0
    assert rotations(server) == 1
    assert run(project, server, "apply", "--auto-approve", "--rotate", "shop", now=THURSDAY).code == 0
    assert rotations(server) == 2

    # inside the window (Saturday 03:00 UTC; and 00:30 in Zurich, across midnight) the due ones rotate
    age(project, SATURDAY, shop=40, ids_session=40)
    inside = by_address(plan_json(project, server, now=SATURDAY))
    assert inside["prod/databases.shop"]["action"] == "rotate" and inside["prod/databases.shop"]["held"] is None
    assert inside["prod/ids.session"]["held"]["until"] == "2026-12-05T22:00:00Z"
    across = by_address(plan_json(project, server, now="2026-12-04T23:30:00+00:00"))
    assert across["prod/ids.session"]["action"] == "rotate"


def test_max_rotations_holds_the_least_overdue_and_a_saved_plan_keeps_the_cap(tmp_path: Path, server: Server) -> None:
    manifest = "version: 1\nenvironments: {prod: {}}\ndatabases:\n" + "".join(
        f"  {k}:\n    rotate_every: 30d\n" for k in ("a", "b", "c", "d")
    )
    project = write_project(tmp_path / "p", manifest)
    assert run(project, server, "apply", "--auto-approve").code == 0
    age(project, THURSDAY, a=35, b=60, c=45)  # d is not due

    doc = plan_json(project, server, "--max-rotations", "2", now=THURSDAY)
    assert doc["max_rotations"] == 2
    changes = by_address(doc)
    assert [changes[f"prod/databases.{k}"]["action"] for k in "abcd"] == ["noop", "rotate", "rotate", "noop"]
    assert changes["prod/databases.a"]["held"] == {
        "reason": "max-rotations",
        "until": None,
        "message": "due: last rotated 35d ago (every 30d); waits for a later run: --max-rotations is taken by "
        "rotations more overdue",
    }
    text = run(project, server, "plan", "--max-rotations", "2", now=THURSDAY).out
    assert "--max-rotations 2: 1 due rotation(s) left for a later run" in text
    # a requested rotation is never held, and takes the cap first
    asked = by_address(plan_json(project, server, "--max-rotations", "1", "--rotate", "d", now=THURSDAY))
    assert [asked[f"prod/databases.{k}"]["action"] for k in "abcd"] == ["noop", "noop", "noop", "rotate"]
    assert {asked[f"prod/databases.{k}"]["held"]["reason"] for k in "abc"} == {"max-rotations"}

    # a saved plan records the cap and is planned again with it
    saved = project.parent / "plan.json"
    assert run(project, server, "plan", "--max-rotations", "1", "--out", str(saved), now=THURSDAY).code == 0
    assert json.loads(saved.read_text())["max_rotations"] == 1
    refused = invoke(["apply", str(saved), "--max-rotations", "3"], server=server)
    assert refused.code == 1 and "--max-rotations and --target go to 'plan' instead" in refused.err
    server.control("DELETE", "/requests")
    applied = invoke(["apply", str(saved)], server=server, env={**STATE_KEY, "HEPINFRA_TEST_NOW": THURSDAY})
    assert applied.code == 0, applied.out + applied.err
    assert rotations(server) == 1
    left = by_address(plan_json(project, server, "--max-rotations", "1", now=THURSDAY))
    assert [left[f"prod/databases.{k}"]["action"] for k in "abc"] == ["noop", "noop", "rotate"]


def test_a_database_failing_to_rotate_three_times_in_a_row_is_held_until_forced(tmp_path: Path, server: Server) -> None:
    project = write_project(
        tmp_path / "p", "version: 1\nenvironments: {prod: {}}\ndatabases:\n  shop: {rotate_every: 30d}\n"
    )
    assert run(project, server, "apply", "--auto-approve").code == 0
    state_file = project.parent / ".hepinfra/state/prod.json"
    for attempt in (1, 2, 3):
        age(project, THURSDAY, shop=31)
        # List, the Reveal before the rotate, then hep.gg refuses the rotate (429, every retry)
        server.faults(retry_after=0, script=[None, None, *["429"] * 5])
        failed = run(project, server, "apply", "--auto-approve", "--no-refresh", now=THURSDAY)
        assert failed.code == 1 and "rotate failed" in failed.out, failed.out + failed.err
        state = codec.decode(state_file.read_bytes(), "s")
        assert state.databases["shop"].failed_rotations == attempt
        assert state.journal == ()  # refused outright: nothing to finish, the next plan sees a due rotation
    held = by_address(plan_json(project, server, now=THURSDAY))["prod/databases.shop"]
    assert held["action"] == "noop" and held["held"]["reason"] == "failed-rotations"
    assert held["held"]["message"] == (
        "due: last rotated 31d ago (every 30d); its rotation failed 3 times in a row (max_failed_rotations: 3): "
        "no longer retried automatically; --rotate prod/databases.shop forces it"
    )
    server.control("DELETE", "/requests")
    assert run(project, server, "apply", "--auto-approve", now=THURSDAY).code == 0
    assert rotations(server) == 0
    forced = run(project, server, "apply", "--auto-approve", "--rotate", "prod/databases.shop", now=THURSDAY)
    assert forced.code == 0 and rotations(server) == 1
    assert "failed_rotations" not in json.loads(state_file.read_text())["databases"]["shop"]  # reset: absent


def test_bad_rotation_windows_are_one_located_line(tmp_path: Path) -> None:
    base = "version: 1\nenvironments: {prod: {}}\ndatabases:\n  shop:\n    rotate_window: "
    cases = {
        '{start: "02:00", end: "04:00", tz: Mars/Olympus}': (5, "unknown time zone 'Mars/Olympus'"),
        '{days: [sat, sunday], start: "02:00", end: "04:00"}': (5, "must be one of 'mon', 'tue'"),
        '{start: "25:00", end: "04:00"}': (5, 'must be a time of day "HH:MM"'),
        '{start: "02:00", end: "02:00"}': (5, "start and end are the same time"),
    }
    for i, (window, (line, message)) in enumerate(cases.items()):
        path = write_project(tmp_path / str(i), base + window + "\n")
        result = invoke(["validate", "-f", str(path)])
        assert result.code == 1 and "Traceback" not in result.err
        assert f"hepinfra.yaml:{line}:" in result.err and message in result.err, result.err
        assert "databases.shop.rotate_window" in result.err
    # unquoted times are read as written (YAML 1.1 would read 23:30 as a number)
    path = write_project(tmp_path / "ok", base + "{start: 23:30, end: 01:15}\n")
    assert invoke(["validate", "-f", str(path)]).code == 0
    defaults = write_project(
        tmp_path / "d", "version: 1\nenvironments: {prod: {}}\ndefaults:\n  rotate_window: {start: '1:00', end: x}\n"
    )
    result = invoke(["validate", "-f", str(defaults)])
    assert result.code == 1 and "defaults.rotate_window.start" in result.err
