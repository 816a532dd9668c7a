"""Errors with secrets in scope: a template that fails only with the real values, a filter that
raises, an internal error whose message holds a password. No secret may reach the text output,
``--json`` events, the summary, or the HEPINFRA_DEBUG traceback (the session scan checks every
captured output too)."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest

from hepinfra.emulator.app import EmulatorConfig
from tests.cliutil import invoke, write_project
from tests.conftest import HTTP, KEY, Server

# Each fails only with real values (the guard keeps validate's placeholder dry-run green), the way a
# data-dependent template does, and each error message would quote the value (or a transform of it).
FAILING = [
    "{{ vars.hosts[db.password] }}",
    "{{ vars.hosts[db.password | upper] }}",
    "{{ vars.hosts[db.password | reverse | join] }}",
    "{{ vars.hosts[db.connection_string] }}",
    "{{ db.password | attr(db.password) }}",
    "{{ {}[db.user ~ db.password] }}",
    "{{ db.password ~ vars.missing }}",
    "{{ (db.password | list)[100] }}",
    "{{ db.password + 1 }}",
    "{{ db.port + db.password }}",
    "{{ db.password * db.password }}",
    "{{ range(db.password) | list }}",
    "{{ vars.hosts[(db.password | list | sort | join)] }}",
]
GUARD = "{% if db.password != 'placeholder-password' %}X{% endif %}"
PROJECT = """
version: 1
environments:
  prod: {vars: {hosts: {placeholder-password: h}}}
databases:
  shop:
    engine: postgres
    outputs:
      - dotenv: .env
        keys: {A: "{{ db.host }}", B: %s}
      - template: t.j2
        path: out/t.conf
"""


def live_secrets(server: Server) -> list[str]:

    headers = {"Authorization": f"Bearer {KEY}"}
    rows = HTTP.get(server.url + "/api/v1/db/databases", headers=headers, timeout=10).json()["data"]["databases"]
    out = []
    for row in rows:
        data = HTTP.get(f"{server.url}/api/v1/db/databases/{row['id']}", headers=headers, timeout=10).json()["data"]
        password = data["password"]
        out += [password, password.upper(), password[::-1], data["connectionString"]]
    return out


@pytest.mark.parametrize("failing", FAILING)
def test_a_template_failing_on_real_values_never_shows_them(tmp_path: Path, server: Server, failing: str) -> None:
    key_template = json.dumps(GUARD.replace("X", failing))
    project = write_project(tmp_path / "p", PROJECT % key_template, {"t.j2": GUARD.replace("X", failing) + "\n"})
    assert invoke(["validate", "-f", str(project)]).code == 0, "the placeholder dry-run passes"
    text = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    events = invoke(["apply", "-f", str(project), "--auto-approve", "--json"], server=server)
    assert text.code == 1 and events.code == 1
    assert "created; but render of .env failed" in text.out  # the step that failed, not "create failed"
    assert "render of out/t.conf failed" in text.out
    assert "template failed at line 1 with the real values" in text.out
    assert "its message is withheld" in text.out
    failed = [json.loads(line) for line in events.out.splitlines() if '"failed"' in line]
    assert failed and failed[0]["action"] == "render" and failed[0]["step"] == "render"
    assert {f["output"] for f in failed[0]["failures"]} == {".env", "out/t.conf"}
    blob = text.out + text.err + events.out + events.err
    for secret in live_secrets(server):
        assert secret not in blob


def test_a_filter_that_raises_names_the_key_not_the_value(tmp_path: Path, make_world) -> None:  # type: ignore[no-untyped-def]
    server = make_world(EmulatorConfig(password_chars="aZ'`$b", password_length=24))
    project = write_project(tmp_path / "p", PROJECT % '"{{ db.password | dotenv }}"', {"t.j2": "ok\n"})
    result = invoke(["apply", "-f", str(project), "--auto-approve", "--json"], server=server)
    assert result.code == 1 and "dotenv filter: the value cannot be quoted" in result.out
    for secret in live_secrets(server):
        assert secret not in result.out + result.err


def test_the_debug_traceback_of_an_internal_error_is_redacted(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", PROJECT % '"{{ db.user }}"', {"t.j2": "ok\n"})

    def explode(self, file, target, context, digest, **kw):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"bug while writing {context['db']['password']} / {context['db']['connection_string']}")

    with mock.patch("hepinfra.outputs.template.TemplateSink.write", explode):
        plain = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
        debug = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env={"HEPINFRA_DEBUG": "1"})
    assert plain.code == 1 and "internal error RuntimeError" in plain.err
    assert debug.code == 1 and "Traceback (most recent call last)" in debug.err
    assert "RuntimeError: bug while writing [redacted] / [redacted]" in debug.err
    for secret in live_secrets(server):
        assert secret not in plain.err + debug.err + plain.out + debug.out


def test_validate_dry_runs_each_database_with_its_own_engine_and_real_types(tmp_path: Path) -> None:
    body = """
version: 1
environments: {prod: {}}
databases:
  pg:
    engine: postgres
    outputs:
      - dotenv: pg.env
        keys: {NEXT_PORT: "{{ db.port + 1 }}", X: "{%% if db.engine == 'postgres' %%}{{ %s }}{%% endif %%}"}
  maria:
    engine: mariadb
    outputs:
      - dotenv: maria.env
        keys: {SCHEME: "{{ db.connection_string.split(':')[0] }}", PORT: "{{ '%%05d' %% db.port }}"}
"""
    ok = write_project(tmp_path / "ok", body % "db.host")
    result = invoke(["validate", "-f", str(ok)])
    assert result.code == 0, result.err
    bad = write_project(tmp_path / "bad", body % "db.hots")
    result = invoke(["validate", "-f", str(bad)])
    assert result.code == 1 and "databases.pg.outputs[0].keys.X" in result.err and "hots" in result.err
