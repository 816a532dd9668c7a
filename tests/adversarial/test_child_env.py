"""A process hepinfra starts gets what it needs, never hepinfra's credentials, nor the CI's.

The CI exports its secrets (AWS, GitHub, libpq, Vault) and hepinfra's own (the hep.gg keys, the
state key and URL, the local hep.gg's admin URLs, a manifest's ``db_key_env`` variable); then an
exec output's command, its ``read:`` command, an ``after_rotate`` hook and ``hepinfra run``'s
program each dump their whole environment to a file. Each dump joins the session's secret scan
(``record_artifact``), less what ``pass_env`` / ``--pass-env`` named on purpose.

- exec and read: the minimal environment plus ``pass_env``; the hook: the same plus
  ``after_rotate_pass_env`` and ``HEPINFRA_ENV/ADDRESS/NAME``;
- ``hepinfra run``: the user's environment minus hepinfra's credentials, unless ``--pass-env``;
- validate refuses ``pass_env`` naming a credential, at the item's line and column.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.cliutil import invoke, write_project
from tests.conftest import ENV, ID_TOKEN, ISSUED, KEY, UP_TOKEN, Server, record_artifact

# a tiny command: writes its environment to DIR/<name>.json; "read" prints {} (nothing stored)
DUMP = r"""import json, os, sys
role, out = sys.argv[1], sys.argv[2]
if role == "write":
    sys.stdin.read()
with open(out, "w") as f:
    json.dump(dict(os.environ), f)
if role == "read":
    print("{}")
"""

# the CI's secrets and hepinfra's own, as throwaway values the session scan looks for
CI = {
    "AWS_SECRET_ACCESS_KEY": "awsSECRET" + "1a" * 16,
    "GITHUB_TOKEN": "ghs_" + "2b" * 18,
    "PGPASSWORD": "pgSECRET" + "3c" * 12,
    "VAULT_TOKEN": "hvs." + "4d" * 16,
}
OWN = {
    "HEPINFRA_STATE_KEY": "state key " + "5e" * 12,
    "HEPINFRA_STATE_KEY_OLD": "old state key " + "6f" * 12,
    "HEPINFRA_STATE_PG": "postgresql://state:stSECRET" + "70" * 8 + "@127.0.0.1:1/state",
    "HEPINFRA_LOCAL_POSTGRES": "postgresql://admin:adSECRET" + "81" * 8 + "@127.0.0.1:1/postgres",
    "HEPINFRA_LOCAL_MARIADB": "mysql://root:rtSECRET" + "92" * 8 + "@127.0.0.1:1/",
    "SHOP_HEPGG_KEY": KEY,  # the manifest's db_key_env
}
ISSUED.update(v for v in [*CI.values(), *OWN.values()])
HEPINFRA_OWN = {*OWN, "HEPGG_DB_KEY", "HEPGG_ID_USERNAME", "HEPGG_ID_TOKEN", "HEPGG_UPLOAD_TOKEN", "HEPGG_URL"}

MANIFEST = """
version: 1
environments:
  prod: {{db_key_env: SHOP_HEPGG_KEY}}
databases:
  shop:
    engine: postgres
    after_rotate: ["{python}", "{dump}", "hook", "{out}/hook.json"]
    after_rotate_pass_env: [{hook_names}]
    outputs:
      - dotenv: .env
        keys: {{SHOP_DB_PASSWORD: "{{{{ db.password }}}}"}}
      - exec: ["{python}", "{dump}", "write", "{out}/write.json"]
        read: ["{python}", "{dump}", "read", "{out}/read.json"]
        keys: {{PASSWORD: "{{{{ db.password }}}}"}}
        pass_env: [{exec_names}]
"""


def project(tmp_path: Path, *, exec_names: str = "VAULT_TOKEN", hook_names: str = "GITHUB_TOKEN") -> Path:
    out = tmp_path / "dumps"
    out.mkdir(parents=True, exist_ok=True)
    dump = tmp_path / "dump.py"
    dump.write_text(DUMP)
    text = MANIFEST.format(python=sys.executable, dump=dump, out=out, exec_names=exec_names, hook_names=hook_names)
    return write_project(tmp_path / "p", text)


def seen(path: Path, *, passed: tuple[str, ...] = (), values: tuple[str, ...] = ()) -> dict[str, str]:
    """A child's environment as it dumped it; recorded for the session's secret scan, less the
    variables named on purpose (``passed``) and the program's own values (``values``)."""
    env: dict[str, str] = json.loads(path.read_text())
    path.unlink()
    scanned = {k: v for k, v in env.items() if k not in passed and k not in values}
    record_artifact(f"child environment {path.name}", json.dumps(scanned))
    return env


def test_exec_read_and_hook_get_the_minimal_environment_plus_pass_env(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    environ = {**CI, **OWN, "LC_ALL": "C.UTF-8", "CI_JOB_ID": "42"}
    done = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env=environ)
    assert done.code == 0, done.out + done.err
    planned = invoke(["plan", "-f", str(path)], server=server, env=environ)  # a refreshing plan runs read:
    assert planned.code == 0, planned.out + planned.err
    dumps = tmp_path / "dumps"
    for name in ("write.json", "read.json"):
        env = seen(dumps / name, passed=("VAULT_TOKEN",))
        assert env.get("VAULT_TOKEN") == CI["VAULT_TOKEN"], name  # pass_env named it
        assert not ({*CI, *HEPINFRA_OWN} - {"VAULT_TOKEN"}) & set(env), name
        assert not [k for k in env if k.startswith(("HEPGG_", "HEPINFRA_"))], name
        assert "CI_JOB_ID" not in env and env.get("LC_ALL") == "C.UTF-8" and env.get("PATH"), name
    rotated = invoke(["rotate", "shop", "-f", str(path), "--auto-approve"], server=server, env=environ)
    assert rotated.code == 0, rotated.out + rotated.err
    hook = seen(dumps / "hook.json", passed=("GITHUB_TOKEN",))
    assert hook.get("GITHUB_TOKEN") == CI["GITHUB_TOKEN"]  # after_rotate_pass_env named it
    assert not ({*CI, *HEPINFRA_OWN} - {"GITHUB_TOKEN"}) & set(hook)
    assert {k: v for k, v in hook.items() if k.startswith(("HEPGG_", "HEPINFRA_"))} == {
        "HEPINFRA_ENV": "prod",
        "HEPINFRA_ADDRESS": "prod/databases.shop",
        "HEPINFRA_NAME": "shop-prod",
    }
    assert "CI_JOB_ID" not in hook and hook.get("PATH")
    write = seen(dumps / "write.json", passed=("VAULT_TOKEN",))  # the rotation wrote it again
    assert "GITHUB_TOKEN" not in write and "AWS_SECRET_ACCESS_KEY" not in write


def test_validate_refuses_pass_env_naming_a_credential_at_the_item(tmp_path: Path) -> None:
    cases = [
        ("exec", "HEPGG_DB_KEY", "pass_env: HEPGG_DB_KEY is hepinfra's own credential; a command never receives it"),
        (
            "exec",
            "HEPINFRA_STATE_KEY",
            "pass_env: HEPINFRA_STATE_KEY is hepinfra's own credential; a command never receives it",
        ),
        (
            "exec",
            "SHOP_HEPGG_KEY",
            "pass_env: SHOP_HEPGG_KEY is a credential hepinfra reads (environments.prod.db_key_env); a command "
            "never receives it",
        ),
        (
            "hook",
            "HEPGG_UPLOAD_TOKEN",
            "after_rotate_pass_env: HEPGG_UPLOAD_TOKEN is hepinfra's own credential; a command never receives it",
        ),
        (
            "exec",
            "HEPINFRA_DEBUG",
            "pass_env: HEPINFRA_DEBUG is hepinfra's own variable (HEPGG_*, HEPINFRA_*); a command never receives it",
        ),
        (
            "exec",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            "pass_env: ACTIONS_ID_TOKEN_REQUEST_TOKEN is the CI runner's own (ACTIONS_*, CI_JOB_JWT*); a command "
            "never receives it",
        ),
        (
            "hook",
            "CI_JOB_JWT_V2",
            "after_rotate_pass_env: CI_JOB_JWT_V2 is the CI runner's own (ACTIONS_*, CI_JOB_JWT*); a command never "
            "receives it",
        ),
    ]
    for i, (where, name, message) in enumerate(cases):
        exec_names, hook_names = ("VAULT_TOKEN, " + name, "GITHUB_TOKEN") if where == "exec" else ("VAULT_TOKEN", name)
        path = project(tmp_path / str(i), exec_names=exec_names, hook_names=hook_names)
        lines = path.read_text().splitlines()
        key = "        pass_env: [" if where == "exec" else "    after_rotate_pass_env: ["
        line = next(n for n, text in enumerate(lines, 1) if text.startswith(key))
        column = lines[line - 1].index(name) + 1
        node = "databases.shop.outputs[1].pass_env[1]" if where == "exec" else "databases.shop.after_rotate_pass_env[0]"
        result = invoke(["validate", "-f", str(path)])
        assert result.code == 1, (name, result.out)
        assert f"{path}:{line}:{column}: {node}: {message}" in result.err, result.err
        assert result.err.count("\n") == 1, result.err


def test_run_keeps_the_users_environment_but_not_hepinfras_credentials(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env={**CI, **OWN}).code == 0
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEPGG_")}
    environ.update({**ENV, **CI, **OWN}, HEPGG_URL=server.url, HEPGG_ID_URL=server.url, CI_JOB_ID="42")
    out = tmp_path / "dumps" / "run.json"

    def run(*options: str) -> dict[str, str]:
        argv = [sys.executable, "-m", "hepinfra", "run", "-f", str(path), "-e", "prod", *options, "--"]
        proc = subprocess.run(
            [*argv, sys.executable, str(tmp_path / "dump.py"), "run", str(out)],
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
        record_artifact("hepinfra run", proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stderr
        named = tuple(o for o in options if o != "--pass-env")
        return seen(out, passed=(*CI, *named), values=("SHOP_DB_PASSWORD",))  # the user's own are theirs

    env = run()
    assert env.get("SHOP_DB_PASSWORD")  # the values, in its environment
    assert {k: env.get(k) for k in CI} == CI and env.get("CI_JOB_ID") == "42"  # the user's own stay
    assert not HEPINFRA_OWN & set(env), sorted(HEPINFRA_OWN & set(env))
    assert not [k for k in env if k.startswith(("HEPGG_", "HEPINFRA_STATE_", "HEPINFRA_LOCAL_"))]
    assert KEY not in json.dumps(env) and ID_TOKEN not in json.dumps(env) and UP_TOKEN not in json.dumps(env)

    asked = run("--pass-env", "HEPINFRA_STATE_PG", "--pass-env", "HEPGG_URL")
    assert asked.get("HEPINFRA_STATE_PG") == OWN["HEPINFRA_STATE_PG"] and asked.get("HEPGG_URL") == server.url
    assert not (HEPINFRA_OWN - {"HEPINFRA_STATE_PG", "HEPGG_URL"}) & set(asked)
