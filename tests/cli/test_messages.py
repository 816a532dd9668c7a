"""What a user reads when something optional or owed is missing (issue 22, item 9): the exact lines.

A missing extra is simulated by running the real executable in a subprocess whose import system
refuses the library (a meta path finder), never by uninstalling it.
"""

from __future__ import annotations

import json
import os
import re
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


# --- what a child process said: its last meaningful line, never a bare "Traceback" ----------------

RECIPE = """
import json, os, sys
values = json.load(sys.stdin)
if os.path.exists("sealed"):
    raise RuntimeError("vault is sealed")
print(json.dumps(values), file=open("pushed.json", "w"))
"""
READ = """
import os, sys
if os.path.exists("sealed"):
    sys.stderr.write("reading the vault\\n")
    raise RuntimeError("vault is sealed")
sys.stdout.write(open("pushed.json").read())
"""
HOOK = """
import json
import os
import re
if os.path.exists("broken"):
    print("reloading", flush=True)
    os.environ["RELOAD_URL"]
print("reloading web")
print("web reloaded: 3 pods ready")
"""
CHILDREN = """
version: 1
environments:
  prod: {}
databases:
  shop:
    engine: postgres
    after_rotate: ["python3", "hook.py"]
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
      - dotenv: .env.old
        keys: {OLD_URL: "{{ db.connection_string }}"}
      - exec: ["python3", "push.py"]
        read: ["python3", "read.py"]
        keys: {URL: "{{ db.connection_string }}"}
"""
CHILD_FILES = {"push.py": RECIPE, "read.py": READ, "hook.py": HOOK, ".gitignore": ".env*\npushed.json\n"}


def test_a_python_recipe_that_fails_shows_its_exception_not_traceback(tmp_path: Path, server: Server) -> None:
    path = write_project(tmp_path, CHILDREN, CHILD_FILES)
    (tmp_path / "sealed").write_text("")
    applied = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, cwd=tmp_path)
    assert applied.code == 1
    failed = [ln for ln in applied.out.splitlines() if ln.startswith("  failed: ")]
    assert failed == [
        "  failed: prod/databases.shop: created; but render of exec:python3 push.py failed: exec:python3 push.py: "
        "exited 1: RuntimeError: vault is sealed"
    ]
    assert "Traceback" not in applied.out + applied.err


def test_a_read_command_that_fails_shows_its_exception(tmp_path: Path, server: Server) -> None:
    path = write_project(tmp_path, CHILDREN, CHILD_FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, cwd=tmp_path).code == 0
    (tmp_path / "sealed").write_text("")
    planned = invoke(["plan", "-f", str(path)], server=server, cwd=tmp_path)
    assert "       exec:python3 push.py: its read command exited 1: RuntimeError: vault is sealed\n" in planned.out


def test_the_hook_run_is_shown_and_is_a_field_of_the_done_event(tmp_path: Path, server: Server) -> None:
    path = write_project(tmp_path, CHILDREN, CHILD_FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, cwd=tmp_path).code == 0
    text = invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server, cwd=tmp_path)
    assert text.code == 0, text.out + text.err
    assert re.search(
        r"^   ~ prod/databases\.shop: rotated; ran after_rotate in \d+ ms: web reloaded: 3 pods ready \(\d+ ms, "
        r"window [\d.]+ ms\)$",
        text.out,
        re.M,
    ), text.out
    assert " ms (old password dead until outputs were written).\n" in text.out  # no verify: written is the end
    as_json = invoke(["rotate", "-f", str(path), "shop", "--auto-approve", "--json"], server=server, cwd=tmp_path)
    done = [e for e in map(json.loads, as_json.out.splitlines()) if e["event"] == "done"]
    assert len(done) == 1 and set(done[0]["hook"]) == {"ms", "last_line"}
    assert done[0]["hook"]["last_line"] == "web reloaded: 3 pods ready" and done[0]["hook"]["ms"] > 0


def test_an_owed_hook_is_planned_and_applied_as_a_hook_run_again(tmp_path: Path, server: Server) -> None:
    path = write_project(tmp_path, CHILDREN, CHILD_FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, cwd=tmp_path).code == 0
    (tmp_path / "broken").write_text("")
    failed = invoke(["rotate", "-f", str(path), "shop", "--auto-approve"], server=server, cwd=tmp_path)
    assert "after_rotate exited with status 1: KeyError: 'RELOAD_URL'" in failed.out
    (tmp_path / "broken").unlink()
    planned = invoke(["plan", "-f", str(path)], server=server, cwd=tmp_path)
    assert "   > prod/databases.shop will run its after_rotate hook again\n" in planned.out
    applied = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, cwd=tmp_path)
    assert re.search(
        r"^   > prod/databases\.shop: ran its after_rotate hook again in \d+ ms: web reloaded: 3 pods ready "
        r"\(\d+ ms\)$",
        applied.out,
        re.M,
    ), applied.out
    assert "rendered 0 output(s)" not in applied.out


def test_a_retired_file_is_said_to_be_deleted_in_every_plan_form_and_by_apply(tmp_path: Path, server: Server) -> None:
    path = write_project(tmp_path, CHILDREN, CHILD_FILES)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, cwd=tmp_path).code == 0
    path.write_text(
        path.read_text().replace(
            '      - dotenv: .env.old\n        keys: {OLD_URL: "{{ db.connection_string }}"}\n', ""
        )
    )
    text = invoke(["plan", "-f", str(path), "--no-refresh"], server=server, cwd=tmp_path).out
    assert "   > prod/databases.shop .env.old will be deleted (no longer declared)\n" in text
    assert "       - .env.old: will be deleted (hepinfra's keys or file, if unchanged since written)\n" in text
    markdown = invoke(["plan", "-f", str(path), "--no-refresh", "--markdown"], server=server, cwd=tmp_path).out
    assert ".env.old: will be deleted (hepinfra's keys or file, if unchanged since written)" in markdown
    document = invoke(["plan", "-f", str(path), "--no-refresh", "--json"], server=server, cwd=tmp_path).json()
    (change,) = [c for c in document["changes"] if c["action"] == "render"]
    assert (change["retire"], change.get("retire_left", {})) == ([".env.old"], {})
    applied = invoke(["apply", "-f", str(path), "--auto-approve", "--no-refresh"], server=server, cwd=tmp_path)
    assert re.search(
        r"^   > prod/databases\.shop: deleted 1 output\(s\) no longer declared \(\d+ ms\)$", applied.out, re.M
    )
    assert "OLD_URL" not in (tmp_path / ".env.old").read_text()


@pytest.mark.parametrize("command", [["plan"], ["apply", "--auto-approve"]])
def test_a_missing_key_is_the_error_alone(command: list[str], tmp_path: Path, server: Server) -> None:
    manifest = "version: 1\nenvironments: {prod: {}}\ndatabases:\n  shop:\n    engine: postgres\n"
    path = write_project(
        tmp_path, manifest + "    outputs:\n      - dotenv: .env\n        keys: {U: '{{ db.password }}'}\n"
    )
    result = invoke([*command, "-f", str(path)], server=server, cwd=tmp_path, env={"HEPGG_DB_KEY": ""})
    assert (result.code, result.out) == (1, "")
    assert result.err.startswith(
        "Error: prod: no database key for environment 'prod' (hint: export HEPGG_DB_KEY_PROD or HEPGG_DB_KEY)"
    )
    assert result.err.count("\n") == 1
