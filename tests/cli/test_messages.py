"""What a user reads when something optional or owed is missing (issue 22, item 9): the exact lines.

A missing extra is simulated by running the real executable in a subprocess whose import system
refuses the library (a meta path finder), never by uninstalling it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cliutil import invoke, write_project
from tests.conftest import ENV, Server, record_artifact

# Run ``python -m hepinfra ARGS`` with the top-level modules named in argv[1] made unimportable.
BLOCKER = textwrap.dedent(
    """
    import runpy, sys

    class Refuse:
        def __init__(self, names):
            self.names = names

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in self.names:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    for name in list(sys.modules):
        if name.partition(".")[0] in sys.argv[1].split(","):
            del sys.modules[name]
    sys.meta_path.insert(0, Refuse(set(sys.argv[1].split(","))))
    sys.argv = ["hepinfra", *sys.argv[2:]]
    runpy.run_module("hepinfra", run_name="__main__", alter_sys=True)
    """
)


def without(modules: str, args: list[str], cwd: Path, server: Server | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HEPGG_", "HEPINFRA_"))}
    if server is not None:
        environ.update(ENV, HEPGG_URL=server.url, HEPGG_ID_URL=server.url)
    environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, modules, *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    record_artifact(f"hepinfra {' '.join(args)} (without {modules})", proc.stdout + proc.stderr)
    return proc


S3_STATE = """
version: 1
state:
  backend: s3
  bucket: acme-hepinfra
environments:
  prod: {}
databases: {}
"""
PG_STATE = S3_STATE.replace("backend: s3\n  bucket: acme-hepinfra", "backend: postgres")


@pytest.mark.parametrize(
    ("manifest", "blocked", "expected"),
    [
        (
            S3_STATE,
            "boto3,botocore",
            "4:3: state: the s3 state backend needs boto3, which is not installed: pip install 'hepinfra[s3]'",
        ),
        (
            PG_STATE,
            "psycopg",
            "4:3: state: the postgres state backend needs psycopg, which is not installed: "
            "pip install 'hepinfra[postgres]'",
        ),
    ],
    ids=["s3", "postgres"],
)
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_a_state_backend_without_its_library_names_the_extra(
    manifest: str, blocked: str, expected: str, command: str, tmp_path: Path, server: Server
) -> None:
    path = write_project(tmp_path, manifest)
    proc = without(blocked, [command, "-f", str(path)], tmp_path, server)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"Error: {path}:{expected}\n"
    assert server.requests() == []


def test_the_library_is_found_when_it_is_there(tmp_path: Path) -> None:
    """The same manifest validates when nothing is refused: the blocker, not the manifest, made it fail."""
    path = write_project(tmp_path, S3_STATE)
    proc = without("nothing_at_all", ["validate", "-f", str(path)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "state: s3 (s3://acme-hepinfra/)" in proc.stdout


OUTPUTS = """
version: 1
hepgg: {url: local}
environments:
  prod: {}
databases:
  shop:
    engine: postgres
    verify: true
    outputs:
      - aws_ssm: "/{{ env }}/shop/"
        keys: {URL: "{{ db.connection_string }}"}
      - age: "shop.env.age"
        recipients: ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
        keys: {URL: "{{ db.connection_string }}"}
"""


@pytest.mark.parametrize(
    ("blocked", "expected"),
    [
        (
            "boto3,botocore",
            "11:18: databases.shop.outputs[0].aws_ssm: the aws_ssm output needs boto3, which is not "
            "installed: pip install 'hepinfra[aws]'",
        ),
        (
            "pyrage",
            "14:21: databases.shop.outputs[1].recipients: the age output needs pyrage, which is not "
            "installed: pip install 'hepinfra[age]'",
        ),
        (
            "psycopg",
            "9:13: databases.shop.verify: verify of a postgres database needs psycopg, which is not "
            "installed: pip install 'hepinfra[verify]'",
        ),
    ],
    ids=["aws", "age", "verify"],
)
def test_outputs_and_verify_without_their_library_name_the_extra(blocked: str, expected: str, tmp_path: Path) -> None:
    path = write_project(tmp_path, OUTPUTS)
    proc = without(blocked, ["validate", "-f", str(path)], tmp_path)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"Error: {path}:{expected}\n"


LOCAL_VERIFY = """
version: 1
hepgg: {url: local}
environments:
  prod: {}
  dev: {}
databases:
  shop:
    engine: postgres
    verify: true
    outputs:
      - dotenv: ".env.{{ env }}"
        keys: {URL: "{{ db.connection_string }}"}
  cart:
    engine: postgres
    verify: true
    outputs:
      - dotenv: ".env.{{ env }}"
        keys: {CART_URL: "{{ db.connection_string }}"}
"""


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_verify_against_simulated_local_databases_is_warned_about(command: str, tmp_path: Path) -> None:
    path = write_project(tmp_path, LOCAL_VERIFY)
    result = invoke([command, "-f", str(path)], cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.err == (
        f"Warning: {path}:10:13: databases.shop.verify: the local hep.gg simulates postgres databases while "
        "HEPINFRA_LOCAL_POSTGRES is unset, so verify can never log in and fails on every apply (and 1 more); set "
        "HEPINFRA_LOCAL_POSTGRES to a real server's admin URL, or verify: false\n"
    )


def test_no_warning_when_the_local_server_is_named_or_hepgg_is_remote(tmp_path: Path, server: Server) -> None:
    path = write_project(tmp_path, LOCAL_VERIFY)
    named = invoke(["validate", "-f", str(path)], cwd=tmp_path, env={"HEPINFRA_LOCAL_POSTGRES": "postgresql://a@b/c"})
    remote = invoke(["validate", "-f", str(path)], cwd=tmp_path, server=server)  # HEPGG_URL: the emulator's URL
    assert (named.code, named.err, remote.code, remote.err) == (0, "", 0, "")
