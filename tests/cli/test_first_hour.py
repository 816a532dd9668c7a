"""A newcomer's first hour: saved plans from a sub-directory, a failed List that must not look
like success, -e on a shared account, an exported key with ``url: local``, and Git hygiene of
``.hepinfra/``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.cliutil import BASIC, BASIC_FILES, invoke, write_project
from tests.conftest import HTTP, KEY, Server

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def test_a_saved_plan_made_with_f_applies_with_the_printed_hint(tmp_path: Path, server: Server) -> None:
    write_project(tmp_path / "sub", BASIC, BASIC_FILES)
    planned = invoke(["plan", "-f", "sub/hepinfra.yaml", "--out", "my.plan"], server=server, cwd=tmp_path)
    assert planned.code == 0, planned.err
    hint = planned.out.strip().splitlines()[-1]
    assert hint.endswith("apply it with: hepinfra apply my.plan")
    applied = invoke(["apply", "my.plan"], server=server, cwd=tmp_path)  # exactly the hint: no -f
    assert applied.code == 0, applied.out + applied.err
    assert (tmp_path / "sub/.env.prod").exists()


def _failed_list(result_out: str, result_err: str) -> None:
    assert "No changes" not in result_out and "match the manifest" not in result_out
    assert "--no-refresh" not in result_out
    assert result_err.startswith("Error: prod: cannot list the databases of environment 'prod': ")


def test_a_wrong_key_is_an_error_on_stderr_not_a_success(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    for command in (["plan"], ["plan", "--detailed-exitcode"], ["apply", "--auto-approve"]):
        result = invoke([*command, "-f", str(project)], server=server, env={"HEPGG_DB_KEY": "hepgg_db_wrong-one"})
        assert result.code == 1
        _failed_list(result.out, result.err)
        assert f"GET {server.url}/api/v1/db/databases returned 401" in result.err
        assert "hepgg_db_wrong-one" not in result.out + result.err


def test_no_key_and_an_unreachable_host_are_errors_naming_the_cause(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", BASIC, BASIC_FILES)
    unreachable = invoke(["plan", "-f", str(project)], server=server, env={"HEPGG_URL": "http://127.0.0.1:9"})
    assert unreachable.code == 1
    _failed_list(unreachable.out, unreachable.err)
    assert "http://127.0.0.1:9/api/v1/db/databases failed: connection refused" in unreachable.err
    dns = invoke(["plan", "-f", str(project)], server=server, env={"HEPGG_URL": "http://nowhere.invalid"})
    assert dns.code == 1 and "host name not found (DNS)" in dns.err
    nokey = invoke(["plan", "-f", str(project)], server=server, env={"HEPGG_DB_KEY": ""})
    assert nokey.code == 1 and "No changes" not in nokey.out
    assert nokey.err.startswith("Error: prod: no database key for environment 'prod'")


def test_e_on_a_shared_account_does_not_warn_about_the_other_environments(tmp_path: Path, server: Server) -> None:
    body = "version: 1\nenvironments: {staging: {}, production: {}}\ndatabases: {shop: {}, cache: {}}\n"
    project = write_project(tmp_path / "p", body)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    for env in ("staging", "production"):
        result = invoke(["plan", "-f", str(project), "-e", env], server=server)
        assert result.code == 0 and "not managed" not in result.out + result.err

    HTTP.post(server.url + "/api/v1/db/databases", json={"name": "legacy"}, headers={"Authorization": f"Bearer {KEY}"})
    result = invoke(["plan", "-f", str(project), "-e", "staging"], server=server)
    assert "1 database(s) on the account of staging are not managed: legacy" in result.out


def test_an_exported_key_does_not_break_the_embedded_hepgg(tmp_path: Path) -> None:
    body = BASIC.replace("version: 1\n", "version: 1\nhepgg: {url: local}\n")
    project = write_project(tmp_path / "p", body, BASIC_FILES)
    real = {"HEPGG_DB_KEY": "hepgg_db_" + "9f" * 16, "HEPGG_DB_KEY_PROD": "hepgg_db_" + "8e" * 16}
    result = invoke(["apply", "-f", str(project), "--auto-approve"], env=real)
    assert result.code == 0, result.out + result.err
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], env=real).code == 0
    local_data = b"".join(p.read_bytes() for p in (project.parent / ".hepinfra/local").rglob("*") if p.is_file())
    assert real["HEPGG_DB_KEY"].encode() not in local_data and real["HEPGG_DB_KEY_PROD"].encode() not in local_data


def test_the_hepinfra_directory_keeps_its_secrets_out_of_git(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    body = BASIC.replace("version: 1\n", "version: 1\nhepgg: {url: local}\n")
    project = write_project(root, body, {**BASIC_FILES, ".gitignore": ".env.*\ndeploy/\n"})
    subprocess.run([*GIT, "init", "-q", str(root)], check=True)
    result = invoke(["apply", "-f", str(project), "--auto-approve"])
    assert result.code == 0, result.out + result.err
    assert (root / ".hepinfra/.gitignore").is_file()
    status = subprocess.run(
        [*GIT, "-C", str(root), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = [line[3:] for line in status.splitlines()]
    assert not [p for p in listed if p.startswith(".hepinfra/") and not p.startswith(".hepinfra/state/")]
    assert ".hepinfra/local/credentials.json" not in listed
    assert [p for p in listed if p.startswith(".hepinfra/state/")] == [".hepinfra/state/prod.json"]
    assert not [p for p in listed if p.startswith((".env", "deploy/"))]
    assert "not ignored by Git" not in result.err
    os.remove(root / ".gitignore")
    warned = invoke(["plan", "-f", str(project)])
    assert "output '.env.prod' is not ignored by Git" in warned.err
