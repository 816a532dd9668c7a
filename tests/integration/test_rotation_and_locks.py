"""Rotation bookkeeping and cross-process locks, end to end (issue: never wedged, never silently
skipped, never a lost update).

- a rotation whose output fails is still recorded done; only the failed output stays owed;
- the "before" digest of a rotation comes from a Reveal right before the call, so a rotation done
  outside hepinfra cannot make an interrupted one look finished;
- Ctrl-C drops rotations that never started and names what was done, in flight, not started;
- two environments sharing one output file, applied by two processes at once, lose nothing;
- N processes rotating one database under --lock-timeout: every run succeeds, no lost update;
- the journal never grows on repeated failures; duration_ms is the step's own time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dotenv import dotenv_values

from hepinfra.emulator.app import EmulatorConfig, Faults
from hepinfra.state.local import LocalBackend
from hepinfra.state.model import State
from tests.cliutil import invoke, write_project
from tests.conftest import ENV, HTTP, KEY, Server, record_artifact

DBS = "/api/v1/db/databases"
TWO_OUTPUTS = """
version: 1
environments: {prod: {}}
databases:
  shop:
    engine: postgres
    outputs:
      - dotenv: .env
        keys: {SHOP_PASSWORD: "{{ db.password }}"}
      - template: t.j2
        path: out/shop.json
"""
TEMPLATE = {"t.j2": '{"password": {{ db.password | json }}}\n'}
UNQUOTABLE = EmulatorConfig(password_chars="aZ'`$b", password_length=24)  # no dotenv quoting carries these


def state_of(project: Path, env: str = "prod") -> State:
    state = LocalBackend(project.parent / ".hepinfra/state").read(env)
    assert state is not None
    return state


def reveal(server: Server, name: str) -> dict:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {KEY}"}
    rows = HTTP.get(server.url + DBS, headers=headers, timeout=10).json()["data"]["databases"]
    row = next(r for r in rows if r["name"] == name)
    return HTTP.get(f"{server.url}{DBS}/{row['id']}", headers=headers, timeout=10).json()["data"]  # type: ignore[no-any-return]


def rotations(server: Server) -> int:
    return len([r for r in server.requests() if r["path"].endswith("/rotate") and r["status"] == 200])


def spawn(project: Path, server: Server, *args: str, kill_at: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url}
    if kill_at:
        env["HEPINFRA_TEST_KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, "-m", "hepinfra", *args, "-f", str(project), "--auto-approve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], label: str) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    record_artifact(label, out + err)
    return proc.returncode, out, err


def test_a_failed_output_during_rotation_never_wedges_the_database(tmp_path: Path, make_world) -> None:  # type: ignore[no-untyped-def]
    server = make_world(UNQUOTABLE)
    project = write_project(tmp_path / "p", TWO_OUTPUTS, TEMPLATE)
    first = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert first.code == 1 and "created; but render of .env failed" in first.out
    for round_ in (1, 2):
        result = invoke(["rotate", "shop", "-f", str(project), "--auto-approve", "--json"], server=server)
        assert result.code == 1
        failed = next(json.loads(line) for line in result.out.splitlines() if '"failed"' in line)
        assert failed["action"] == "rotate" and failed["step"] == "render"
        assert [f["output"] for f in failed["failures"]] == [".env"]
        assert "rotation_window_ms" in failed
        live = reveal(server, "shop-prod")
        assert json.loads((project.parent / "out/shop.json").read_text())["password"] == live["password"]
        assert rotations(server) == round_  # the template output got the new password; a later rotate works
        state = state_of(project)
        assert state.databases["shop"].rotations == round_
        assert [(j.op, j.outputs) for j in state.journal] == [("render", (".env",))]  # one entry, never more
        plan = invoke(["plan", "-f", str(project), "--json"], server=server).json()
        change = plan["changes"][0]
        assert change["action"] == "render" and [o["path"] for o in change["outputs"]] == [".env"]
        assert "interrupted rotation" not in json.dumps(plan)
    for _ in range(3):  # failing again and again adds nothing to the journal
        assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 1
    assert len(state_of(project).journal) == 1


def test_kill_between_journal_and_rotate_after_an_out_of_band_rotation(tmp_path: Path, server: Server) -> None:
    """Old behaviour: the "before" digest came from the output records, stale after a dashboard
    rotation, so the next run saw Reveal != before and recorded a rotation that never happened."""
    project = write_project(tmp_path / "p", TWO_OUTPUTS.replace('"{{ db.password }}"', '"{{ db.password }}"'), TEMPLATE)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    db_id = reveal(server, "shop-prod")["id"]
    headers = {"Authorization": f"Bearer {KEY}"}
    HTTP.post(f"{server.url}{DBS}/{db_id}/rotate", headers=headers, timeout=10).raise_for_status()  # the dashboard
    outside = reveal(server, "shop-prod")["password"]
    # calls of `rotate shop`: 1 List, 2 Reveal (the before digest), 3 POST rotate: die just before it leaves
    code, _, _ = finish(spawn(project, server, "rotate", "shop", kill_at="before:3"), "killed rotate")
    assert code == -signal.SIGKILL
    assert reveal(server, "shop-prod")["password"] == outside and rotations(server) == 1
    assert [j.op for j in state_of(project).journal] == ["rotate"]
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 0, result.out + result.err
    assert "the interrupted rotation never reached hep.gg: rotated now" in result.out
    live = reveal(server, "shop-prod")
    assert live["password"] != outside and rotations(server) == 2
    assert dotenv_values(project.parent / ".env")["SHOP_PASSWORD"] == live["password"]
    assert not server.password_valid(live["dbUser"], outside)
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server).code == 0


def test_kill_mid_rotation_with_a_failing_output_converges_without_a_second_rotation(
    tmp_path: Path, make_world
) -> None:  # type: ignore[no-untyped-def]
    server = make_world(UNQUOTABLE)
    project = write_project(tmp_path / "p", TWO_OUTPUTS, TEMPLATE)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 1
    # 1 List, 2 Reveal, 3 POST rotate: die as its answer arrives, before any output is written
    code, _, _ = finish(spawn(project, server, "rotate", "shop", kill_at="after:3"), "killed mid-rotation")
    assert code == -signal.SIGKILL and rotations(server) == 1
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 1 and "finished an interrupted rotation (Reveal, no second rotate)" in result.out
    assert rotations(server) == 1
    live = reveal(server, "shop-prod")
    assert json.loads((project.parent / "out/shop.json").read_text())["password"] == live["password"]
    assert [(j.op, j.outputs) for j in state_of(project).journal] == [("render", (".env",))]
    assert state_of(project).databases["shop"].rotations == 1


def many(count: int, env_key: str | None = None) -> str:
    return "".join(
        f"""  {prefix}{i}:
    environments: [{env}]
    outputs:
      - dotenv: shared.env
        keys: {{{env.upper()}_{i}_URL: "{{{{ db.connection_string }}}}"}}
"""
        for env, prefix in (("staging", "s"), ("production", "p"))
        for i in range(count)
    )


def test_two_environments_sharing_a_file_never_lose_an_update(tmp_path: Path, make_world) -> None:  # type: ignore[no-untyped-def]
    server = make_world(EmulatorConfig(faults=Faults(latency_ms=20, jitter_ms=20)))
    count = 8
    body = "version: 1\nenvironments: {staging: {}, production: {}}\ndatabases:\n" + many(count)
    project = write_project(tmp_path / "p", body, {"shared.env": "# foreign line kept\nFOREIGN=1\n"})
    for round_ in range(3):  # create, rotate everything, then a plain apply: each time both at once
        procs = []
        for env, prefix in (("staging", "s"), ("production", "p")):
            args = ["rotate", *[f"{prefix}{i}" for i in range(count)]] if round_ == 1 else ["apply"]
            procs.append(spawn(project, server, *args, "-e", env, "--parallelism", "16"))
        for proc in procs:
            code, out, err = finish(proc, f"shared-file round {round_}")
            assert code == 0, out + err
        values = dotenv_values(project.parent / "shared.env")
        assert values["FOREIGN"] == "1"
        for env, prefix in (("staging", "s"), ("production", "p")):
            for i in range(count):
                live = reveal(server, f"{prefix}{i}-{env}")
                assert values[f"{env.upper()}_{i}_URL"] == live["connectionString"], (round_, env, i)
    for env in ("staging", "production"):
        assert invoke(["plan", "-f", str(project), "-e", env, "--detailed-exitcode"], server=server).code == 0


def test_concurrent_rotations_of_one_database_all_succeed_with_no_lost_update(tmp_path: Path, make_world) -> None:  # type: ignore[no-untyped-def]
    server = make_world(EmulatorConfig(faults=Faults(latency_ms=30)))
    project = write_project(tmp_path / "p", TWO_OUTPUTS, TEMPLATE)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    serial = state_of(project).serial
    runs = 4
    procs = [spawn(project, server, "rotate", "shop", "--lock-timeout", "60s") for _ in range(runs)]
    for proc in procs:
        code, out, err = finish(proc, "concurrent rotate")
        assert code == 0, out + err
    assert rotations(server) == runs
    live = reveal(server, "shop-prod")
    assert dotenv_values(project.parent / ".env")["SHOP_PASSWORD"] == live["password"]
    state = state_of(project)
    assert state.databases["shop"].rotations == runs and state.journal == ()
    assert state.serial >= serial + runs  # each run's writes landed on the one before (no lost update)


def test_ctrl_c_drops_rotations_that_never_started_and_says_what_happened(tmp_path: Path, make_world) -> None:  # type: ignore[no-untyped-def]
    server = make_world(EmulatorConfig(faults=Faults(latency_ms=250)))
    names = [f"db{i}" for i in range(6)]
    body = "version: 1\nenvironments: {prod: {}}\ndatabases:\n" + "".join(
        f'  {n}:\n    outputs:\n      - dotenv: .env\n        keys: {{{n.upper()}: "{{{{ db.password }}}}"}}\n'
        for n in names
    )
    project = write_project(tmp_path / "p", body)
    assert invoke(["apply", "-f", str(project), "--auto-approve", "--parallelism", "8"], server=server).code == 0
    proc = spawn(project, server, "rotate", *names, "--parallelism", "1")
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the first rotation is done
        if line.lstrip().startswith("~ prod/databases.") and ": rotated" in line:
            break
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc, "interrupted rotate")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("Error: interrupted: ") and "not started" in err and "in flight" in err
    finished_n = int(err.split("interrupted: ")[1].split(" finished")[0])
    not_started = int(err.split("; ")[-1].split(" not started")[0].split()[-1])
    assert finished_n >= 1 and not_started >= 1, err
    journal = state_of(project).journal
    assert len(journal) <= 1 and all(j.op == "rotate" for j in journal)  # only what was in flight
    before = rotations(server)
    plan = invoke(["plan", "-f", str(project), "--json"], server=server).json()
    rotating = [c["address"] for c in plan["changes"] if c["action"] == "rotate"]
    assert len(rotating) == len(journal)  # a plain apply settles what was in flight, nothing more
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert result.code == 0, result.out + result.err
    assert rotations(server) - before <= len(journal)


def test_duration_is_the_steps_own_time_and_queue_time_is_separate(tmp_path: Path, make_world) -> None:  # type: ignore[no-untyped-def]
    server = make_world(EmulatorConfig(faults=Faults(latency_ms=150)))
    body = "version: 1\nenvironments: {prod: {}}\ndatabases: {a: {}, b: {}, c: {}}\n"
    project = write_project(tmp_path / "p", body)
    result = invoke(["apply", "-f", str(project), "--auto-approve", "--json", "--parallelism", "1"], server=server)
    assert result.code == 0
    done = [json.loads(line) for line in result.out.splitlines() if '"done"' in line]
    assert len(done) == 3
    for event in done:
        assert 140 <= event["duration_ms"] < 400, event  # one create's own time, not its wait for the slot
    queued = sorted(e["queued_ms"] for e in done)
    assert queued[0] < 50 and queued[-1] >= 250


def test_a_killed_runs_rotation_that_lands_late_is_finished_not_repeated(tmp_path: Path, make_world) -> None:  # type: ignore[no-untyped-def]
    """The killed run's request is still on its way when the next run Reveals: the password looks
    unchanged. The next run waits out HEPINFRA_ROTATE_SETTLE from the intent, then Reveals again."""
    server = make_world(EmulatorConfig())
    project = write_project(tmp_path / "p", TWO_OUTPUTS, TEMPLATE)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    server.faults(latency_ms=2500)
    proc = spawn(project, server, "rotate", "shop")
    deadline = time.monotonic() + 30
    while not [j for j in state_of(project).journal if j.op == "rotate"]:  # the intent is durable
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)  # the rotate request has left
    proc.kill()
    finish(proc, "rotate killed with its request in flight")
    server.faults(latency_ms=0)
    started = time.monotonic()
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env={"HEPINFRA_ROTATE_SETTLE": "6"})
    assert result.code == 0, result.out + result.err
    assert "finished an interrupted rotation (Reveal, no second rotate)" in result.out
    assert time.monotonic() - started < 10
    assert rotations(server) == 1  # the late one only
    live = reveal(server, "shop-prod")
    assert dotenv_values(project.parent / ".env")["SHOP_PASSWORD"] == live["password"]
