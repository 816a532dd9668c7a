"""A state that others can write (a committed local state file, an S3 object, a PostgreSQL row) cannot
be turned against the user.

- Retire: a planted output record for a file outside the project is never deleted, even with a
  digest that matches (as an ``allow_outside`` output once wrote it); a record in an environment
  whose digests are keyed by the public constant (only uploads) deletes nothing. Both are listed
  ("will be left (listed only)" in the plan; "left in place: ..." from apply), and apply succeeds.
- The same refusal through the S3 backend.
- Ids: a ciphertext is bound to its state's lineage and address; copied elsewhere it does not
  open (one line, no mint, nothing written); a state sealed the old way still opens and is upgraded.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

from hepinfra.apply.writer import _record_target
from hepinfra.digests import Digester
from hepinfra.outputs import SINKS
from hepinfra.state import codec
from hepinfra.state.model import State
from tests.cliutil import invoke, write_project
from tests.conftest import KEY, Server
from tests.servers import Moto

DATABASES = """
version: 1
{state}
environments:
  prod: {{}}
databases:
  shop:
    engine: postgres
    outputs:
      - dotenv: .env
        keys: {{SHOP_URL: "{{{{ db.connection_string }}}}"}}
"""

UPLOADS = """
version: 1
environments:
  prod: {}
uploads:
  logo:
    file: logo.png
    outputs:
      - dotenv: .env
        keys: {LOGO_URL: "{{ upload.url }}"}
"""

LEFT = "will be left (listed only)"


def state_file(project: Path) -> Path:
    return project.parent / ".hepinfra/state/prod.json"


def plant(state: State, ref: str, files: list[tuple[Path, str]], digester: Digester) -> State:
    """``state`` with a 'no longer declared' template record of ``ref`` for each file, whose digest is
    what ``digester`` computes for the file's content now (as if hepinfra had written it)."""
    template = next(iter(state.outputs.values()))
    planted = {}
    for file, written in files:
        record = template.model_copy(update={"path": written, "kind": "template", "keys": (), "database": ref})
        observed = SINKS["template"].observe(file, _record_target(record), (), digester)
        planted[State.output_id(ref, written)] = record.model_copy(update={"digest": observed.digest})
    return state.model_copy(update={"outputs": {**state.outputs, **planted}})


def assert_listed_not_deleted(project: Path, server: Server, env: dict[str, str], *paths: str) -> None:
    """plan (text, JSON, Markdown) says each of ``paths`` will be left; apply succeeds and says so."""
    planned = invoke(["plan", "-f", str(project)], server=server, env=env)
    assert planned.code == 0, planned.err
    as_json = invoke(["plan", "-f", str(project), "--json"], server=server, env=env)
    left = {p: why for c in as_json.json()["changes"] for p, why in c.get("retire_left", {}).items()}
    markdown = invoke(["plan", "-f", str(project), "--markdown"], server=server, env=env)
    for path in paths:
        assert f"- {path}: {LEFT}: it " in planned.out, planned.out
        assert path in left
        assert f"{path}: {LEFT}" in markdown.out, markdown.out
    applied = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=env)
    assert applied.code == 0, applied.out + applied.err
    for path in paths:
        assert f"Warning: left in place: {path} is " in applied.err, applied.err
    assert "remove it yourself if it is no longer used" in applied.err
    assert "failed" not in applied.err


def test_a_planted_record_for_a_file_outside_the_project_is_listed_never_deleted(
    tmp_path: Path, server: Server
) -> None:
    """Even with a digest keyed by the real database key (as an allow_outside output would have)."""
    victim = tmp_path / "important"
    victim.write_text("precious\n")
    project = write_project(tmp_path / "p", DATABASES.format(state=""))
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    state = codec.decode(state_file(project).read_bytes(), "state")
    digester = Digester(KEY, state.lineage)
    relative = "../important"
    planted = plant(state, "shop", [(victim, str(victim)), (victim, relative)], digester)
    state_file(project).write_bytes(codec.encode(planted))
    assert_listed_not_deleted(project, server, {}, str(victim), relative)
    assert victim.read_text() == "precious\n"
    assert set(codec.decode(state_file(project).read_bytes(), "state").outputs) == {"shop:.env"}
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server).code == 0


def test_a_symlink_inside_the_project_to_a_file_outside_is_judged_by_its_real_path(
    tmp_path: Path, server: Server
) -> None:
    victim = tmp_path / "important"
    victim.write_text("precious\n")
    project = write_project(tmp_path / "p", DATABASES.format(state=""))
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    (project.parent / "link.conf").symlink_to(victim)
    state = codec.decode(state_file(project).read_bytes(), "state")
    state_file(project).write_bytes(
        codec.encode(plant(state, "shop", [(victim, "link.conf")], Digester(KEY, state.lineage)))
    )
    assert_listed_not_deleted(project, server, {}, "link.conf")
    assert victim.read_text() == "precious\n"


def test_uploads_only_a_record_digested_with_the_public_key_deletes_nothing(tmp_path: Path, server: Server) -> None:
    """An environment with only uploads digests with a public constant: anyone can forge a record that
    matches a file inside the project. It is listed, never deleted."""
    root = tmp_path / "p"
    project = write_project(root, UPLOADS)
    (root / "logo.png").write_bytes(b"\x89PNG logo")
    (root / "notes.txt").write_text("mine\n")
    victim = tmp_path / "important"
    victim.write_text("precious\n")
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    state = codec.decode(state_file(project).read_bytes(), "state")
    public = Digester("hepinfra-public-values", state.lineage, secret=False)
    forged = plant(state, "uploads.logo", [(root / "notes.txt", "notes.txt"), (victim, str(victim))], public)
    state_file(project).write_bytes(codec.encode(forged))
    assert_listed_not_deleted(project, server, {}, "notes.txt", str(victim))
    assert (root / "notes.txt").read_text() == "mine\n" and victim.read_text() == "precious\n"


def test_an_ordinary_retire_with_a_real_key_still_deletes(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "p"
    body = DATABASES.format(state="").replace(
        "    outputs:\n", "    outputs:\n      - template: t.j2\n        path: out.conf\n"
    )
    project = write_project(root, body, {"t.j2": "url={{ db.connection_string }}\n"})
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    assert (root / "out.conf").exists()
    write_project(root, DATABASES.format(state=""))
    planned = invoke(["plan", "-f", str(project)], server=server)
    assert "- out.conf: will be deleted" in planned.out, planned.out
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    assert not (root / "out.conf").exists()


def test_a_planted_record_in_s3_state_deletes_nothing_outside(
    tmp_path: Path, server: Server, moto_server: Moto
) -> None:
    from hepinfra.state.s3 import S3Backend
    from hepinfra.state.spec import S3State

    bucket = moto_server.bucket()
    block = f"state:\n  backend: s3\n  bucket: {bucket}\n  prefix: team/"
    victim = tmp_path / "important"
    victim.write_text("precious\n")
    project = write_project(tmp_path / "p", DATABASES.format(state=block))
    env = dict(moto_server.env)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=env).code == 0
    spec = S3State(backend="s3", bucket=bucket, prefix="team/")
    with mock.patch.dict(os.environ, env):
        backend = S3Backend(spec)
        state = backend.read("prod")
        assert state is not None
        backend.replace("prod", plant(state, "shop", [(victim, str(victim))], Digester(KEY, state.lineage)))
    assert_listed_not_deleted(project, server, env, str(victim))
    assert victim.read_text() == "precious\n"
