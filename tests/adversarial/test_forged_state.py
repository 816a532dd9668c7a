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


# --- ids: a ciphertext is bound to its state's lineage and its address ----------------------------------

STATE_KEY = {"HEPINFRA_STATE_KEY": "correct horse battery staple"}

IDS = """
version: 1
environments:
  prod: {}
ids:
  first:
    type: nanoid
    length: 32
    outputs:
      - dotenv: first.env
        keys: {FIRST: "{{ id.value }}"}
  second:
    type: nanoid
    length: 32
    outputs:
      - dotenv: second.env
        keys: {SECOND: "{{ id.value }}"}
"""


def minted(root: Path, server: Server) -> Path:
    project = write_project(root, IDS)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=STATE_KEY).code == 0
    return project


def idgen_calls(server: Server) -> int:
    return sum(1 for r in server.requests() if r.get("service") == "idgen" and r.get("method") == "POST")


def refused_to_open(project: Path, server: Server, address: str) -> None:
    """apply (with outputs to render) fails that id alone and ``output`` refuses, with one line each
    naming it; no mint, nothing of it written, its record unchanged."""
    key = address.rsplit(".", 1)[1]
    for name in ("first", "second"):
        (project.parent / f"{name}.env").unlink()
    before, calls = state_file(project).read_bytes(), idgen_calls(server)
    applied = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=STATE_KEY)
    assert applied.code == 1, applied.out + applied.err
    wanted = f"{address}: its encrypted value in the state of environment 'prod'"
    failed = [line for line in applied.out.splitlines() if line.startswith(f"   ! {address}: render failed: ")]
    assert len(failed) == 1 and wanted in failed[0], applied.out
    assert "was not sealed for this id in this state" in failed[0]
    assert "nothing was decrypted, minted or written" in failed[0]
    assert "Traceback" not in applied.err and "internal error" not in applied.err
    shown = invoke(["output", "-f", str(project), address], server=server, env=STATE_KEY)
    assert shown.code == 1 and shown.err.count("\n") == 1 and wanted in shown.err, shown.err
    assert idgen_calls(server) == calls
    assert not (project.parent / f"{key}.env").exists()
    after = codec.decode(state_file(project).read_bytes(), "state")
    assert after.ids == codec.decode(before, "state").ids


def test_a_ciphertext_copied_from_another_state_with_the_same_key_does_not_open(tmp_path: Path, server: Server) -> None:
    theirs = codec.decode(state_file(minted(tmp_path / "a", server)).read_bytes(), "state")
    project = minted(tmp_path / "b", server)
    ours = codec.decode(state_file(project).read_bytes(), "state")
    assert theirs.lineage != ours.lineage and ours.ids["first"].bound == "lineage+address"
    forged = {**ours.ids, "first": ours.ids["first"].model_copy(update={"ciphertext": theirs.ids["first"].ciphertext})}
    state_file(project).write_bytes(codec.encode(ours.model_copy(update={"ids": forged})))
    refused_to_open(project, server, "prod/ids.first")


def test_a_ciphertext_copied_to_another_address_does_not_open(tmp_path: Path, server: Server) -> None:
    project = minted(tmp_path, server)
    ours = codec.decode(state_file(project).read_bytes(), "state")
    moved = ours.ids["second"].model_copy(update={"ciphertext": ours.ids["first"].ciphertext})
    state_file(project).write_bytes(codec.encode(ours.model_copy(update={"ids": {**ours.ids, "second": moved}})))
    refused_to_open(project, server, "prod/ids.second")


def old_style(state: State, env: dict[str, str]) -> State:
    """``state`` as a hepinfra before lineage binding wrote it: each value sealed bound to its address only,
    and no ``bound`` field."""
    from hepinfra.state.crypto import cipher_for

    cipher = cipher_for("prod", state, env)
    ids = {}
    for key, managed in state.ids.items():
        plain = cipher.open_id(managed.ciphertext, f"prod/ids.{key}", state.lineage, managed.bound)
        ids[key] = managed.model_copy(update={"ciphertext": cipher.seal(plain, f"prod/ids.{key}"), "bound": None})
    return state.model_copy(update={"ids": ids})


def test_a_state_sealed_the_old_way_still_opens_and_is_sealed_again_bound_to_its_lineage(
    tmp_path: Path, server: Server
) -> None:
    project = minted(tmp_path, server)
    values = [(project.parent / f"{name}.env").read_text() for name in ("first", "second")]
    old = codec.encode(old_style(codec.decode(state_file(project).read_bytes(), "state"), STATE_KEY))
    assert b'"bound"' not in old and codec.encode(codec.decode(old, "state")) == old  # reads back byte for byte
    state_file(project).write_bytes(old)
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=STATE_KEY).code == 0
    for address in ("prod/ids.first", "prod/ids.second"):
        shown = invoke(["output", "-f", str(project), address], server=server, env=STATE_KEY, secret_ok=True)
        assert shown.code == 0 and shown.out in values, shown.err
    calls = idgen_calls(server)
    for name in ("first", "second"):  # a write that touches the ids: both are sealed again
        (project.parent / f"{name}.env").unlink()
    applied = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=STATE_KEY)
    assert applied.code == 0, applied.err
    assert [(project.parent / f"{name}.env").read_text() for name in ("first", "second")] == values
    assert idgen_calls(server) == calls
    upgraded = codec.decode(state_file(project).read_bytes(), "state")
    assert {m.bound for m in upgraded.ids.values()} == {"lineage+address"}
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=STATE_KEY).code == 0


def test_an_old_style_ciphertext_in_a_record_marked_new_never_falls_back(tmp_path: Path, server: Server) -> None:
    project = minted(tmp_path, server)
    ours = codec.decode(state_file(project).read_bytes(), "state")
    old = old_style(ours, STATE_KEY)
    forged = {k: m.model_copy(update={"bound": "lineage+address"}) for k, m in old.ids.items()}
    state_file(project).write_bytes(codec.encode(ours.model_copy(update={"ids": forged})))
    refused_to_open(project, server, "prod/ids.first")
