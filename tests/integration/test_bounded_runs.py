"""Bounded runs: a state backend that stops answering in the middle of an apply ends the run by
itself, within the documented bound, naming the backend; the next run is not held up by the lock
the dead run left.

Real servers, frozen for real: moto in server mode and a PostgreSQL cluster of their own (these
tests SIGSTOP them, so they never share the session's servers), the hepinfra CLI as a subprocess,
small timeouts through the documented variables (HEPINFRA_STATE_TIMEOUT=2s,
HEPINFRA_LOCK_REFRESH=1s: a bound of 2 x 2 + 1 = 5 s). Every frozen server is SIGCONTed in a
``finally``. The default bound is checked by its formula (``bounded.bound``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hepinfra.state import bounded
from tests.cliutil import write_project
from tests.conftest import ENV, ISSUED, Server, record_artifact
from tests.servers import Moto, Postgres, moto_process, postgres_cluster

TIMEOUT_S, REFRESH_S = 2.0, 1.0
BOUND_S = 2 * TIMEOUT_S + REFRESH_S  # the documented formula with the test settings
SLACK_S = 4.0  # the process's own work after the bound: killing the output command, exiting
SETTINGS = {"HEPINFRA_STATE_TIMEOUT": f"{TIMEOUT_S:g}s", "HEPINFRA_LOCK_REFRESH": f"{REFRESH_S:g}s",
            "HEPINFRA_STATE_PROGRESS": "1s"}  # fmt: skip

MANIFEST = """
version: 1
state:
{state}
environments: {{prod: {{}}}}
databases:
  shop:
    engine: postgres
    outputs:
      - exec: ["./bin/store"]
        keys: {{PASSWORD: "{{{{ db.password }}}}"}}
        timeout: 60s
"""

# the output command: while the file 'slow' exists it says so ('started') and takes 60 s, so the test
# freezes the state backend while the apply holds its lock and waits on this step
STORE = r"""#!PYTHON
import os, sys, time
here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.stdin.read()
if os.path.exists(os.path.join(here, "slow")):
    open(os.path.join(here, "started"), "w").close()
    time.sleep(60)
"""


def project(root: Path, state: str) -> Path:
    path = write_project(root, MANIFEST.format(state=state), {"bin/store": STORE.replace("PYTHON", sys.executable)})
    (root / "bin" / "store").chmod(0o755)
    return path


def spawn(path: Path, server: Server, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HEPGG_", "AWS_", "HEPINFRA_"))}
    environ.update({**ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url, **SETTINGS, **env})
    return subprocess.Popen(
        [sys.executable, "-m", "hepinfra", "apply", "-f", str(path), "--auto-approve", *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], label: str, limit: float = 120) -> tuple[int, str, float]:
    """Exit code, stderr and how long it took from now to exit."""
    started = time.monotonic()
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        record_artifact(label, out + err)
        raise AssertionError(f"{label}: still running after {limit:g} s: {err[-2000:]}") from None
    record_artifact(label, out + err)
    return int(proc.returncode), err, time.monotonic() - started


@contextlib.contextmanager
def frozen(pids: Callable[[], list[int]]) -> Iterator[None]:
    """SIGSTOP every process ``pids()`` names (a parent first, so it forks no new child), and SIGCONT
    them in a ``finally``, whatever happens."""
    stopped: list[int] = []
    try:
        for pid in pids():
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def wait_for(path: Path, proc: subprocess.Popen[str], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the apply ended before its slow step: {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, "the apply never reached its slow step"
        time.sleep(0.05)


@pytest.fixture
def own_moto() -> Iterator[Moto]:
    secret = "moto-secret-" + secrets.token_hex(12)
    ISSUED.add(secret)
    with moto_process(secret) as moto:
        yield moto


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    password = "pg-" + secrets.token_urlsafe(18)
    ISSUED.add(password)
    with postgres_cluster(password) as server:
        yield server


def frozen_mid_apply(root: Path, server: Server, state: str, env: dict[str, str], pids: Callable[[], list[int]],
                     label: str) -> tuple[int, str, float]:  # fmt: skip
    """Start an apply, freeze the backend while the apply waits on its slow output, and time its end."""
    path = project(root, state)
    (root / "slow").touch()
    proc = spawn(path, server, env)
    try:
        wait_for(root / "started", proc)
        with frozen(pids):
            code, err, took = finish(proc, label, limit=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (root / "slow").unlink()
    return code, err, took


def next_run(root: Path, server: Server, env: dict[str, str], label: str) -> tuple[int, str, float]:
    """The next apply, allowed to wait 5 s for a lock: never held up by the dead run's lock."""
    return finish(spawn(root / "hepinfra.yaml", server, env, "--lock-timeout", "5s"), label, limit=90)


def test_the_default_bound_is_at_most_150_s(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HEPINFRA_STATE_TIMEOUT", "HEPINFRA_LOCK_REFRESH", "HEPINFRA_STATE_PROGRESS"):
        monkeypatch.delenv(name, raising=False)
    assert bounded.request_timeout() == 20 and bounded.refresh_interval(600) == 60
    assert bounded.bound(600) == 2 * 20 + 60 == 100 <= 150  # s3 with the default lock_ttl 10m
    assert bounded.bound(None) == 100  # postgres: its session is checked every refresh interval
    assert bounded.refresh_interval(5) == 1  # never more than a fifth of lock_ttl
    monkeypatch.setenv("HEPINFRA_STATE_TIMEOUT", "2s")
    monkeypatch.setenv("HEPINFRA_LOCK_REFRESH", "1")
    assert bounded.bound(600) == BOUND_S == 5
    monkeypatch.setenv("HEPINFRA_STATE_TIMEOUT", "soon")
    with pytest.raises(bounded.StateError, match=r"^HEPINFRA_STATE_TIMEOUT: 'soon' is not a duration"):
        bounded.request_timeout()


def test_frozen_s3_mid_apply_ends_the_run_within_the_bound(tmp_path: Path, server: Server, own_moto: Moto) -> None:
    bucket = own_moto.bucket()
    state = f"  backend: s3\n  bucket: {bucket}\n  prefix: team/\n  lock_ttl: 5s"
    code, err, took = frozen_mid_apply(tmp_path, server, state, own_moto.env, lambda: [own_moto.pid], "frozen s3")
    print(f"frozen s3: the run ended {took:.1f} s after the freeze (bound {BOUND_S:g} s)\n{err}")
    assert code == 1, err
    assert took <= BOUND_S + SLACK_S, (took, err)
    lines = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert (
        f"state backend s3 (s3://{bucket}/team/prod.lock): no answer within 2 s while refreshing the lock" in lines[0]
    )
    # S3 is still frozen when the run releases its lock: it says so, with the command that clears it
    assert "could not release the lock of environment 'prod'" in lines[0], lines[0]
    assert "clear it with 'hepinfra state unlock " in lines[0] and " -e prod'" in lines[0]
    assert f"still waiting for state backend s3 (s3://{bucket}/team/prod.lock): refreshing the lock (1 s)" in err
    # S3 answers again; the dead run's lock object is there, its holder a dead process of this host
    code, err, took = next_run(tmp_path, server, own_moto.env, "after frozen s3")
    print(f"after frozen s3: the next run took {took:.1f} s\n{err}")
    assert code == 0, err
    assert "took over the lock of environment 'prod' from " in err and "on this host) is gone" in err
    assert took < 30, took


def test_frozen_postgres_mid_apply_ends_the_run_within_the_bound(
    tmp_path: Path, server: Server, own_postgres: Postgres
) -> None:
    env = {"HEPINFRA_STATE_PG": own_postgres.url}
    state = f"  backend: postgres\n  schema: {own_postgres.schema()}"
    code, err, took = frozen_mid_apply(tmp_path, server, state, env, own_postgres.pids, "frozen postgres")
    print(f"frozen postgres: the run ended {took:.1f} s after the freeze (bound {BOUND_S:g} s)\n{err}")
    assert code == 1, err
    assert took <= BOUND_S + SLACK_S, (took, err)
    lines = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "state backend postgres (schema " in lines[0] and "127.0.0.1" in lines[0]
    assert "no answer within 2 s while checking the database session that holds the lock" in lines[0]
    assert "the lock of environment 'prod' was released" in lines[0], lines[0]  # its session was shut
    assert own_postgres.password not in err
    code, err, took = next_run(tmp_path, server, env, "after frozen postgres")
    print(f"after frozen postgres: the next run took {took:.1f} s")
    assert code == 0, err
    assert took < 30, took


def test_s3_frozen_before_the_run_fails_on_its_first_call(tmp_path: Path, server: Server, own_moto: Moto) -> None:
    """No lock taken yet: the first call's deadline ends the run, naming the backend and the call."""
    bucket = own_moto.bucket()
    path = project(tmp_path, f"  backend: s3\n  bucket: {bucket}\n  prefix: team/")
    with frozen(lambda: [own_moto.pid]):
        code, err, took = finish(spawn(path, server, own_moto.env), "s3 frozen from the start", limit=60)
    print(f"s3 frozen from the start: the run took {took:.1f} s\n{err}")
    assert code == 1 and took <= 2 * TIMEOUT_S + SLACK_S, (took, err)
    assert f"state backend s3 (s3://{bucket}/team/prod.lock): no answer within 2 s while taking the lock" in err
    assert "Traceback" not in err


def test_postgres_session_kept_for_a_dead_holder_on_this_host_is_ended(
    postgres_server: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    """The server keeps a session the holder's process no longer has (it never saw the connection
    die): the holder is judged by its identity, and its session is ended at once."""
    import json

    import psycopg

    from hepinfra.state.backend import LockInfo
    from hepinfra.state.postgres import PostgresBackend
    from hepinfra.state.spec import PostgresState

    schema = postgres_server.schema()
    spec = PostgresState(backend="postgres", schema=schema)
    environ = {"HEPINFRA_STATE_PG": postgres_server.url}
    stuck = PostgresBackend(spec, environ)
    held = stuck.lock("prod", LockInfo())
    gone = subprocess.Popen(["true"])
    gone.wait()
    claim: dict[str, Any] = {**held.as_dict(), "pid": gone.pid}  # as if a process now gone took it
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(f'UPDATE "{schema}".locks SET holder = %s WHERE env = %s', (json.dumps(claim), "prod"))  # noqa: S608
    taker = PostgresBackend(spec, environ)
    with caplog.at_level("WARNING", logger="hepinfra.state"):
        got = taker.lock("prod", LockInfo(), timeout=0)
    assert f"its process (pid {gone.pid} on this host) is gone" in caplog.text
    taker.unlock("prod", got.id)
    taker.close()
    other = {**claim, "pid_ns": "pid:[1]"}  # the same, from a container sharing our hostname: never judged
    holder = PostgresBackend(spec, environ)
    held = holder.lock("prod", LockInfo())
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(
            f'UPDATE "{schema}".locks SET holder = %s WHERE env = %s',  # noqa: S608
            (json.dumps({**other, "id": held.id}), "prod"),
        )
    with pytest.raises(bounded.StateError, match="locked by"):
        PostgresBackend(spec, environ).lock("prod", LockInfo(), timeout=0)
    holder.unlock("prod", held.id)
    holder.close()
