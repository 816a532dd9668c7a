"""Hostile existing dotenv files, end to end through apply and rotate: multi-line values that hold
look-alike ``KEY=`` lines, unterminated quotes, CRLF and ``export`` lines, junk python-dotenv cannot
parse, duplicates of managed keys. Foreign entries stay byte for byte; the managed keys read back
exactly (python-dotenv); the plan is clean after; a key no longer declared is gone with its value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.cliutil import invoke, write_project
from tests.conftest import Server

MANIFEST = """
version: 1
environments: {prod: {}}
databases:
  shop:
    outputs:
      - dotenv: .env
        keys: {SHOP_PASSWORD: "{{ db.password }}", SHOP_URL: "{{ db.connection_string }}"}
"""

HOSTILE = {
    "cert-with-lookalike-lines": (
        'CERT="-----BEGIN CERTIFICATE-----\nSHOP_PASSWORD=inside-the-cert\nMIIB\n-----END CERTIFICATE-----"\nOTHER=1\n'
    ),
    "crlf-and-export": "export FIRST=1\r\nexport SHOP_PASSWORD=old\r\n# comment\r\nLAST='x y'\r\n",
    "unparseable-junk": "this is not dotenv\n=novalue\n   \n'quoted key'=1\nSHOP_URL=old\n",
    "duplicates": "SHOP_PASSWORD=one\nA=1\nSHOP_PASSWORD=two\nSHOP_PASSWORD=three\n",
    "single-quoted-multiline": "NOTE='line one\nSHOP_URL=not-a-key\nline three'\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_existing_files_keep_foreign_entries_and_get_exact_keys(
    tmp_path: Path, server: Server, name: str
) -> None:
    content = HOSTILE[name]
    project = write_project(tmp_path / "p", MANIFEST)
    file = project.parent / ".env"
    file.write_bytes(content.encode())
    foreign_before = {k: v for k, v in dotenv_values(file).items() if not k.startswith("SHOP_")}
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 0, result.out + result.err
    values = dotenv_values(file)
    shown = invoke(
        ["output", "prod/databases.shop", "-f", str(project), "--format", "json"], server=server, secret_ok=True
    )
    live = json.loads(shown.out)
    assert values["SHOP_PASSWORD"] == live["SHOP_PASSWORD"] and values["SHOP_URL"] == live["SHOP_URL"]
    assert {k: v for k, v in values.items() if not k.startswith("SHOP_")} == foreign_before
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server).code == 0
    assert invoke(["rotate", "shop", "-f", str(project), "--auto-approve"], server=server).code == 0
    assert {k: v for k, v in dotenv_values(file).items() if not k.startswith("SHOP_")} == foreign_before
    # drop a key from the manifest: it leaves the file with its value, foreign entries untouched
    project.write_text(MANIFEST.replace(', SHOP_URL: "{{ db.connection_string }}"', ""))
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    after = dotenv_values(file)
    assert "SHOP_URL" not in after and live["SHOP_URL"] not in file.read_text()
    assert {k: v for k, v in after.items() if not k.startswith("SHOP_")} == foreign_before
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server).code == 0


def test_a_managed_key_hidden_behind_an_unterminated_quote_is_refused(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", MANIFEST)
    file = project.parent / ".env"
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    broken = "BROKEN='unterminated\n" + file.read_text()
    file.write_text(broken)
    result = invoke(["rotate", "shop", "-f", str(project), "--auto-approve"], server=server)
    assert (
        result.code == 1 and "line 2: SHOP_PASSWORD sits in a part of the file that python-dotenv cannot" in result.out
    )
    assert file.read_text() == broken  # left exactly as it was
