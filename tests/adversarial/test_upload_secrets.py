"""``uploads:`` publish a file for good: a pull request must not be able to publish a secret with one.

- a source Git ignores (a key, a .env) is refused by validate, plan and apply (one located line,
  naming ``uploads.KEY.file``, before any API call) unless the upload sets ``allow_ignored: true``;
- judged on the real path: a link whose own name is not ignored, to a file that is, is refused;
- a source that is an output of this manifest (its own .env) is refused whatever Git says;
- no Git repository: nothing is ignored.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cliutil import invoke, write_project
from tests.conftest import Server

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]

UPLOAD = """
version: 1
environments:
  prod: {{}}
uploads:
  leak:
    file: {file}
{extra}    outputs:
      - dotenv: out.env
        keys: {{LEAK_URL: "{{{{ upload.url }}}}"}}
"""

IGNORED = (
    "is ignored by Git (often a key or a .env): an upload is public and permanent; "
    "set allow_ignored: true if it is meant to be published"
)


def repo(root: Path, ignore: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([*GIT, "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text(ignore)


def refused(project: Path, server: Server, *needles: str) -> str:
    """validate, plan and apply refuse with one located line; nothing reached hep.gg."""
    for command in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        result = invoke([*command, "-f", str(project)], server=server)
        assert result.code == 1, (command, result.out, result.err)
        assert result.err.startswith(f"Error: {project}:") and result.err.count("\n") == 1, result.err
        assert "Traceback" not in result.err
        for needle in needles:
            assert needle in result.err, (needle, result.err)
    assert server.requests() == []
    return result.err


def test_an_ignored_key_is_refused(tmp_path: Path, server: Server) -> None:
    repo(tmp_path, "private.key\nout.env\n")
    project = write_project(tmp_path, UPLOAD.format(file="private.key", extra=""), {"private.key": "-----KEY-----\n"})
    err = refused(project, server, f"uploads.leak.file: private.key {IGNORED}")
    line = next(n for n, text in enumerate(project.read_text().splitlines(), 1) if "file: private.key" in text)
    assert err.startswith(f"Error: {project}:{line}:")


def test_allow_ignored_publishes_it(tmp_path: Path, server: Server) -> None:
    repo(tmp_path, "build/\nout.env\n")
    body = UPLOAD.format(file="build/logo.png", extra="    allow_ignored: true\n")
    project = write_project(tmp_path, body, {"build/logo.png": "PNG"})
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 0, result.err
    assert "LEAK_URL=" in (tmp_path / "out.env").read_text()


def test_a_link_whose_name_is_not_ignored_to_an_ignored_file_is_refused(tmp_path: Path, server: Server) -> None:
    repo(tmp_path, "secrets/\nout.env\n")
    project = write_project(tmp_path, UPLOAD.format(file="logo.png", extra=""), {"secrets/private.key": "KEY\n"})
    (tmp_path / "logo.png").symlink_to("secrets/private.key")
    ignored = subprocess.run([*GIT, "-C", str(tmp_path), "check-ignore", "-q", "logo.png"], check=False)
    assert ignored.returncode == 1  # Git itself does not ignore the link's name
    refused(project, server, f"uploads.leak.file: logo.png (it resolves to 'secrets/private.key') {IGNORED}")


def test_an_ignored_file_in_a_nested_directory_of_the_repository_is_refused(tmp_path: Path, server: Server) -> None:
    repo(tmp_path, "*.pem\n")
    project = write_project(tmp_path / "infra", UPLOAD.format(file="certs/site.pem", extra=""), {"certs/site.pem": "K"})
    refused(project, server, f"uploads.leak.file: certs/site.pem {IGNORED}")


def test_without_a_git_repository_nothing_is_ignored(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path, UPLOAD.format(file="private.key", extra=""), {"private.key": "public after all"})
    assert invoke(["validate", "-f", str(project)], server=server).code == 0


def test_an_upload_of_the_manifests_own_dotenv_output_is_refused(tmp_path: Path, server: Server) -> None:
    databases = """
version: 1
environments:
  prod: {}
databases:
  shop:
    engine: postgres
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
"""
    project = write_project(tmp_path, databases)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    before = (tmp_path / ".env").read_text()
    write_project(tmp_path, databases + "uploads:" + UPLOAD.split("uploads:")[1].format(file=".env", extra=""))
    for command in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        result = invoke([*command, "-f", str(project)], server=server)
        assert result.code == 1 and result.err.count("\n") == 1, result.err
        assert result.err.startswith(f"Error: {project}:")
        assert "uploads.leak.file: .env is the output '.env' of this manifest: an upload is public and permanent" in (
            result.err
        )
    assert (tmp_path / ".env").read_text() == before
    # allow_ignored does not help: an output is never uploaded
    with_allow = UPLOAD.split("uploads:")[1].format(file=".env", extra="    allow_ignored: true\n")
    write_project(tmp_path, databases + "uploads:" + with_allow)
    result = invoke(["validate", "-f", str(project)], server=server)
    assert result.code == 1 and "is the output '.env' of this manifest" in result.err
