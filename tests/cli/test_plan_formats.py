"""What a reader of each format sees (issue 22, item 9): the Markdown plan lists the outputs the text
plan lists; the JSON plan shows a kind's own fields only (a database's ``engine`` and ``database_id``,
an id's ``type``, neither for an upload); ``state show`` has a readable text form (the default on a
terminal) beside its JSON. Through the CLI against the local hep.gg.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from hepinfra.render import json_schema
from tests.cliutil import invoke, write_project
from tests.conftest import ENV, Server, record_artifact

KEY_ENV = {"HEPINFRA_STATE_KEY": "correct horse battery staple"}

MANIFEST = """
version: 1
environments:
  prod: {}
databases:
  shop:
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
      - template: app.json.j2
        path: "deploy/{{ env }}/app.json"
ids:
  token:
    type: nanoid
    length: 24
    outputs:
      - dotenv: .env
        keys: {TOKEN: "{{ id.value }}"}
uploads:
  logo:
    file: logo.txt
    outputs:
      - dotenv: .env
        keys: {LOGO_URL: "{{ upload.url }}"}
"""
FILES = {"logo.txt": "a logo\n", "app.json.j2": '{"url": {{ db.connection_string | json }}}\n'}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "p", MANIFEST, FILES)


def test_the_markdown_plan_lists_the_outputs_the_text_plan_lists(project: Path, server: Server) -> None:
    text = invoke(["plan", "-f", str(project)], server=server, env=KEY_ENV)
    assert text.code == 0, text.err
    assert [line.strip() for line in text.out.splitlines() if line.strip().startswith(">")] == [
        "> .env",
        "> deploy/prod/app.json",
        "> .env",
        "> .env",
    ]
    markdown = invoke(["plan", "-f", str(project), "--markdown"], server=server, env=KEY_ENV)
    assert markdown.code == 0, markdown.err
    table = [line for line in markdown.out.splitlines() if line.startswith("|")]
    assert table == [
        "| | address | action | outputs | why |",
        "|---|---|---|---|---|",
        "| `+` | `prod/databases.shop` | create | `.env`, `deploy/prod/app.json` | not on hep.gg yet |",
        "| `+` | `prod/ids.token` | create | `.env` | not minted yet |",
        "| `+` | `prod/uploads.logo` | create | `.env` | 'logo.txt' is not uploaded yet |",
    ]


def test_the_json_plan_shows_only_the_fields_a_kind_has(project: Path, server: Server) -> None:
    result = invoke(["plan", "-f", str(project), "--json"], server=server, env=KEY_ENV)
    assert result.code == 0, result.err
    doc = result.json()
    jsonschema.validate(doc, json_schema())
    changes = {c["address"]: c for c in doc["changes"]}
    database, token, logo = changes["prod/databases.shop"], changes["prod/ids.token"], changes["prod/uploads.logo"]
    assert database["engine"] == "mariadb" and "database_id" in database and "type" not in database
    assert token["type"] == "nanoid" and "engine" not in token and "database_id" not in token
    assert not {"engine", "type", "database_id"} & set(logo)
    with pytest.raises(jsonschema.ValidationError):  # the schema holds them to it: no engine on a whim
        jsonschema.validate({**doc, "changes": [{**token, "tpye": "nanoid"}]}, json_schema())


TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
DIGEST = re.compile(r"\b[0-9a-f]{12}…")


def test_state_show_text_is_readable_and_json_stays_the_default_off_a_terminal(project: Path, server: Server) -> None:
    applied = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=KEY_ENV)
    assert applied.code == 0, applied.out + applied.err
    shown = invoke(["state", "show", "-f", str(project), "--format", "text", "prod/ids.token"], server=server)
    assert shown.code == 0, shown.err
    assert DIGEST.sub("DIGEST", TIME.sub("TIME", shown.out)) == (
        "prod/ids.token (id)\n"
        "  key             token\n"
        "  type            nanoid\n"
        "  options digest  DIGEST\n"
        "  ciphertext      (encrypted; `hepinfra output` shows the value)\n"
        "  value digest    DIGEST\n"
        "  managed since   TIME\n"
        "  rotated at      TIME\n"
        "  rotations       0\n"
        "  bound           lineage+address\n"
        "outputs: 1\n"
        "  .env (dotenv)\n"
        "    digest             DIGEST\n"
        "    password digest    DIGEST\n"
        "    definition digest  DIGEST\n"
        "    keys               TOKEN\n"
        "    written at         TIME\n"
        "pending journal: none\n"
    )
    database = invoke(["state", "show", "-f", str(project), "--format", "text", "prod/databases.shop"], server=server)
    assert database.out.startswith(
        "prod/databases.shop (database)\n  key            shop\n  name           shop-prod\n"
    )
    assert "outputs: 2\n  .env (dotenv)\n" in database.out and "  deploy/prod/app.json (template)\n" in database.out
    piped = invoke(["state", "show", "-f", str(project), "prod/ids.token"], server=server)  # stdout is no terminal
    assert json.loads(piped.out)["address"] == "prod/ids.token"
    assert json.loads(piped.out) == json.loads(
        invoke(["state", "show", "-f", str(project), "--format", "json", "prod/ids.token"], server=server).out
    )


def test_state_show_prints_text_on_a_terminal(project: Path, server: Server) -> None:
    applied = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=KEY_ENV)
    assert applied.code == 0, applied.out + applied.err
    controller, terminal = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HEPGG_", "HEPINFRA_"))}
    environ.update({**ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url})
    proc = subprocess.run(
        [sys.executable, "-m", "hepinfra", "state", "show", "-f", str(project), "prod/uploads.logo"],
        env=environ,
        stdout=terminal,
        stderr=subprocess.PIPE,
        timeout=60,
    )
    os.close(terminal)
    out = b""
    try:
        while chunk := os.read(controller, 65536):
            out += chunk
    except OSError:  # the terminal's other end is closed: everything was read
        pass
    os.close(controller)
    text = out.decode().replace("\r\n", "\n")
    record_artifact("state show on a terminal", text)
    assert proc.returncode == 0, proc.stderr
    assert text.startswith("prod/uploads.logo (upload)\n  key            logo\n  file           logo.txt\n"), text
    assert text.endswith("pending journal: none\n")
