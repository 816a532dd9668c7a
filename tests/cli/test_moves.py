"""Renames: ``moved:`` entries and ``hepinfra state mv``, through the CLI against the local hep.gg.

A rename is a state-only step: no API call but List, no rotation, no output written, outputs and the
rotation history kept; an id's value is sealed again under its new address and still opens to the same
value. Bad entries are one located line before any call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from dotenv import dotenv_values

from hepinfra.state.backend import LockInfo
from hepinfra.state.local import LocalBackend
from hepinfra.state.model import State
from tests.cliutil import Result, invoke, write_project
from tests.conftest import ISSUED, Server

KEY_ENV = {"HEPINFRA_STATE_KEY": "correct horse battery staple"}

BEFORE = """
version: 1
environments:
  prod: {}
  staging: {}
databases:
  catalog:
    engine: postgres
    name: "catalog-{{ env }}"
    outputs:
      - dotenv: "out/{{ env }}/.env"
        keys: {CATALOG_URL: "{{ db.connection_string }}"}
ids:
  session:
    type: uuid
    outputs:
      - dotenv: "out/{{ env }}/.env"
        keys: {SESSION: "{{ id.value }}"}
uploads:
  logo:
    file: logo.txt
    outputs:
      - dotenv: "out/{{ env }}/.env"
        keys: {LOGO_URL: "{{ upload.url }}"}
"""
RENAMED = BEFORE.replace("  catalog:", "  products:").replace("  session:", "  sess:").replace("  logo:", "  brand:")
MOVED = """
moved:
  - from: databases.catalog
    to: databases.products
  - from: ids.session
    to: ids.sess
  - from: uploads.logo
    to: uploads.brand
"""


def run(args: list[str], server: Server, *, secret_ok: bool = False) -> Result:
    return invoke(args, server=server, env=KEY_ENV, secret_ok=secret_ok)


def ok(args: list[str], server: Server) -> Result:
    result = run(args, server)
    assert result.code in (0, 2), result.err
    return result


def applied(root: Path, server: Server) -> Path:
    path = write_project(root, BEFORE, {"logo.txt": "a logo\n"})
    ok(["apply", "-f", str(path), "--auto-approve"], server)
    ok(["rotate", "catalog", "-f", str(path), "--auto-approve"], server)  # a rotation history to keep
    for env in ("prod", "staging"):
        found = dotenv_values(root / f"out/{env}/.env")
        ISSUED.update(v or "" for k, v in found.items() if k != "LOGO_URL")  # an upload's URL is public
    return path


def state_of(root: Path, env: str = "prod") -> State:
    found = LocalBackend(root / ".hepinfra/state").read(env)
    assert found is not None
    return found


def outputs(root: Path) -> dict[str, bytes]:
    return {env: (root / f"out/{env}/.env").read_bytes() for env in ("prod", "staging")}


def session_value(root: Path, server: Server, address: str) -> str:
    shown = run(["output", address, "-f", str(root / "hepinfra.yaml"), "--format", "json"], server, secret_ok=True)
    assert shown.code == 0, shown.err
    value: str = json.loads(shown.out)["SESSION"]
    return value


def mutations(server: Server, since: int) -> list[str]:
    """Every request after the first ``since`` but the reads a plan makes (List, Reveal: GETs)."""
    return [f"{r['method']} {r['path']}" for r in server.requests()[since:] if r["method"] != "GET"]


def assert_kept(root: Path, before: State, after: State, files: dict[str, bytes]) -> None:
    """The renamed resources hold what the old keys held: database id, rotation history, upload URL,
    output records (under the new keys); the outputs are byte for byte the same."""
    old, new = before.databases["catalog"], after.databases["products"]
    assert (new.id, new.name, new.rotations, new.rotated_at, new.managed_since) == (
        old.id, old.name, old.rotations, old.rotated_at, old.managed_since)  # fmt: skip
    assert old.rotations == 1 and new.key == "products"
    assert after.uploads["brand"].url == before.uploads["logo"].url
    assert after.ids["sess"].rotated_at == before.ids["session"].rotated_at
    assert after.ids["sess"].ciphertext != before.ids["session"].ciphertext  # sealed again, new address
    assert after.ids["sess"].bound == "lineage+address"
    assert set(after.databases) == {"products"} and set(after.ids) == {"sess"} and set(after.uploads) == {"brand"}
    assert {r.database for r in after.outputs.values()} == {"products", "ids.sess", "uploads.brand"}
    assert after.lineage == before.lineage and outputs(root) == files


def test_moved_entries_rename_every_kind_without_an_api_call(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "p"
    path = applied(root, server)
    before, files = state_of(root), outputs(root)
    value = session_value(root, server, "prod/ids.session")
    write_project(root, RENAMED + MOVED)
    seen = len(server.requests())

    plan = ok(["plan", "-f", str(path), "--json"], server).json()
    moves = {c["address"]: c["moved_to"] for c in plan["changes"] if c["action"] == "move"}
    assert moves == {
        f"{env}/{kind}.{old}": f"{env}/{kind}.{new}"
        for env in ("prod", "staging")
        for kind, old, new in (("databases", "catalog", "products"), ("ids", "session", "sess"),
                               ("uploads", "logo", "brand"))
    }  # fmt: skip
    assert [c["action"] for c in plan["changes"] if c["action"] != "noop"] == ["move"] * 6  # never forget + adopt
    assert plan["summary"]["move"] == 6 and plan["summary"]["forget"] == plan["summary"]["adopt"] == 0
    assert not plan["diagnostics"]
    text = ok(["plan", "-f", str(path)], server).out
    assert "~> prod/databases.catalog has moved to prod/databases.products" in text
    assert "~> staging/ids.session has moved to staging/ids.sess" in text
    assert "Plan: 0 to create, 0 to adopt, 0 to rotate, 0 to render, 0 to forget, 6 to move." in text
    assert "delete it in the dashboard" not in text
    markdown = ok(["plan", "-f", str(path), "--markdown"], server).out
    assert "| `~>` | `prod/uploads.logo` ~> `prod/uploads.brand` | move |" in markdown

    result = run(["apply", "-f", str(path), "--auto-approve", "--json"], server)
    assert result.code == 0, result.err
    events = [json.loads(line) for line in result.out.splitlines()]
    done = [e for e in events if e["event"] == "done"]
    assert len(done) == 6 and {e["action"] for e in done} == {"move"}
    assert mutations(server, seen) == []  # no create, rotate, mint or upload: List and nothing else
    assert not [r for r in server.requests()[seen:] if "reveal" in r["path"] or "rotate" in r["path"]]
    assert_kept(root, before, state_of(root), files)
    assert session_value(root, server, "prod/ids.sess") == value  # still opens, to the same value

    again = run(["plan", "-f", str(path), "--detailed-exitcode"], server)  # the moved: entries stay: no-op
    assert again.code == 0 and "No changes." in again.out


def test_state_mv_renames_under_the_lock_with_a_new_serial_and_a_backup(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "p"
    path = applied(root, server)
    before, files = state_of(root), outputs(root)
    value = session_value(root, server, "prod/ids.session")
    write_project(root, RENAMED)
    seen = len(server.requests())

    backend = LocalBackend(root / ".hepinfra/state")
    held = backend.lock("prod", LockInfo(command="hepinfra apply", pid=os.getpid()))
    locked = run(["state", "mv", "prod/databases.catalog", "prod/databases.products", "-f", str(path)], server)
    assert locked.code == 1 and f"locked by {held.user}@{held.host}" in locked.err
    assert "Traceback" not in locked.err and state_of(root) == before
    backend.unlock("prod", held.id)

    for old, new in (("databases.catalog", "databases.products"), ("ids.session", "ids.sess"),
                     ("uploads.logo", "uploads.brand")):  # fmt: skip
        serial = state_of(root).serial
        moved = run(["state", "mv", f"prod/{old}", new, "-f", str(path)], server)  # DST: in SRC's environment
        assert moved.code == 0, moved.err
        assert "nothing changed on hep.gg" in moved.out
        assert state_of(root).serial == serial + 1  # one write, as every state write: serial and backup
        kept = json.loads((root / ".hepinfra/state/prod.json.backup").read_text())
        assert kept["serial"] == serial
    assert mutations(server, seen) == []
    assert_kept(root, before, state_of(root), files)
    assert session_value(root, server, "prod/ids.sess") == value
    plan = ok(["plan", "-f", str(path), "-e", "prod", "--json"], server).json()
    assert [c for c in plan["changes"] if c["action"] != "noop"] == [] and not plan["diagnostics"]


def test_state_mv_refusals_change_nothing(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "p"
    path = write_project(root, BEFORE.replace("databases:\n", "databases:\n  other: {}\n"), {"logo.txt": "x\n"})
    ok(["apply", "-f", str(path), "--auto-approve"], server)
    before = state_of(root)
    cases = {
        ("prod/databases.catalog", "prod/databases.other"): "prod/databases.other: already in the state of "
        "environment 'prod'; nothing was moved",
        ("prod/databases.catalog", "staging/databases.products"): "a move stays within one environment",
        ("prod/databases.catalog", "prod/ids.catalog"): "a move keeps its kind (databases, not ids)",
        ("prod/databases.nope", "prod/databases.products"): "prod/databases.nope: not in the state of environment",
        ("prod/databases.catalog", "prod/databases.a.b"): "is not an address",
    }
    for (src, dst), message in cases.items():
        refused = run(["state", "mv", src, dst, "-f", str(path)], server)
        assert refused.code == 1 and message in refused.err, refused.err
        assert len(refused.err.strip().splitlines()) == 1 and "Traceback" not in refused.err
    assert state_of(root) == before


def test_a_rename_without_moved_says_so_and_never_advises_deleting_the_kept_database(
    tmp_path: Path, server: Server
) -> None:
    root = tmp_path / "p"
    path = applied(root, server)
    write_project(root, BEFORE.replace("  catalog:", "  products:"))
    result = ok(["plan", "-f", str(path), "-e", "prod"], server)
    out = result.out
    assert "Warning: prod/databases.catalog: looks like a rename: add a moved: entry" in out
    assert "moved: [{from: databases.catalog, to: databases.products}]" in out
    assert "delete it in the dashboard" not in out
    assert "databases.products declares its platform name 'catalog-prod'" in out
    markdown = ok(["plan", "-f", str(path), "-e", "prod", "--markdown"], server).out
    assert "looks like a rename" in markdown and "delete it in the dashboard" not in markdown


def test_chained_moves_and_a_move_with_an_output_change_in_one_apply(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "p"
    path = applied(root, server)
    before = state_of(root)
    value = session_value(root, server, "prod/ids.session")
    ok(["apply", "-f", str(path), "--auto-approve"], server)
    # catalog -> products -> goods: state holds catalog, the chain takes it to goods in one move; the id
    # gets a new output in the same apply (written after the move, from the value sealed again)
    chained = (
        BEFORE.replace("  catalog:", "  goods:")
        .replace("  session:", "  token:")
        .replace('keys: {SESSION: "{{ id.value }}"}', 'keys: {SESSION: "{{ id.value }}", TOKEN: "{{ id.value }}"}')
        + "moved:\n  - {from: databases.catalog, to: databases.products}\n"
        "  - {from: databases.products, to: databases.goods}\n  - {from: ids.session, to: ids.token}\n"
    )
    write_project(root, chained)
    plan = ok(["plan", "-f", str(path), "-e", "prod", "--json"], server).json()
    by_address = {c["address"]: c for c in plan["changes"]}
    move = by_address["prod/databases.catalog"]
    assert move["action"] == "move" and move["moved_to"] == "prod/databases.goods"
    assert "databases.catalog -> databases.products -> databases.goods" in move["reasons"][0]
    assert by_address["prod/ids.token"]["action"] == "render"
    seen = len(server.requests())
    result = run(["apply", "-f", str(path), "-e", "prod", "--auto-approve"], server)
    assert result.code == 0, result.err
    assert mutations(server, seen) == []
    after = state_of(root)
    assert after.databases["goods"].id == before.databases["catalog"].id
    assert after.databases["goods"].rotations == 1
    assert dotenv_values(root / "out/prod/.env")["TOKEN"] == value  # the render opened the re-sealed value
    assert session_value(root, server, "prod/ids.token") == value


@pytest.mark.parametrize(
    ("entries", "line", "message"),
    [
        ("  - from: staging/databases.catalog\n    to: prod/databases.products\n", 3,
         "a move stays within one environment: from is in 'staging', to in 'prod'"),
        ("  - from: databases.catalog\n    to: databases.nowhere\n", 3,
         "databases.nowhere is not declared: a moved: entry's to must be a declared resource"),
        ("  - from: databases.products\n    to: databases.products2\n", 2,
         "databases.products is still declared"),
        ("  - from: databases.catalog\n    to: ids.products\n", 3, "a move keeps its kind"),
        ("  - from: databases.a\n    to: databases.b\n  - from: databases.b\n    to: databases.a\n", 3,
         "moved: entries form a cycle: databases.a -> databases.b -> databases.a"),
        ("  - from: catalog\n    to: databases.products\n", 2, "'catalog' is not an address: write KIND.KEY"),
        ("  - from: databases.catalog\n    to: databases.products\n  - from: databases.catalog\n"
         "    to: databases.products\n", 4, "databases.catalog is already moved by moved: entry 1"),
        ("  - from: databases.catalog\n    too: databases.products\n", 3, "unknown key 'too' (did you mean 'to'?)"),
    ],
)  # fmt: skip
def test_bad_moved_entries_are_one_located_line_before_any_call(
    tmp_path: Path, server: Server, entries: str, line: int, message: str
) -> None:
    manifest = BEFORE.replace("  catalog:", "  products:") + "moved:\n" + entries
    path = write_project(tmp_path / "p", manifest, {"logo.txt": "x\n"})
    first = len(manifest.splitlines()) - len(entries.splitlines())  # the line of "moved:"
    for command in (["validate"], ["plan"]):
        result = run([*command, "-f", str(path)], server)
        err = result.err.strip()
        assert result.code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"hepinfra.yaml:{first + line - 1}:" in err and message in err, err
    assert server.requests() == []


def test_moving_into_a_state_that_holds_the_new_address_blocks_the_plan(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "p"
    path = applied(root, server)
    backend = LocalBackend(root / ".hepinfra/state")
    held = state_of(root)
    copy = held.databases["catalog"].model_copy(update={"key": "products"})
    backend.write("prod", held.model_copy(update={"databases": {**held.databases, "products": copy}}))
    write_project(root, RENAMED + MOVED)
    result = run(["plan", "-f", str(path), "-e", "prod"], server)
    assert result.code == 1
    assert "databases.products is in the state of 'prod' too, so the move cannot happen" in result.err
    refused = run(["apply", "-f", str(path), "-e", "prod", "--auto-approve"], server)
    assert refused.code == 1 and "nothing was applied" in refused.err
    assert set(state_of(root).databases) == {"catalog", "products"}


def test_a_saved_plan_applies_its_moves_and_an_edited_move_is_refused(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "p"
    path = applied(root, server)
    before = state_of(root)
    write_project(root, RENAMED + MOVED)
    planfile = root / "renames.plan"
    ok(["plan", "-f", str(path), "-e", "prod", "--out", str(planfile)], server)
    saved = json.loads(planfile.read_text())
    edited = root / "edited.plan"
    for change in saved["changes"]:
        if change["action"] == "move" and change["kind"] == "databases":
            change["moved_to"] = "prod/databases.elsewhere"
    edited.write_text(json.dumps(saved))
    refused = run(["apply", str(edited), "-f", str(path)], server)
    assert refused.code == 1 and "is a move no moved: entry of this manifest gives the pinned state" in refused.err
    assert len(refused.err.strip().splitlines()) == 1 and state_of(root) == before
    seen = len(server.requests())
    result = run(["apply", str(planfile), "-f", str(path)], server)
    assert result.code == 0, result.err
    assert mutations(server, seen) == []
    assert state_of(root).databases["products"].id == before.databases["catalog"].id


def test_a_move_that_changes_the_platform_name_is_blocked_with_the_way_out(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "p"
    path = applied(root, server)
    before = state_of(root)
    write_project(root, RENAMED.replace('    name: "catalog-{{ env }}"\n', "") + MOVED)  # name now products-<env>
    result = run(["apply", "-f", str(path), "-e", "prod", "--auto-approve"], server)
    assert result.code == 1 and "hep.gg cannot rename a database" in result.err
    assert "nothing was applied" in result.err and state_of(root) == before
