"""Hostile inputs from the second attack round: template bombs in a dry-run, deep flow nesting, a
hep.gg that answers about another database, base URLs with queries, credentials with control
characters, escape sequences from the API, Markdown that claimed success after a failed List."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cliutil import invoke, write_project
from tests.conftest import Server

TEMPLATE_PROJECT = """
version: 1
environments: {prod: {}}
databases:
  a:
    outputs:
      - template: t.j2
        path: out.txt
"""
BOMBS = [
    "{{ ('x' * 100000)|replace('x', 'x' * 100000) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ ('x' * 1000000).join(['a'] * 1000) }}",
    "{{ ('a\\n' * 100000)|indent(10000) }}",
    "{% for i in range(2000) %}{{ 'x' * 1000000 }}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{{ 'x'|center(999999999) }}",
    "{{ 'x'.ljust(999999999) }}",
    "{{ 2 ** 100000 }}",
]


@pytest.mark.parametrize("bomb", BOMBS)
def test_template_bombs_are_refused_quickly_by_validate(tmp_path: Path, bomb: str) -> None:
    project = write_project(tmp_path / "p", TEMPLATE_PROJECT, {"t.j2": bomb + "\n"})
    started = time.monotonic()
    result = invoke(["validate", "-f", str(project)])
    assert result.code == 1 and "t.j2" in result.err and result.err.count("\n") == 1
    assert "refused in templates" in result.err or "renders more than" in result.err
    assert time.monotonic() - started < 5


def test_a_template_that_never_ends_is_stopped(tmp_path: Path) -> None:
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    project = write_project(tmp_path / "p", TEMPLATE_PROJECT, {"t.j2": loop})
    started = time.monotonic()
    result = invoke(["validate", "-f", str(project)])
    assert result.code == 1 and "took longer than 10 s" in result.err
    assert time.monotonic() - started < 20


def test_ordinary_templates_still_render(tmp_path: Path) -> None:
    source = "{{ 'ab' * 3 }} {{ '%05d' % 42 }} {{ '{:>8}'.format('x') }} {{ 'a\\nb'|indent(4) }} {{ 2 ** 10 }}"
    project = write_project(tmp_path / "p", TEMPLATE_PROJECT, {"t.j2": source})
    assert invoke(["validate", "-f", str(project)]).code == 0


def test_deep_flow_nesting_is_a_located_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nenvironments: {s: {}}\nx: " + "[" * 30000 + "]" * 30000 + "\n")
    result = invoke(["validate", "-f", str(path)])
    assert result.code == 1 and result.err == f"Error: {path}:3:67: nesting is too deep\n"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999", "http://u:pw@[::1", "http://127.0.0.1:1/?token=S3CRETPW", "http://h/#S3CRETPW"],
)
def test_bad_base_urls_are_one_line_and_never_echoed(tmp_path: Path, url: str) -> None:
    project = write_project(tmp_path / "p", "version: 1\nenvironments: {prod: {}}\ndatabases: {a: {}}\n")
    result = invoke(["plan", "-f", str(project)], env={"HEPGG_URL": url, "HEPGG_DB_KEY": "k" * 20})
    assert result.code == 1 and result.err.startswith("Error: HEPGG_URL must be 'local' or an http(s) base URL")
    assert "S3CRETPW" not in result.err and "internal error" not in result.err


def test_a_credential_with_non_ascii_characters_is_a_clear_error(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", "version: 1\nenvironments: {prod: {}}\ndatabases: {a: {}}\n")
    result = invoke(["plan", "-f", str(project)], server=server, env={"HEPGG_DB_KEY": "hepgg_db_SECRÉTX"})
    assert result.code == 1 and "HEPGG_DB_KEY holds characters no credential has" in result.err
    assert "SECR" not in result.err


class _Liar(BaseHTTPRequestHandler):
    """A hep.gg that answers a Reveal of one database with another's credentials, and puts terminal
    escapes in an error message."""

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.endswith("/databases"):
            self._send(200, {"ok": True, "data": {"databases": [{"id": "ID1", "name": "a-prod", "engine": "mariadb"}]}})
        else:
            victim = {"id": "ID2", "name": "victim", "engine": "mariadb", "password": "pw-of-victim-xyz"}
            victim["connectionString"] = "mysql://u:pw-of-victim-xyz@h:3306/d"
            self._send(200, {"ok": True, "data": victim})

    def do_POST(self) -> None:
        self._send(500, {"ok": False, "error": "boom\x1b]0;pwn\x07\x1b[2J" + "x" * 5000})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def liar() -> Any:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_answer_about_another_database_is_refused_and_nothing_is_written(tmp_path: Path, liar: str) -> None:
    body = 'version: 1\nenvironments: {prod: {}}\ndatabases:\n  a:\n    outputs:\n      - dotenv: .env\n        keys: {P: "{{ db.password }}"}\n'
    project = write_project(tmp_path / "p", body)
    result = invoke(["apply", "-f", str(project), "--auto-approve"], env={"HEPGG_URL": liar, "HEPGG_DB_KEY": "k" * 20})
    assert result.code == 1 and "the answer is about another database" in result.out
    assert not (project.parent / ".env").exists()
    assert "pw-of-victim" not in result.out + result.err


def test_escape_sequences_and_novels_from_the_api_are_neutralised(tmp_path: Path, liar: str) -> None:
    project = write_project(tmp_path / "p", "version: 1\nenvironments: {prod: {}}\ndatabases: {b: {}}\n")
    result = invoke(["apply", "-f", str(project), "--auto-approve"], env={"HEPGG_URL": liar, "HEPGG_DB_KEY": "k" * 20})
    assert result.code == 1 and "boom" in result.out
    assert "\x1b" not in result.out + result.err and "\x07" not in result.out + result.err
    assert max(len(line) for line in result.out.splitlines()) < 600


def test_markdown_never_claims_success_when_an_environment_could_not_be_listed(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", "version: 1\nenvironments: {prod: {}}\ndatabases: {a: {}}\n")
    result = invoke(
        ["plan", "-f", str(project), "--markdown"], env={"HEPGG_URL": "http://127.0.0.1:9", "HEPGG_DB_KEY": "k" * 20}
    )
    assert result.code == 1 and "No changes" not in result.out and "connection refused" in result.out
