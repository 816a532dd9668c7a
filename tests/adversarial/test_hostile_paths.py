"""An attacker's (or a careless user's) paths: symlinks, hepinfra's and Git's own files, control
characters, hostile template sources. Every one is refused by ``validate`` (so by plan and apply
before any API call), names the manifest location, and leaves nothing written."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.cliutil import invoke, write_project
from tests.conftest import Server

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def manifest(output: str) -> str:
    return f"""
version: 1
environments:
  prod: {{}}
databases:
  shop:
    engine: postgres
    outputs:
{output}
"""


def dotenv(path: str, extra: str = "") -> str:
    return f'      - dotenv: "{path}"\n{extra}        keys: {{SHOP_URL: "{{{{ db.connection_string }}}}"}}\n'


def template(source: str, path: str = "out/shop.json", extra: str = "") -> str:
    return f'      - template: "{source}"\n        path: "{path}"\n{extra}'


def refused_everywhere(project: Path, server: Server, *needles: str) -> str:
    """validate, plan and apply all refuse with one located line, and apply made no API call."""
    for command in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        result = invoke([*command, "-f", str(project)], server=server)
        assert result.code == 1, (command, result.out, result.err)
        assert result.err.startswith(f"Error: {project}:") and result.err.count("\n") == 1, result.err
        assert "Traceback" not in result.err and "internal error" not in result.err
        for needle in needles:
            assert needle in result.err, (needle, result.err)
    assert server.requests() == []  # nothing reached hep.gg: refused before any call
    return result.err


def git_repo(root: Path, *tracked: str) -> None:
    subprocess.run([*GIT, "init", "-q", str(root)], check=True)
    for path in tracked:
        subprocess.run([*GIT, "-C", str(root), "add", "-f", path], check=True)


def test_directory_symlink_into_a_tracked_file_is_refused(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "repo"
    project = write_project(root, manifest(dotenv("link/.env")), {"real/.env": "# committed\n"})
    (root / "link").symlink_to("real")
    git_repo(root, "real/.env")
    refused_everywhere(project, server, "'link/.env' is a file tracked by Git")
    assert (root / "real/.env").read_text() == "# committed\n"


def test_file_symlink_into_a_tracked_file_is_refused(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "repo"
    project = write_project(root, manifest(dotenv(".env")), {"config/app.env": "A=1\n"})
    (root / ".env").symlink_to("config/app.env")
    git_repo(root, "config/app.env")
    refused_everywhere(project, server, "tracked by Git")


def test_a_symlinked_output_pointing_outside_is_refused(tmp_path: Path, server: Server) -> None:
    outside = tmp_path / "elsewhere.env"
    outside.write_text("KEEP=1\n")
    project = write_project(tmp_path / "p", manifest(dotenv(".env")))
    (project.parent / ".env").symlink_to(outside)
    refused_everywhere(project, server, "resolves through a symbolic link to", "allow_outside")
    assert outside.read_text() == "KEEP=1\n"


def test_a_symlink_inside_the_project_is_followed_and_kept(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", manifest(dotenv(".env")), {"shared/app.env": "KEEP=1\n"})
    (project.parent / ".env").symlink_to("shared/app.env")
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    assert (project.parent / ".env").is_symlink()  # the link stays; its target got the key
    assert "SHOP_URL=" in (project.parent / "shared/app.env").read_text()
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server).code == 0


@pytest.mark.parametrize(
    ("path", "why"),
    [
        (".hepinfra/state/prod.lock", "inside .hepinfra/"),
        (".hepinfra/state/prod.json", "inside .hepinfra/"),
        (".hepinfra/local/credentials.json", "inside .hepinfra/"),
        ("./.hepinfra/x.env", "inside .hepinfra/"),
        ("sub/../.hepinfra/x.env", "leaves the manifest's directory"),
        (".git/config", "inside a Git directory"),
        ("vendor/.git/hooks/post-checkout", "inside a Git directory"),
        ("hepinfra.yaml", "is the manifest"),
        ("./hepinfra.yaml", "is the manifest"),
        ("shop.json.j2", "is the template source"),
        ("out/", "does not name a file"),
        ("out", "is a directory"),
    ],
)
def test_outputs_may_not_overwrite_hepinfras_gits_or_the_manifests_files(
    tmp_path: Path, server: Server, path: str, why: str
) -> None:
    body = manifest(dotenv(path) + template("shop.json.j2"))
    project = write_project(tmp_path / "p", body, {"shop.json.j2": "{}\n", "out/keep": ""})
    refused_everywhere(project, server, why)
    assert (project.parent / "hepinfra.yaml").read_text().startswith("\nversion: 1")


def test_a_link_into_hepinfras_own_directory_is_refused(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", manifest(dotenv("state-link/prod.lock")))
    (project.parent / ".hepinfra/state").mkdir(parents=True)
    (project.parent / "state-link").symlink_to(".hepinfra/state")
    refused_everywhere(project, server, "inside .hepinfra/")


@pytest.mark.parametrize("char", ["\\0", "\\n", "\\r", "\\t", "\\x1b", "\\x7f", "\\u2028"])
def test_control_characters_in_rendered_paths_are_refused(tmp_path: Path, server: Server, char: str) -> None:
    body = manifest('      - dotenv: "{{ vars.dir }}/.env"\n        keys: {A: "{{ db.password }}"}\n')
    body = body.replace("prod: {}", f'prod: {{vars: {{dir: "out{char}x"}}}}')
    project = write_project(tmp_path / "p", body)
    refused_everywhere(project, server, "contains a control character")


@pytest.mark.parametrize(
    ("source", "extra", "why"),
    [
        ("/proc/self/environ", "", "leaves the manifest's directory"),
        ("/proc/self/environ", "        allow_outside: true\n", "special file system"),
        ("/dev/zero", "        allow_outside: true\n", "special file system"),
        ("../secret.txt", "", "leaves the manifest's directory"),
        (".hepinfra/local/credentials.json", "", "inside .hepinfra/"),
        (".git/config", "", "inside a Git directory"),
        ("missing.j2", "", "not found"),
        ("templates", "", "not a regular file"),
    ],
)
def test_hostile_template_sources_are_refused(
    tmp_path: Path, server: Server, source: str, extra: str, why: str
) -> None:
    project = write_project(tmp_path / "p", manifest(template(source, extra=extra)), {"templates/x.j2": "x"})
    (tmp_path / "secret.txt").write_text("top secret")
    (project.parent / ".git").mkdir()
    (project.parent / ".git/config").write_text("[core]\n")
    (project.parent / ".hepinfra/local").mkdir(parents=True)
    (project.parent / ".hepinfra/local/credentials.json").write_text("{}")
    refused_everywhere(project, server, why)
    assert not (project.parent / "out").exists()


def test_a_template_symlink_leading_outside_is_refused(tmp_path: Path, server: Server) -> None:
    (tmp_path / "secret.txt").write_text("top secret")
    project = write_project(tmp_path / "p", manifest(template("t.j2")))
    (project.parent / "t.j2").symlink_to(tmp_path / "secret.txt")
    refused_everywhere(project, server, "resolves through a symbolic link")


def test_a_fifo_template_never_hangs(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", manifest(template("t.j2")))
    os.mkfifo(project.parent / "t.j2")
    started = time.monotonic()
    refused_everywhere(project, server, "not a regular file")
    assert time.monotonic() - started < 10


def test_an_oversized_template_is_refused(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", manifest(template("t.j2")))
    (project.parent / "t.j2").write_bytes(b"x" * (1024 * 1024 + 1))
    refused_everywhere(project, server, "larger than 1024 KiB")


def test_a_fifo_or_device_as_output_is_refused(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", manifest(dotenv("pipe.env")))
    os.mkfifo(project.parent / "pipe.env")
    refused_everywhere(project, server, "not a regular file")


def test_the_manifest_itself_may_not_be_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "hepinfra.yaml"
    os.mkfifo(fifo)
    result = invoke(["validate", "-f", str(fifo)])
    assert result.code == 1 and "not a regular file" in result.err


def test_a_path_swapped_for_a_link_after_the_check_is_refused_at_write_time(tmp_path: Path) -> None:
    from hepinfra import manifest as manifest_mod
    from hepinfra.errors import OutputError
    from hepinfra.outputs.base import resolve_path

    outside = tmp_path / "outside"
    outside.mkdir()
    project = write_project(tmp_path / "p", manifest(dotenv("out/.env")))
    (project.parent / "out").mkdir()
    loaded = manifest_mod.load(project)
    target = loaded.declared["prod"][0].outputs[0]
    (project.parent / "out").rmdir()
    (project.parent / "out").symlink_to(outside)
    with pytest.raises(OutputError, match="resolves through a symbolic link"):
        resolve_path(loaded.project_dir, target)


def test_two_environments_writing_one_key_of_one_file_is_a_validate_error(tmp_path: Path, server: Server) -> None:
    body = """
version: 1
environments: {staging: {}, production: {}}
databases:
  shop:
    outputs:
      - dotenv: shared.env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
"""
    project = write_project(tmp_path / "p", body)
    refused_everywhere(project, server, "key SHOP_URL in 'shared.env' is also written by staging/databases.shop")
    per_env = body.replace("dotenv: shared.env", 'dotenv: "{{ env }}.env"')
    project.write_text(per_env)
    assert invoke(["validate", "-f", str(project)]).code == 0


def test_two_paths_aliasing_one_file_through_a_link_are_one_file(tmp_path: Path, server: Server) -> None:
    body = manifest(dotenv("a/.env") + dotenv("b/.env"))
    project = write_project(tmp_path / "p", body, {"a/keep": ""})
    (project.parent / "b").symlink_to("a")
    refused_everywhere(project, server, "is the same file as another output of prod/databases.shop")


def test_untracked_unignored_outputs_are_warned_about(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "repo"
    project = write_project(root, manifest(dotenv("app.env") + dotenv("ignored.env")), {".gitignore": "ignored.env\n"})
    git_repo(root, ".gitignore")
    result = invoke(["validate", "-f", str(project)])
    assert result.code == 0
    assert "output 'app.env' is not ignored by Git" in result.err and "ignored.env" not in result.err


@pytest.mark.parametrize("out", ["hepinfra.yaml", "shop.json.j2", ".hepinfra/state/other.json", ".git/config"])
def test_plan_out_never_overwrites_what_is_not_a_plan_file(tmp_path: Path, server: Server, out: str) -> None:
    project = write_project(tmp_path / "p", manifest(template("shop.json.j2")), {"shop.json.j2": "{}\n"})
    for name, content in ((".hepinfra/state/other.json", "{}"), (".git/config", "[core]\n")):
        (project.parent / name).parent.mkdir(parents=True, exist_ok=True)
        (project.parent / name).write_text(content)
    before = (project.parent / out).read_bytes()
    result = invoke(["plan", "-f", str(project), "--out", str(project.parent / out)], server=server)
    assert result.code == 1 and result.err.startswith("Error: --out ") and result.err.count("\n") == 1
    assert (project.parent / out).read_bytes() == before
    assert server.requests() == []  # refused before any call


def test_state_records_cannot_make_apply_delete_or_edit_files_it_did_not_write(tmp_path: Path, server: Server) -> None:
    """A pull request can edit state (it holds no secret): a planted 'no longer declared' record must
    not make apply remove a file, or keys from a file, that hepinfra cannot prove it wrote."""
    from hepinfra.state import codec

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    project = write_project(tmp_path / "p", manifest(dotenv(".env")), {"app.env": "KEEP=1\nSHOP_URL=mine\n"})
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    path = project.parent / ".hepinfra/state/prod.json"
    state = codec.decode(path.read_bytes(), "state")
    record = next(iter(state.outputs.values()))
    planted = {
        "shop:" + str(victim): record.model_copy(update={"path": str(victim), "kind": "template", "keys": ()}),
        "shop:hepinfra.yaml": record.model_copy(update={"path": "hepinfra.yaml", "kind": "template", "keys": ()}),
        "shop:app.env": record.model_copy(update={"path": "app.env"}),
    }
    path.write_bytes(codec.encode(state.model_copy(update={"outputs": {**state.outputs, **planted}})))
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 0, result.out + result.err
    assert "changed since hepinfra wrote it; left in place" in result.err
    assert victim.read_text() == "precious\n"
    assert (project.parent / "hepinfra.yaml").read_text().startswith("\nversion: 1")
    assert (project.parent / "app.env").read_text() == "KEEP=1\nSHOP_URL=mine\n"
    assert set(codec.decode(path.read_bytes(), "state").outputs) == {"shop:.env"}


def test_an_edited_saved_plan_cannot_point_a_change_at_another_database(tmp_path: Path, server: Server) -> None:
    import json

    body = manifest(dotenv("shop.env")).replace("databases:\n", "databases:\n  billing:\n    outputs: []\n")
    project = write_project(tmp_path / "p", body)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    (project.parent / "shop.env").unlink()
    plan_file = tmp_path / "p.plan"
    assert invoke(["plan", "-f", str(project), "--out", str(plan_file)], server=server).code == 0
    doc = json.loads(plan_file.read_text())
    from hepinfra.state import codec

    state = codec.decode((project.parent / ".hepinfra/state/prod.json").read_bytes(), "s")
    for change in doc["changes"]:
        if change["key"] == "shop":
            change["database_id"] = state.databases["billing"].id
    plan_file.write_text(json.dumps(doc))
    result = invoke(["apply", str(plan_file), "-f", str(project)], server=server)
    assert result.code == 1 and "names a database id that the pinned state and hep.gg do not give it" in result.err
    assert not (project.parent / "shop.env").exists()
