"""The exec-sink recipes of docs/ci-gitops.md (docs/recipes/), run for real against stand-in CLIs
(``vault``, ``op``, ``gh``, ``kubectl`` on PATH): each stand-in keeps what it is given in a
directory, as the real store would, and logs its argv. The values must arrive on stdin exactly as
Reveal gives them, and never in any argv. Each stand-in fails unless its CLI's own credential
reached it: the ``pass_env`` the recipe documents is what it needs (hepinfra gives a command
nothing else), and hepinfra's own credentials never reach it."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from tests.cliutil import invoke, write_project
from tests.conftest import Server, record_artifact
from tests.integration.test_rotation_and_locks import reveal

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"

STANDIN = r"""#!PYTHON
import base64, json, os, sys
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
root = os.environ["STANDIN_STORE"]
needs = {"vault": ["VAULT_ADDR", "VAULT_TOKEN"], "op": ["OP_SERVICE_ACCOUNT_TOKEN"], "gh": ["GH_TOKEN"],
         "kubectl": ["KUBECONFIG"]}[tool]
missing = [name for name in needs if name not in os.environ]
if missing:
    sys.exit(tool + ": not logged in: " + " ".join(missing) + " is not set")
if any(name.startswith(("HEPGG_", "HEPINFRA_")) for name in os.environ):
    sys.exit(tool + ": got hepinfra's own variables")
with open(os.path.join(root, "argv.log"), "a") as log:
    log.write(json.dumps([tool, *args]) + "\n")
def path(*parts):
    return os.path.join(root, tool, *[p.replace("/", "_") for p in parts])
def save(value, *parts):
    os.makedirs(os.path.dirname(path(*parts)), exist_ok=True)
    with open(path(*parts), "w") as out:
        out.write(value)
def load(*parts):
    try:
        return open(path(*parts)).read()
    except FileNotFoundError:
        return None
if tool == "vault":
    mount = next(a.split("=", 1)[1] for a in args if a.startswith("-mount="))
    if args[:2] == ["kv", "put"] and args[-1] == "-":
        save(sys.stdin.read(), mount, args[-2])
    elif args[:2] == ["kv", "get"]:
        found = load(mount, args[-1])
        if found is None:
            sys.exit("No value found at " + args[-1])
        print(json.dumps({"data": {"data": json.loads(found), "metadata": {"version": 1}}}))
    else:
        sys.exit("unexpected vault call")
elif tool == "op":
    item, vault = args[2], next(a.split("=", 1)[1] for a in args if a.startswith("--vault="))
    if args[:2] == ["item", "get"]:
        print(load(vault, item) or json.dumps({"id": "abc", "title": item, "fields": [{"label": "notes", "type": "STRING", "value": "kept"}]}))
    elif args[:2] == ["item", "edit"]:
        save(sys.stdin.read(), vault, item)
    else:
        sys.exit("unexpected op call")
elif tool == "gh":
    assert args[:2] == ["secret", "set"], args
    save(sys.stdin.read(), args[args.index("--repo") + 1], args[args.index("--env") + 1], args[2])
elif tool == "kubectl":
    if args == ["apply", "--server-side", "--field-manager=hepinfra", "-f", "-"]:
        doc = json.loads(sys.stdin.read())
        data = {k: base64.b64encode(v.encode()).decode() for k, v in doc.pop("stringData").items()}
        save(json.dumps({**doc, "data": data}), doc["metadata"]["namespace"], doc["metadata"]["name"])
    elif args[:2] == ["get", "secret"]:
        found = load(args[args.index("-n") + 1], args[2])
        if found is None:
            sys.exit('Error from server (NotFound): secrets "' + args[2] + '" not found')
        print(found)
    else:
        sys.exit("unexpected kubectl call")
"""

KEYS = '{URL: "{{ db.connection_string }}", PASSWORD: "{{ db.password }}"}'
RECIPE = {"vault": "vault-kv-put", "op": "op-item-edit", "gh": "gh-secret-set", "kubectl": "kubectl-secret"}
# the CLIs' own credentials, as CI would export them (throwaway values)
CLI_ENV = {"VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_TOKEN": "hvs.standin", "OP_SERVICE_ACCOUNT_TOKEN": "ops_standin",
           "GH_TOKEN": "ghp_standin", "KUBECONFIG": "/nonexistent/kubeconfig"}  # fmt: skip


def documented_pass_env(tool: str) -> list[str]:
    """The ``pass_env: [...]`` line of the recipe's docstring, as a list."""
    import re

    line = next(ln for ln in (RECIPES / RECIPE[tool]).read_text().splitlines() if ln.strip().startswith("pass_env:"))
    found = re.search(r"pass_env: \[([A-Z0-9_, ]*)\]", line)
    assert found, line
    return [name.strip() for name in found.group(1).split(",") if name.strip()]


CASES = {
    "vault": (f'["{RECIPES}/vault-kv-put", "secret", "hepinfra/{{{{ env }}}}/{{{{ key }}}}"]',
              f'["{RECIPES}/vault-kv-put", "--read", "secret", "hepinfra/{{{{ env }}}}/{{{{ key }}}}"]'),
    "op": (f'["{RECIPES}/op-item-edit", "Infra", "shop-{{{{ env }}}}"]',
           f'["{RECIPES}/op-item-edit", "--read", "Infra", "shop-{{{{ env }}}}"]'),
    "gh": (f'["{RECIPES}/gh-secret-set", "acme/shop", "{{{{ env }}}}"]', None),
    "kubectl": (f'["{RECIPES}/kubectl-secret", "shop", "{{{{ env }}}}"]',
                f'["{RECIPES}/kubectl-secret", "--read", "shop", "{{{{ env }}}}"]'),
}  # fmt: skip


def stored_values(tool: str, store: Path) -> dict[str, str]:
    if tool == "vault":
        return json.loads((store / "vault" / "secret" / "hepinfra_prod_shop").read_text())
    if tool == "op":
        item = json.loads((store / "op" / "Infra" / "shop-prod").read_text())
        assert {"label": "notes", "type": "STRING", "value": "kept"} in item["fields"]  # the rest of the item stays
        return {f["label"]: f["value"] for f in item["fields"] if f["type"] == "CONCEALED"}
    if tool == "gh":
        return {p.name: p.read_text() for p in (store / "gh" / "acme_shop" / "prod").iterdir()}
    import base64

    secret = json.loads((store / "kubectl" / "prod" / "shop").read_text())
    assert secret["kind"] == "Secret" and secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "hepinfra"
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


@pytest.mark.parametrize("tool", list(CASES))
def test_recipe_delivers_on_stdin_only(tool: str, tmp_path: Path, server: Server) -> None:
    command, read = CASES[tool]
    manifest = f"""
version: 1
environments: {{prod: {{}}}}
databases:
  shop:
    engine: postgres
    outputs:
      - exec: {command}
        keys: {KEYS}
        pass_env: {json.dumps(["STANDIN_STORE", *documented_pass_env(tool)])}
""" + (f"        read: {read}\n" if read else "")
    project = write_project(tmp_path / "p", manifest)
    bindir, store = tmp_path / "bin", tmp_path / "store"
    bindir.mkdir()
    store.mkdir()
    standin = bindir / "standin"
    standin.write_text(STANDIN.replace("#!PYTHON", "#!" + sys.executable))
    standin.chmod(standin.stat().st_mode | stat.S_IXUSR)
    for name in ("vault", "op", "gh", "kubectl"):
        (bindir / name).symlink_to(standin)
    import os

    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "STANDIN_STORE": str(store), **CLI_ENV,
           "HEPINFRA_STATE_KEY": "a passphrase of the test"}  # fmt: skip
    done = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=env)
    assert done.code == 0, done.out + done.err
    live = reveal(server, "shop-prod")
    assert stored_values(tool, store) == {"URL": live["connectionString"], "PASSWORD": live["password"]}
    argv = (store / "argv.log").read_text()
    record_artifact(f"{tool} stand-in argv", argv)
    assert live["password"] not in argv and live["connectionString"] not in argv
    planned = invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=env)
    assert planned.code == 0, planned.out + planned.err
    assert invoke(["rotate", "shop", "-f", str(project), "--auto-approve"], server=server, env=env).code == 0
    assert stored_values(tool, store)["PASSWORD"] == reveal(server, "shop-prod")["password"]
