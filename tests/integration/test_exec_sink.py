"""The exec sink end to end, through the real CLI and real processes: a stand-in secret store
(a script) records its argv, its environment and its stdin; a read command prints it back.

- the command gets exactly the Reveal'd values as one JSON object on stdin, none in argv or env;
- its environment is the minimal one plus what pass_env names: hepinfra's own credentials never,
  and pass_env cannot name them;
- plan right after apply is clean; a value changed in the store is drift named by key;
- a rotation reaches it, with the window in the JSON events;
- a failing or hanging command fails that output alone, in one line, with no value in it;
- validate refuses a secret in argv.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

from tests.cliutil import invoke, write_project
from tests.conftest import KEY, Server, record_artifact
from tests.integration.test_rotation_and_locks import reveal

STORE = r"""#!PYTHON
import json, os, sys
store = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vault")
os.makedirs(store, exist_ok=True)
mode = os.environ.get("STORE_MODE", "")
if sys.argv[1] == "read":
    path = os.path.join(store, sys.argv[2] + ".json")
    print(open(path).read() if os.path.exists(path) else "{}")
    sys.exit(0)
data = sys.stdin.read()
with open(os.path.join(store, "calls.log"), "a") as log:
    log.write(json.dumps({"argv": sys.argv, "env": dict(os.environ)}) + "\n")
if mode == "fail":
    sys.stderr.write("push-secret: refused: " + data + "\nsecond line\n")
    sys.exit(3)
if mode == "fail-partial":
    import base64
    sys.stderr.write("bad value " + base64.b64encode(json.loads(data)["PASSWORD"].encode()).decode()[:12] + "\n")
    sys.exit(5)
if mode == "fail-b64":
    import base64
    sys.stderr.write("bad request " + base64.b64encode(data.encode()).decode() + "\n")
    sys.exit(6)
if mode == "fail-plain":
    sys.stderr.write("usage: push-secret KEY\n\n  push-secret: the vault is sealed\n\n")
    sys.exit(4)
if mode == "hang":
    import time
    time.sleep(60)
with open(os.path.join(store, sys.argv[2] + ".json"), "w") as out:
    out.write(data)
"""

MANIFEST = """
version: 1
environments: {prod: {}}
databases:
  shop:
    engine: postgres
    outputs:
      - exec: ["./bin/store", "write", "{{ env }}-{{ name }}"]
        read: ["./bin/store", "read", "{{ env }}-{{ name }}"]
        keys: {URL: "{{ db.connection_string }}", PASSWORD: "{{ db.password }}"}
        timeout: 5s
        pass_env: [STORE_MODE]
"""


def project(tmp_path: Path, manifest: str = MANIFEST) -> Path:
    path = write_project(tmp_path / "p", manifest)
    script = path.parent / "bin" / "store"
    script.parent.mkdir()
    script.write_text(STORE.replace("#!PYTHON", "#!" + sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return path


def stored(path: Path, name: str = "prod-shop-prod") -> dict[str, str]:
    return json.loads((path.parent / "vault" / f"{name}.json").read_text())


def calls(path: Path) -> list[dict]:  # type: ignore[type-arg]
    text = (path.parent / "vault" / "calls.log").read_text()
    record_artifact("exec sink argv and environment", text)  # joins the session's secret scan
    return [json.loads(line) for line in text.splitlines()]


def test_apply_sends_the_values_on_stdin_only(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    done = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env={"HEPINFRA_STATE_PG": "x-" + KEY})
    assert done.code == 0, done.err
    live = reveal(server, "shop-prod")
    assert stored(path) == {"PASSWORD": live["password"], "URL": live["connectionString"]}
    (call,) = calls(path)
    assert call["argv"][1:] == ["write", "prod-shop-prod"]
    text = json.dumps(call)
    assert live["password"] not in text and KEY not in text  # nothing secret in argv or environment
    assert not [k for k in call["env"] if k.startswith("HEPGG_") or k == "HEPINFRA_STATE_PG"]
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server).code == 0


def test_a_value_changed_in_the_store_is_drift_named_by_key(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    file = path.parent / "vault" / "prod-shop-prod.json"
    values = json.loads(file.read_text())
    file.write_text(json.dumps({**values, "URL": "postgresql://someone@else/db"}))
    planned = invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server)
    assert planned.code == 2, planned.err
    assert "exec:./bin/store write prod-shop-prod" in planned.out and "URL edited" in planned.out
    assert "PASSWORD" not in planned.out.split("URL edited")[1].splitlines()[0]
    assert invoke(["plan", "-f", str(path), "--no-refresh", "--detailed-exitcode"], server=server).code == 0
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    assert stored(path)["URL"] == reveal(server, "shop-prod")["connectionString"]
    assert invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server).code == 0


def test_rotation_reaches_the_store_with_its_window(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    before = stored(path)["PASSWORD"]
    rotated = invoke(["rotate", "shop", "-f", str(path), "--auto-approve", "--json"], server=server)
    assert rotated.code == 0, rotated.err
    events = [json.loads(line) for line in rotated.out.splitlines()]
    done = next(e for e in events if e.get("event") == "done" and e.get("action") == "rotate")
    assert isinstance(done["rotation_window_ms"], int | float)
    after = stored(path)["PASSWORD"]
    assert after != before and after == reveal(server, "shop-prod")["password"]


def test_a_failing_command_fails_that_output_alone_in_one_line(tmp_path: Path, server: Server) -> None:
    manifest = (
        MANIFEST
        + """      - dotenv: .env
        keys: {SHOP_PASSWORD: "{{ db.password }}"}
"""
    )
    path = project(tmp_path, manifest)
    failed = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env={"STORE_MODE": "fail"})
    assert failed.code == 1
    line = next(ln for ln in failed.out.splitlines() + failed.err.splitlines() if "exited 3" in ln)
    assert line.endswith(
        "exited 3: (its message is not shown: it mentions a value of this write, or something encoded)"
    )
    live = reveal(server, "shop-prod")
    assert live["password"] not in failed.out + failed.err and "second line" not in failed.out + failed.err
    assert "SHOP_PASSWORD" in (path.parent / ".env").read_text()  # the other output was written
    fixed = invoke(["apply", "-f", str(path), "--auto-approve"], server=server)
    assert fixed.code == 0, fixed.err
    assert stored(path)["PASSWORD"] == live["password"]


def test_a_hanging_command_is_killed_at_its_timeout(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    hung = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env={"STORE_MODE": "hang"})
    assert hung.code == 1 and "did not finish within 5s; killed" in hung.out + hung.err


def test_pass_env_lets_a_listed_variable_through_and_nothing_else(tmp_path: Path, server: Server) -> None:
    manifest = MANIFEST.replace("pass_env: [STORE_MODE]", "pass_env: [STORE_MODE, STORE_REGION_HINT]")
    path = project(tmp_path, manifest)
    env = {"STORE_REGION_HINT": "eu", "STORE_OTHER": "no", "LC_TIME": "C", "HEPGG_OTHER": "no"}
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=env).code == 0
    (call,) = calls(path)
    assert call["env"].get("STORE_REGION_HINT") == "eu" and call["env"].get("LC_TIME") == "C"
    assert "STORE_OTHER" not in call["env"] and "HEPGG_OTHER" not in call["env"]
    assert "PATH" in call["env"]


def test_validate_refuses_a_secret_in_argv(tmp_path: Path) -> None:
    for argv in ('["./push", "{{ db.password }}"]', '["./push", "{{ db.connection_string | upper }}"]',
                 '["./push", "{{ db[\'password\'] }}"]', '["./push", "{{ db }}"]'):  # fmt: skip
        manifest = MANIFEST.replace('["./bin/store", "write", "{{ env }}-{{ name }}"]', argv)
        path = project(tmp_path / str(abs(hash(argv))), manifest)
        result = invoke(["validate", "-f", str(path)])
        assert result.code == 1 and result.err.count("\n") == 1, (argv, result.err)
        assert "argv" in result.err and "stdin" in result.err and "hepinfra.yaml:" in result.err, result.err


def test_without_read_the_plan_says_it_trusts_what_it_sent(tmp_path: Path, server: Server) -> None:
    manifest = MANIFEST.replace('        read: ["./bin/store", "read", "{{ env }}-{{ name }}"]\n', "")
    path = project(tmp_path, manifest)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    (path.parent / "vault" / "prod-shop-prod.json").write_text("{}")  # gone: hepinfra cannot know
    planned = invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server)
    assert planned.code == 0
    assert (
        "not read back, so trusted as last written: exec:./bin/store write prod-shop-prod" in planned.out + planned.err
    )
    quiet = invoke(["plan", "-f", str(path), "--no-refresh"], server=server)
    assert "not read back" not in quiet.out + quiet.err


def test_a_failure_message_is_shown_unless_it_mentions_a_value_in_any_form(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    plain = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env={"STORE_MODE": "fail-plain"})
    assert "exited 4: push-secret: the vault is sealed" in plain.out + plain.err
    partial = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env={"STORE_MODE": "fail-partial"})
    assert "exited 5: (its message is not shown: it mentions a value of this write" in partial.out + partial.err
    whole = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env={"STORE_MODE": "fail-b64"})
    assert "exited 6: (its message is not shown" in whole.out + whole.err


def test_a_grandchild_holding_the_pipes_does_not_hang_the_run(tmp_path: Path, server: Server) -> None:
    import time

    manifest = MANIFEST.replace('["./bin/store", "write", "{{ env }}-{{ name }}"]',
                                '["sh", "-c", "cat >/dev/null; setsid sleep 30 & exit 0"]')  # fmt: skip
    path = project(tmp_path, manifest.replace('        read: ["./bin/store", "read", "{{ env }}-{{ name }}"]\n', ""))
    started = time.monotonic()
    done = invoke(["apply", "-f", str(path), "--auto-approve"], server=server)
    assert done.code == 0, done.out + done.err  # it exited 0: written
    assert time.monotonic() - started < 15


def test_a_read_command_printing_garbage_fails_that_output_only(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    (path.parent / "vault" / "prod-shop-prod.json").write_text("[" * 200000)
    planned = invoke(["plan", "-f", str(path)], server=server)
    assert planned.code == 0 and "its read command printed no JSON object" in planned.out
