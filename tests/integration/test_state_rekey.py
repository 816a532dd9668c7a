"""``hepinfra state rekey`` through the real CLI, against the local hep.gg on a real socket, on every
state backend (local files, S3 in moto's server mode, a real PostgreSQL).

- every id's value is the same after a rekey (``output`` before and after), a plan has nothing to
  do (the environment's keyed digests outlive the key), one new serial per environment and its
  backup holds the old version; the old key is then refused in one line;
- a missing or wrong old key, or a new key equal to the old, is one line, exit 1, nothing written;
- an environment that fails leaves the ones before it done (named) and itself untouched; the re-run
  skips what is done;
- SIGKILLed between environments: each is wholly old or wholly new, and the re-run converges;
- the sandbox (``url: local``, no HEPINFRA_STATE_KEY) replaces its own key file, journaled by
  ``state.key.next``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from hepinfra.state.backend import Backend
from hepinfra.state.local import LocalBackend
from hepinfra.state.model import State
from hepinfra.state.postgres import PostgresBackend
from hepinfra.state.s3 import S3Backend
from hepinfra.state.spec import PostgresState, S3State
from tests.cliutil import Result, invoke, write_project
from tests.conftest import ENV, ISSUED, Server, record_artifact
from tests.servers import Moto, Postgres

OLD = "old state passphrase 7c1e"
NEW = "new state passphrase 93ad"
OTHER = "a third state passphrase 51f0"
RAW = "q3mC0c3S1c0wq0i3m7GqH3Yf1u0nKZr9o2fPq0pQn1s="  # base64 of 32 bytes: a raw key
ISSUED.update((OLD, NEW, OTHER, RAW))  # the session's secret scan looks for the keys too

MANIFEST = """
version: 1
{state}
environments:
  staging: {{}}
  production: {{}}
ids:
  session_secret:
    type: nanoid
    length: 48
    outputs:
      - dotenv: "out/{{{{ env }}}}/.env"
        keys: {{SESSION_SECRET: "{{{{ id.value }}}}"}}
  webhook:
    type: keypair
    outputs:
      - dotenv: "out/{{{{ env }}}}/.env"
        keys: {{WEBHOOK_PUBLIC: "{{{{ id.value }}}}", WEBHOOK_PRIVATE: "{{{{ id.private }}}}"}}
"""
ADDRESSES = [f"{env}/ids.{key}" for env in ("staging", "production") for key in ("session_secret", "webhook")]


class World:
    """A project on one backend: how to run the CLI against it and read its states."""

    def __init__(
        self, root: Path, server: Server | None, block: str, env: dict[str, str], backend: Callable[[], Backend]
    ):
        self.root, self.server, self.env, self.backend = root, server, env, backend
        self.path = write_project(root, MANIFEST.format(state=block))

    def run(self, *args: str, key: str | None = None, old: str | None = None, secret_ok: bool = False) -> Result:
        env = {**self.env, "HEPINFRA_STATE_KEY": key or "", "HEPINFRA_STATE_KEY_OLD": old or ""}
        with mock.patch.dict(os.environ, self.env):
            return invoke([*args, "-f", str(self.path)], server=self.server, env=env, secret_ok=secret_ok)

    def values(self, key: str | None) -> dict[str, Any]:
        """Every id's value, as ``hepinfra output`` prints it."""
        found = {}
        for address in ADDRESSES:
            shown = self.run("output", address, "--format", "json", key=key, secret_ok=True)
            assert shown.code == 0, shown.err
            found[address] = json.loads(shown.out)
        ISSUED.update(v for d in found.values() for v in d.values())
        return found

    def state(self, env: str) -> State:
        with mock.patch.dict(os.environ, self.env):
            found = self.backend().read(env)
        assert found is not None
        return found

    def spawn(self, *args: str, key: str, old: str, kill_at: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEPGG_")}
        if self.server is not None:
            env.update(ENV, HEPGG_URL=self.server.url, HEPGG_ID_URL=self.server.url)
        env.update(self.env, HEPINFRA_STATE_KEY=key, HEPINFRA_STATE_KEY_OLD=old, HEPINFRA_TEST_KILL_AT=kill_at)
        done = subprocess.run([sys.executable, "-m", "hepinfra", *args, "-f", str(self.path)], env=env,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        record_artifact(f"hepinfra {' '.join(args)} (killed at {kill_at})", done.stdout + done.stderr)
        return done


@pytest.fixture(params=["local", "s3", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path: Path, server: Server) -> World:
    root = tmp_path / "project"
    if request.param == "local":
        return World(root, server, "", {}, lambda: LocalBackend(root / ".hepinfra" / "state"))
    if request.param == "s3":
        moto: Moto = request.getfixturevalue("moto_server")
        bucket = moto.bucket()
        spec = S3State(backend="s3", bucket=bucket, prefix="team/")
        block = f"state:\n  backend: s3\n  bucket: {bucket}\n  prefix: team/"
        return World(root, server, block, dict(moto.env), lambda: S3Backend(spec))
    pg: Postgres = request.getfixturevalue("postgres_server")
    schema = pg.schema()
    spec_pg = PostgresState(backend="postgres", schema=schema)
    env = {"HEPINFRA_STATE_PG": pg.url}
    return World(root, server, f"state:\n  backend: postgres\n  schema: {schema}", env,
                 lambda: PostgresBackend(spec_pg, env))  # fmt: skip


def one_line(result: Result) -> str:
    assert result.code == 1 and "Traceback" not in result.err, result.out + result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


def test_rekey_keeps_every_value_and_refuses_the_old_key(world: World) -> None:
    assert world.run("apply", "--auto-approve", key=OLD).code == 0
    before = world.values(OLD)
    states = {env: world.state(env) for env in ("staging", "production")}

    done = world.run("state", "rekey", key=NEW, old=OLD)
    assert done.code == 0, done.err
    assert done.out.splitlines() == [
        f"Re-sealed the state of '{env}' under the new key: 2 value(s) (serial {states[env].serial + 1}); "
        "the previous version is its backup."
        for env in ("staging", "production")
    ]
    for env, old_state in states.items():
        new_state = world.state(env)
        assert new_state.serial == old_state.serial + 1 and new_state.lineage == old_state.lineage
        assert new_state.crypto is not None and old_state.crypto is not None
        assert new_state.crypto.salt != old_state.crypto.salt and new_state.crypto.check != old_state.crypto.check
        assert new_state.crypto.digest_key is not None  # the old digest key, sealed under the new one
        for key, managed in new_state.ids.items():
            assert managed.ciphertext != old_state.ids[key].ciphertext
            assert managed.value_digest == old_state.ids[key].value_digest
        assert new_state.outputs == old_state.outputs and new_state.journal == old_state.journal
    assert world.values(NEW) == before
    # nothing to do: every output's digest was keyed by the old key, and still matches
    planned = world.run("plan", "--detailed-exitcode", key=NEW)
    assert planned.code == 0, planned.out + planned.err

    for args in (["plan"], ["apply", "--auto-approve"], ["output", ADDRESSES[0]]):
        refused = one_line(world.run(*args, key=OLD))
        assert "HEPINFRA_STATE_KEY is not the key the state of environment" in refused
    assert world.values(NEW) == before

    again = world.run("state", "rekey", key=NEW, old=OLD)  # a re-run: nothing left to do, nothing written
    assert again.code == 0, again.err
    assert "Already under the new key: the state of 'staging'" in again.out
    assert all(world.state(env).serial == states[env].serial + 1 for env in states)

    onward = world.run("state", "rekey", key=RAW, old=NEW)  # twice over, to a raw key: the digests still hold
    assert onward.code == 0, onward.err
    assert world.values(RAW) == before
    assert world.run("plan", "--detailed-exitcode", key=RAW).code == 0


def test_missing_wrong_or_same_keys_are_one_line_and_write_nothing(world: World) -> None:
    assert world.run("apply", "--auto-approve", key=OLD).code == 0
    states = {env: world.state(env) for env in ("staging", "production")}
    cases = [
        ({"key": NEW}, "HEPINFRA_STATE_KEY_OLD is not set"),
        ({"old": OLD}, "HEPINFRA_STATE_KEY is not set"),
        ({"key": NEW, "old": OTHER}, "HEPINFRA_STATE_KEY_OLD is not the key the state of environment 'staging'"),
        ({"key": OLD, "old": OLD + "\n"}, "HEPINFRA_STATE_KEY_OLD and HEPINFRA_STATE_KEY hold the same key"),
    ]
    for keys, message in cases:
        line = one_line(world.run("state", "rekey", **keys))
        assert message in line and "nothing was" in line, line
        assert {env: world.state(env) for env in states} == states
    one_line(world.run("state", "rekey", "-e", "nowhere", key=NEW, old=OLD))
    assert world.values(OLD)  # still opens


def test_a_failing_environment_leaves_the_others_done_and_the_rerun_converges(tmp_path: Path, server: Server) -> None:
    world = World(tmp_path, server, "", {}, lambda: LocalBackend(tmp_path / ".hepinfra" / "state"))
    assert world.run("apply", "--auto-approve", "-e", "staging", key=OLD).code == 0
    assert world.run("apply", "--auto-approve", "-e", "production", key=OTHER).code == 0
    production = world.state("production")

    failed = world.run("state", "rekey", key=NEW, old=OLD)
    line = one_line(failed)
    assert "the state of environment 'production'" in line and "already under the new key: staging" in line
    assert failed.out.startswith("Re-sealed the state of 'staging'")
    assert world.state("production") == production  # all or nothing

    rerun = world.run("state", "rekey", key=NEW, old=OTHER)
    assert rerun.code == 0, rerun.err
    assert rerun.out.splitlines()[0].startswith("Already under the new key: the state of 'staging'")
    assert rerun.out.splitlines()[1].startswith("Re-sealed the state of 'production'")
    assert world.run("plan", "--detailed-exitcode", key=NEW).code == 0


def test_killed_between_environments_each_is_old_or_new_and_the_rerun_converges(world: World) -> None:
    assert world.run("apply", "--auto-approve", key=OLD).code == 0
    before = world.values(OLD)
    killed = world.spawn("state", "rekey", key=NEW, old=OLD, kill_at="step:rekey")
    assert killed.returncode == -9, killed.stderr
    assert killed.stdout.startswith("Re-sealed the state of 'staging'")
    staging = {a: v for a, v in before.items() if a.startswith("staging/")}
    production = {a: v for a, v in before.items() if a.startswith("production/")}
    for address, value in staging.items():  # staging: wholly new; production: wholly old
        shown = world.run("output", address, "--format", "json", key=NEW, secret_ok=True)
        assert json.loads(shown.out) == value
    for address, value in production.items():
        shown = world.run("output", address, "--format", "json", key=OLD, secret_ok=True)
        assert json.loads(shown.out) == value
    assert world.run("output", ADDRESSES[-1], key=NEW).code == 1

    rerun = world.run("state", "rekey", key=NEW, old=OLD)
    assert rerun.code == 0, rerun.err
    assert "Already under the new key: the state of 'staging'" in rerun.out
    assert "Re-sealed the state of 'production'" in rerun.out
    assert world.values(NEW) == before
    assert world.run("plan", "--detailed-exitcode", key=NEW).code == 0


# --- the sandbox: url: local, its own key file ---------------------------------------------------------


def sandbox(tmp_path: Path) -> tuple[World, Path]:
    root = tmp_path / "sandbox"
    world = World(root, None, "hepgg: {url: local}", {}, lambda: LocalBackend(root / ".hepinfra" / "state"))
    return world, root / ".hepinfra" / "local" / "state.key"


def test_the_sandbox_replaces_its_own_key_file(tmp_path: Path) -> None:
    world, key_file = sandbox(tmp_path)
    assert world.run("apply", "--auto-approve").code == 0
    before, old_key = world.values(None), key_file.read_bytes()
    ISSUED.add(old_key.decode().strip())
    states = {env: world.state(env) for env in ("staging", "production")}

    partial = one_line(world.run("state", "rekey", "-e", "staging"))
    assert "seals every environment's values; rekey them all (no -e)" in partial
    ambiguous = one_line(world.run("state", "rekey", old=OLD))
    assert "HEPINFRA_STATE_KEY_OLD is set but HEPINFRA_STATE_KEY is not" in ambiguous
    assert key_file.read_bytes() == old_key and not key_file.with_name("state.key.next").exists()
    assert {env: world.state(env) for env in states} == states

    done = world.run("state", "rekey")
    assert done.code == 0, done.err
    assert [line.split(":")[0] for line in done.out.splitlines()] == [
        "Re-sealed the state of 'staging' under the new key",
        "Re-sealed the state of 'production' under the new key",
    ]
    assert key_file.read_bytes() != old_key and not key_file.with_name("state.key.next").exists()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert world.values(None) == before
    assert world.run("plan", "--detailed-exitcode").code == 0
    refused = one_line(world.run("plan", key=old_key.decode().strip()))
    assert "HEPINFRA_STATE_KEY is not the key the state of environment" in refused


def test_a_killed_sandbox_rekey_keeps_its_next_key_and_the_rerun_converges(tmp_path: Path) -> None:
    world, key_file = sandbox(tmp_path)
    assert world.run("apply", "--auto-approve").code == 0
    before, old_key = world.values(None), key_file.read_bytes()
    killed = world.spawn("state", "rekey", key="", old="", kill_at="step:rekey")
    assert killed.returncode == -9, killed.stderr
    pending = key_file.with_name("state.key.next")
    assert key_file.read_bytes() == old_key and pending.exists()  # the old key stays the key until all are done
    next_key = pending.read_bytes()
    ISSUED.add(next_key.decode().strip())
    shown = world.run("output", ADDRESSES[-1], "--format", "json", secret_ok=True)  # production: still old
    assert shown.code == 0 and json.loads(shown.out) == before[ADDRESSES[-1]]

    rerun = world.run("state", "rekey")
    assert rerun.code == 0, rerun.err
    assert rerun.out.splitlines()[0].startswith("Already under the new key: the state of 'staging'")
    assert key_file.read_bytes() == next_key and not pending.exists()
    assert world.values(None) == before


def test_from_the_sandbox_key_file_to_a_key_of_your_own(tmp_path: Path) -> None:
    world, key_file = sandbox(tmp_path)
    assert world.run("apply", "--auto-approve").code == 0
    before = world.values(None)
    ISSUED.add(key_file.read_text().strip())
    done = world.run("state", "rekey", key=NEW)  # HEPINFRA_STATE_KEY_OLD unset: the key file is the old key
    assert done.code == 0, done.err
    assert world.values(NEW) == before
    assert world.run("plan", "--detailed-exitcode", key=NEW).code == 0
    assert "is not the key the state of environment" in one_line(world.run("plan"))
