"""The issue's must-show, in one run: one apply writes a database's credentials to Secrets Manager,
SSM, an age file and an exec command; each holds exactly what Reveal gives; plan is then clean; a
rotation reaches all four and its event gives the window over all of them."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from dotenv import dotenv_values

from tests.cliutil import invoke, write_project
from tests.conftest import Server
from tests.integration.test_age_output import identity  # noqa: F401  (fixture)
from tests.integration.test_aws_outputs import aws, client  # noqa: F401  (fixture)
from tests.integration.test_exec_sink import STORE
from tests.integration.test_rotation_and_locks import reveal

MANIFEST = """
version: 1
environments: {{prod: {{}}}}
databases:
  shop:
    engine: postgres
    outputs:
      - aws_secretsmanager: "all-{tag}/{{{{ env }}}}/shop"
        keys: &keys {{URL: "{{{{ db.connection_string }}}}", PASSWORD: "{{{{ db.password }}}}"}}
      - aws_ssm: "/all-{tag}/{{{{ env }}}}/shop/"
        keys: *keys
      - age: "secrets/{{{{ env }}}}/shop.env.age"
        recipients: ["{recipient}"]
        keys: *keys
      - exec: ["./bin/store", "write", "{{{{ env }}}}-shop"]
        read: ["./bin/store", "read", "{{{{ env }}}}-shop"]
        keys: *keys
"""


def everything(project: Path, env: dict[str, str], tag: str, key: Path) -> list[dict[str, str | None]]:
    sm = json.loads(client(env, "secretsmanager").get_secret_value(SecretId=f"all-{tag}/prod/shop")["SecretString"])
    names = [f"/all-{tag}/prod/shop/URL", f"/all-{tag}/prod/shop/PASSWORD"]
    params = client(env, "ssm").get_parameters(Names=names, WithDecryption=True)["Parameters"]
    ssm = {p["Name"].rsplit("/", 1)[1]: p["Value"] for p in params}
    plain = subprocess.run(["age", "-d", "-i", str(key), str(project.parent / "secrets/prod/shop.env.age")],
                           capture_output=True, check=True).stdout  # fmt: skip
    (project.parent / "plain.env").write_bytes(plain)
    age = dict(dotenv_values(project.parent / "plain.env"))
    (project.parent / "plain.env").unlink()
    piped = json.loads((project.parent / "vault" / "prod-shop.json").read_text())
    return [sm, ssm, age, piped]


def test_one_apply_reaches_all_four_and_a_rotation_too(
    tmp_path: Path,
    server: Server,
    aws: dict[str, str],  # noqa: F811
    identity: tuple[Path, str],  # noqa: F811
) -> None:
    key, recipient = identity
    tag = tmp_path.name[-10:].replace("_", "-")
    project = write_project(tmp_path / "p", MANIFEST.format(tag=tag, recipient=recipient))
    script = project.parent / "bin" / "store"
    script.parent.mkdir()
    script.write_text(STORE.replace("#!PYTHON", "#!" + sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    done = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws)
    assert done.code == 0, done.out + done.err
    live = reveal(server, "shop-prod")
    wanted = {"URL": live["connectionString"], "PASSWORD": live["password"]}
    assert everything(project, aws, tag, key) == [wanted] * 4
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=aws).code == 0
    rotated = invoke(["rotate", "shop", "-f", str(project), "--auto-approve", "--json"], server=server, env=aws)
    assert rotated.code == 0, rotated.out + rotated.err
    event = next(e for e in map(json.loads, rotated.out.splitlines()) if e.get("event") == "done")
    assert event["action"] == "rotate" and event["rotation_window_ms"] >= 0
    live = reveal(server, "shop-prod")
    assert everything(project, aws, tag, key) == [{"URL": live["connectionString"], "PASSWORD": live["password"]}] * 4
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=aws).code == 0


def test_a_run_killed_before_its_outputs_are_written_converges(
    tmp_path: Path,
    server: Server,
    aws: dict[str, str],  # noqa: F811
    identity: tuple[Path, str],  # noqa: F811
) -> None:
    """SIGKILL right after hep.gg answered the create: nothing was delivered yet; the next apply
    delivers to all four, with no second create."""
    import os
    import signal

    from tests.conftest import ENV, record_artifact

    key, recipient = identity
    tag = tmp_path.name[-10:].replace("_", "-")
    project = write_project(tmp_path / "p", MANIFEST.format(tag=tag, recipient=recipient))
    script = project.parent / "bin" / "store"
    script.parent.mkdir()
    script.write_text(STORE.replace("#!PYTHON", "#!" + sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, **ENV, **aws, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url,
           "HEPINFRA_TEST_KILL_AT": "after:2"}  # fmt: skip
    killed = subprocess.run([sys.executable, "-m", "hepinfra", "apply", "-f", str(project), "--auto-approve"],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    record_artifact("killed apply with four sinks", killed.stdout + killed.stderr)
    assert killed.returncode == -signal.SIGKILL
    assert not (project.parent / "vault" / "prod-shop.json").exists()
    again = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws)
    assert again.code == 0, again.out + again.err
    live = reveal(server, "shop-prod")
    assert everything(project, aws, tag, key) == [{"URL": live["connectionString"], "PASSWORD": live["password"]}] * 4
    creates = [r for r in server.requests() if r["method"] == "POST" and r["path"].endswith("/databases")]
    assert len(creates) == 1
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=aws).code == 0
