"""Onboarding an account that already has databases (``hepinfra import``) and a new project
(``hepinfra init``), through the real CLI against the local hep.gg."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cliutil import invoke, write_project
from tests.conftest import Server, run

EMPTY = """
version: 1
environments: {prod: {}}
"""


def test_import_fifty_databases_adopts_them_all_and_rotates_nothing(tmp_path: Path, server: Server) -> None:
    engines = ["mariadb", "postgres", "mongo"]
    names = [f"svc{i:02d}-prod" if i % 2 else f"legacy_{i:02d}" for i in range(50)]

    async def fill() -> None:
        async with server.hepgg() as hub:
            for i, name in enumerate(names):
                await hub.databases().create(name, engines[i % 3])

    run(fill())
    path = write_project(tmp_path, EMPTY)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    before = len(server.requests())
    imported = invoke(
        ["import", "-e", "prod", "-f", str(path), "--out", str(tmp_path / "fragment.yaml")], server=server
    )
    assert imported.code == 0, imported.err
    assert imported.err == "50 database(s) to adopt from environment 'prod'\n"
    assert [r["method"] for r in server.requests()[before:]] == ["GET"]  # one List, nothing else
    fragment = (tmp_path / "fragment.yaml").read_text()
    assert "  svc01:\n    engine: postgres\n" in fragment  # hepinfra's default name: the key alone
    assert "  legacy_00:\n    engine: mariadb\n    name: legacy_00\n" in fragment
    path.write_text(path.read_text() + fragment)

    planned = invoke(["plan", "-f", str(path), "--json"], server=server)
    assert planned.code == 0, planned.err
    actions = [c["action"] for c in json.loads(planned.out)["changes"]]
    assert actions.count("adopt") == 50 and "create" not in actions, actions
    mark = len(server.requests())
    applied = invoke(["apply", "-f", str(path), "--auto-approve"], server=server)
    assert applied.code == 0, applied.err
    calls = [(r["method"], r["path"]) for r in server.requests()[mark:]]
    assert not [c for c in calls if c[0] != "GET"], calls  # adopted: no create, no rotate
    again = invoke(["import", "-e", "prod", "-f", str(path)], server=server)
    assert again.code == 0 and "databases:" not in again.out and "0 database(s)" in again.err


def test_import_refuses_an_existing_out_file_and_an_unknown_environment(tmp_path: Path, server: Server) -> None:
    path = write_project(tmp_path, EMPTY)
    (tmp_path / "taken.yaml").write_text("mine\n")
    taken = invoke(["import", "-e", "prod", "-f", str(path), "--out", str(tmp_path / "taken.yaml")], server=server)
    assert taken.code == 1 and taken.err.count("\n") == 1 and "the file exists" in taken.err
    assert (tmp_path / "taken.yaml").read_text() == "mine\n"
    unknown = invoke(["import", "-e", "qa", "-f", str(path)], server=server)
    assert unknown.code == 1 and unknown.err.count("\n") == 1 and "qa" in unknown.err
    assert server.requests() == []


def test_init_scaffolds_a_project_that_validates_and_never_overwrites(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hepinfra", "init", "--dir", str(tmp_path), "--url", "local"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".github/workflows/hepinfra.yaml").is_file()
    assert ".hepinfra/" in (tmp_path / ".gitignore").read_text().splitlines()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    valid = invoke(["validate", "-f", str(tmp_path / "hepinfra.yaml")])
    assert valid.code == 0 and "2 environment(s)" in valid.out, valid.err
    again = invoke(["init", "--dir", str(tmp_path)])
    assert again.code == 1 and again.err.count("\n") == 1 and "already there" in again.err
