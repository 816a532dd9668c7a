"""The one conformance suite on every state backend: local files, S3 (moto in server mode, over
real HTTP) and PostgreSQL (a real server started by the tests). Plus what only a remote backend
can get wrong: its errors, its tables and objects, and secrets never stored."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest

from hepinfra.errors import LockError, StateError
from hepinfra.state import conformance
from hepinfra.state.backend import Backend, LockInfo
from hepinfra.state.local import LocalBackend
from hepinfra.state.model import State
from hepinfra.state.postgres import PostgresBackend
from hepinfra.state.s3 import S3Backend
from hepinfra.state.spec import PostgresState, S3State
from tests.servers import Moto, Postgres


@pytest.fixture
def aws(moto_server: Moto, monkeypatch: pytest.MonkeyPatch) -> Moto:
    """moto's endpoint and credentials in this process's environment (as a CI job would set them)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in moto_server.env.items():
        monkeypatch.setenv(name, value)
    return moto_server


def s3_factory(bucket: str, prefix: str = "infra/") -> Callable[[], Backend]:
    spec = S3State(backend="s3", bucket=bucket, prefix=prefix)
    return lambda: S3Backend(spec)


def pg_factory(server: Postgres, schema: str) -> Callable[[], Backend]:
    spec = PostgresState(backend="postgres", schema=schema)
    environ = {"HEPINFRA_STATE_PG": server.url}
    return lambda: PostgresBackend(spec, environ)


@pytest.fixture(params=["local", "s3", "postgres"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Backend]]:
    if request.param == "local":
        yield lambda: LocalBackend(tmp_path / "state")
    elif request.param == "s3":
        moto: Moto = request.getfixturevalue("aws")
        yield s3_factory(moto.bucket())
    else:
        server: Postgres = request.getfixturevalue("postgres_server")
        yield pg_factory(server, server.schema())


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
def test_conformance(check: Callable[[conformance.Factory], None], factory: Callable[[], Backend]) -> None:
    check(factory)


# --- S3 only ------------------------------------------------------------------------------------------


def test_s3_objects_are_where_the_manifest_says(aws: Moto) -> None:
    bucket = aws.bucket()
    backend = s3_factory(bucket, "prod-infra/")()
    held = backend.lock("prod", LockInfo(command="hepinfra apply"))
    first = backend.write("prod", State(environment="prod"))
    backend.write("prod", first.model_copy(update={"databases": {"a": conformance._db("a")}}))
    objects = aws.objects(bucket)
    assert set(objects) == {f"{bucket}/prod-infra/prod.json", f"{bucket}/prod-infra/prod.json.backup",
                            f"{bucket}/prod-infra/prod.lock"}  # fmt: skip
    assert json.loads(objects[f"{bucket}/prod-infra/prod.lock"])["id"] == held.id
    assert json.loads(objects[f"{bucket}/prod-infra/prod.json.backup"])["serial"] == 1
    backend.unlock("prod", held.id)
    assert f"{bucket}/prod-infra/prod.lock" not in aws.objects(bucket)
    assert s3_factory(bucket, "other/")().environments() == []


def test_s3_missing_bucket_is_one_line_naming_it(aws: Moto) -> None:
    with pytest.raises(StateError) as caught:
        s3_factory("no-such-bucket-here")().read("prod")
    assert str(caught.value) == (
        "state backend s3 (s3://no-such-bucket-here/infra/prod.json): bucket 'no-such-bucket-here' does not exist "
        "(hint: create it (hepinfra never creates buckets) or fix 'bucket' in the state: block)"
    )


def test_s3_no_credentials(aws: Moto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(
        StateError, match=r"^state backend s3 \(s3://b-x1/\): no AWS credentials found \(hint: set AWS_ACCESS_KEY_ID"
    ):
        S3Backend(S3State(backend="s3", bucket="b-x1")).read("prod")


def test_s3_unreachable_endpoint(aws: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StateError, match=r"^state backend s3 \(s3://b-x1/prod.json\): cannot reach http://127"):
        S3Backend(S3State(backend="s3", bucket="b-x1")).read("prod")


def test_s3_lock_of_a_dead_run_on_this_host_is_taken_over_at_once(aws: Moto, caplog: pytest.LogCaptureFixture) -> None:
    """Its holder ran in this process space (host, boot id, PID namespace) and its pid with its start
    time is gone: the next run takes the lock at once, naming the old holder."""
    factory = s3_factory(aws.bucket())
    holder = conformance.kill_a_holder(factory, "prod")
    left = factory().lock_holder("prod")
    assert left is not None and left.pid == holder.pid
    assert left.boot_id and left.pid_ns and left.start_time  # the identity a reader judges it by
    taker = factory()
    with caplog.at_level("WARNING", logger="hepinfra.state"):
        got = taker.lock("prod", LockInfo(), timeout=0)
    assert f"its process (pid {holder.pid} on this host) is gone" in caplog.text
    taker.unlock("prod", got.id)


def dead_pid() -> int:
    import subprocess

    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def forge_lock(aws: Moto, bucket: str, key: str, **fields: object) -> LockInfo:
    """A lock object as a holder elsewhere would leave it (no refresh, no process of ours)."""
    from hepinfra.state.backend import boot_id, identified, pid_namespace

    mine = identified(LockInfo(pid=dead_pid()), "pid")
    info = LockInfo(**{**mine.as_dict(), "start_time": 12345, **fields})  # type: ignore[arg-type]
    assert info.boot_id == boot_id() or "boot_id" in fields
    assert info.pid_ns == pid_namespace() or "pid_ns" in fields
    aws.client().put_object(Bucket=bucket, Key=key, Body=json.dumps(info.as_dict()).encode())  # type: ignore[attr-defined]
    return info


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"pid_ns": "pid:[1]"},  # a container sharing our hostname: its pids are not ours
        {"boot_id": "00000000-0000-0000-0000-000000000000"},  # another boot of this host
        {"host": "another-runner"},
        {"boot_id": None, "pid_ns": None},  # an older hepinfra's lock: not enough to judge
    ],
    ids=["pid-namespace", "boot", "host", "unrecorded"],
)
def test_s3_lock_of_a_holder_elsewhere_is_named_until_unlocked(aws: Moto, elsewhere: dict[str, object]) -> None:
    bucket = aws.bucket()
    factory = s3_factory(bucket)
    left = forge_lock(aws, bucket, "infra/prod.lock", **elsewhere)
    with pytest.raises(LockError) as caught:
        factory().lock("prod", LockInfo(), timeout=0.3)
    assert f"state unlock {left.id} -e prod" in str(caught.value) and f"pid {left.pid}" in str(caught.value)
    assert not factory().holder_alive("prod")
    factory().unlock("prod", left.id)
    factory().unlock("prod", factory().lock("prod", LockInfo()).id)


# --- PostgreSQL only ----------------------------------------------------------------------------------


def test_postgres_tables_and_a_live_holder(postgres_server: Postgres) -> None:
    import psycopg

    schema = postgres_server.schema()
    factory = pg_factory(postgres_server, schema)
    one = factory()
    held = one.lock("prod", LockInfo(command="hepinfra apply"))
    one.write("prod", State(environment="prod"))
    with psycopg.connect(postgres_server.url) as conn:
        rows = conn.execute(f'SELECT env, serial, lineage FROM "{schema}".states').fetchall()  # noqa: S608
        locks = conn.execute(f'SELECT env, lock_id FROM "{schema}".locks').fetchall()  # noqa: S608
    assert [r[:2] for r in rows] == [("prod", 1)] and locks == [("prod", held.id)]
    other = factory()
    assert other.holder_alive("prod")
    with pytest.raises(LockError, match="held by a live database session"):
        other.unlock("prod", held.id)
    other.unlock("prod", held.id, force=True)  # ends the holder's session
    assert factory().lock_holder("prod") is None
    got = factory()
    got.unlock("prod", got.lock("prod", LockInfo(), timeout=1).id)


def test_postgres_url_env_unset_names_the_variable() -> None:
    backend = PostgresBackend(PostgresState(backend="postgres", url_env="MY_PG"), environ={})
    with pytest.raises(StateError) as caught:
        backend.read("prod")
    assert str(caught.value).startswith(
        "state backend postgres (schema hepinfra): MY_PG is not set (hint: export MY_PG="
    )


def test_postgres_errors_never_show_the_password(postgres_server: Postgres) -> None:
    from tests.servers import free_port

    wrong = postgres_server.url.replace(postgres_server.password, "not-the-" + postgres_server.password)
    unreachable = postgres_server.url.replace(str(postgres_server.port), str(free_port()))
    spec = PostgresState(backend="postgres")
    for url, cause in ((wrong, "password authentication failed"), (unreachable, "Connection refused")):
        with pytest.raises(StateError) as caught:
            PostgresBackend(spec, {"HEPINFRA_STATE_PG": url}).read("prod")
        text = str(caught.value)
        assert text.startswith("state backend postgres (schema hepinfra at hepinfra@127.0.0.1:") and cause in text
        assert postgres_server.password not in text and "\n" not in text
    with pytest.raises(StateError, match="is not a libpq URL"):
        PostgresBackend(spec, {"HEPINFRA_STATE_PG": f"host=x password={postgres_server.password} bogus"}).read("p")


def test_backend_libraries_are_not_imported_at_start_up() -> None:
    import subprocess
    import sys

    code = "import hepinfra.cli, sys; print(any(m in sys.modules for m in ('boto3', 'botocore', 'psycopg', 'pymysql')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert done.stdout.strip() == "False"


# --- what an attacker found: each a regression test -----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("PUT", "prod.lock"), ("PUT", "prod.json"), ("DELETE", "prod.lock")],
    ids=["lock", "write", "unlock"],
)
def test_s3_a_lost_answer_to_our_own_conditional_request_is_ours(
    aws: Moto, monkeypatch: pytest.MonkeyPatch, method: str, suffix: str
) -> None:
    """botocore retries a request whose answer was lost; the retry meets our own lock or state.
    That is success, not 'locked by' ourselves, not 'changed since it was read', not NoSuchKey."""
    from tests.servers import DroppingProxy

    bucket = aws.bucket()
    s3_factory(bucket)().write("prod", State(environment="prod"))
    proxy = DroppingProxy(aws.url, method, suffix)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        backend = s3_factory(bucket)()
        held = backend.lock("prod", LockInfo(command="hepinfra apply"), timeout=0)
        current = backend.read("prod")
        assert current is not None
        stored = backend.write("prod", current.model_copy(update={"databases": {"a": conformance._db("a")}}))
        backend.unlock("prod", held.id)
        assert proxy.dropped == 1
    finally:
        proxy.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.url)
    assert s3_factory(bucket)().read("prod") == stored and stored.serial == 2
    assert s3_factory(bucket)().lock_holder("prod") is None


def test_s3_hostile_lock_object_cannot_forge_lines(aws: Moto) -> None:
    bucket = aws.bucket()
    hostile = {"id": "a\x1b[31mRED\nError: forged", "pid": 1, "host": "h\r\nx", "user": "u", "created": "c",
               "command": "x\u202e"}  # fmt: skip
    aws.client().put_object(Bucket=bucket, Key="infra/prod.lock", Body=json.dumps(hostile).encode())  # type: ignore[attr-defined]
    with pytest.raises(LockError) as caught:
        s3_factory(bucket)().lock("prod", LockInfo(), timeout=0)
    text = str(caught.value)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\u202e" not in text


def test_postgres_a_lost_session_stops_the_run_instead_of_going_on_unlocked(postgres_server: Postgres) -> None:
    import psycopg

    factory = pg_factory(postgres_server, postgres_server.schema())
    backend = factory()
    backend.lock("prod", LockInfo())
    first = backend.write("prod", State(environment="prod"))
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hepinfra' "
            "AND pid <> pg_backend_pid()"
        )
    other = factory()  # the lock went with the session: another run may take it now
    other.unlock("prod", other.lock("prod", LockInfo(), timeout=5).id)
    for _ in range(2):  # ...so every later call of the first run fails, naming why
        with pytest.raises((LockError, StateError), match="the database session holding the lock of prod ended"):
            backend.write("prod", first.model_copy(update={"databases": {"a": conformance._db("a")}}))
    assert factory().read("prod") == first


def test_postgres_migrate_partway_resumes(tmp_path: Path, postgres_server: Postgres) -> None:
    """A migration that fails on one environment says what it copied; the rerun skips those."""
    import psycopg

    from hepinfra import runner
    from tests.cliutil import write_project

    schema = postgres_server.schema()
    project = write_project(tmp_path, f"version: 1\nstate: {{backend: postgres, schema: {schema}}}\n"
                                      "environments: {a: {}, b: {}}\n")  # fmt: skip
    local = LocalBackend(tmp_path / ".hepinfra" / "state")
    for env in ("a", "b"):
        local.write(env, State(environment=env, databases={"x": conformance._db("x")}))
    pg_factory(postgres_server, schema)().environments()  # creates the tables
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION refuse_b() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN IF NEW.env = 'b' THEN RAISE EXCEPTION 'refused by a trigger'; END IF; RETURN NEW; END$$"
        )
        admin.execute(
            f'CREATE TRIGGER refuse BEFORE INSERT ON "{schema}".states FOR EACH ROW EXECUTE FUNCTION refuse_b()'
        )
    reported: list[tuple[str, bool]] = []
    with mock.patch.dict(os.environ, {"HEPINFRA_STATE_PG": postgres_server.url}):
        project_obj = runner.Project.open(project)
        with pytest.raises(StateError, match=r"^b: .*refused by a trigger; copied before it: a \(a rerun skips them\)"):
            runner.migrate_state(project_obj, force=False, timeout=0, report=lambda e, s, c: reported.append((e, c)))
        assert reported == [("a", True)]
        with psycopg.connect(postgres_server.url, autocommit=True) as admin:
            admin.execute(f'DROP TRIGGER refuse ON "{schema}".states')
        reported.clear()
        runner.migrate_state(runner.Project.open(project), force=False, timeout=0,
                             report=lambda e, s, c: reported.append((e, c)))  # fmt: skip
    assert reported == [("a", False), ("b", True)]


def test_release_failure_is_a_warning_never_the_runs_error(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    from hepinfra import runner

    backend = LocalBackend(tmp_path)
    with caplog.at_level("WARNING", logger="hepinfra.state"):
        runner.release(backend, "prod", "0123abcd")  # not locked (taken over or cleared): unlock fails
    assert "the lock of environment 'prod' was no longer this run's when it ended" in caplog.text
    held = backend.lock("prod", LockInfo())
    caplog.clear()
    with (
        caplog.at_level("WARNING", logger="hepinfra.state"),
        mock.patch.object(LocalBackend, "unlock", side_effect=LockError("the disk is gone")),
    ):
        runner.release(backend, "prod", held.id)  # still ours, and unlock fails: say how to clear it
    assert "could not release the lock of environment 'prod' (the disk is gone)" in caplog.text
    assert f"hepinfra state unlock {held.id} -e prod" in caplog.text
    backend.unlock("prod", held.id)


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("AWS_ENDPOINT_URL", "not-a-url", "is not a valid URL"),
        ("AWS_ENDPOINT_URL", "http://[::1", "is not a valid URL"),
    ],
)
def test_s3_bad_endpoint_is_one_line(
    aws: Moto, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(StateError, match=words) as caught:
        s3_factory("b-x1")().read("prod")
    assert str(caught.value).startswith("state backend s3 (s3://b-x1/")


def test_postgres_undecodable_url_is_one_line(postgres_server: Postgres) -> None:
    for url in (postgres_server.url + "?application_name=%FF%FE", postgres_server.url.replace("@", "%FF@", 1)):
        with pytest.raises(StateError, match="is not a libpq URL") as caught:
            PostgresBackend(PostgresState(backend="postgres"), {"HEPINFRA_STATE_PG": url}).read("prod")
        assert postgres_server.password not in str(caught.value)


def test_s3_access_denied_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """moto enforcing IAM: a user with no policy is refused, and the plan says so in one line."""
    import secrets

    import boto3

    from tests.cliutil import invoke, write_project
    from tests.conftest import ISSUED
    from tests.servers import moto_process

    with moto_process("unused-" + secrets.token_hex(8), {"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as moto:
        admin = {"endpoint_url": moto.url, "region_name": "us-east-1", "aws_access_key_id": "AKIAADMIN0000000001",
                 "aws_secret_access_key": "admin-" + secrets.token_hex(8)}  # fmt: skip
        quiet = logging.getLogger("botocore")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # the test's own admin calls: their answers hold the key
        try:
            boto3.client("s3", **admin).create_bucket(Bucket="acme-denied")
            iam = boto3.client("iam", **admin)
            iam.create_user(UserName="nobody")
            key = iam.create_access_key(UserName="nobody")["AccessKey"]
        finally:
            quiet.setLevel(level)
        ISSUED.add(key["SecretAccessKey"])
        project = write_project(tmp_path, "version: 1\nstate: {backend: s3, bucket: acme-denied, prefix: p/}\n"
                                          "environments: {prod: {}}\n")  # fmt: skip
        env = {**moto.env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        result = invoke(["state", "list", "-f", str(project)], env=env)
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("Error: state backend s3 (s3://acme-denied/p/prod.json): access denied (hint: ")
    assert result.err.count("\n") == 1 and key["SecretAccessKey"] not in result.err


def test_s3_lock_of_a_dead_run_is_taken_over_after_lock_ttl(aws: Moto, caplog: pytest.LogCaptureFixture) -> None:
    """Better than a stuck lock: a lock not refreshed for lock_ttl (S3's clock) is taken over, once."""
    import time

    bucket = aws.bucket()
    spec = S3State(backend="s3", bucket=bucket, prefix="infra/", lock_ttl="5s")
    factory = lambda: S3Backend(spec)  # noqa: E731
    live = factory()
    held = live.lock("prod", LockInfo(command="hepinfra apply"))
    time.sleep(6.5)  # a live holder refreshes its lock (every lock_ttl/5): never taken over
    with pytest.raises(LockError, match=r"last refreshed \ds ago"):
        factory().lock("prod", LockInfo(), timeout=0)
    live.unlock("prod", held.id)
    dead = forge_lock(aws, bucket, "infra/prod.lock", pid_ns="pid:[1]", lease_s=5)  # a container's run, killed
    left = factory().lock_holder("prod")
    assert left is not None and left.pid == dead.pid
    with pytest.raises(LockError, match=r"takes the lock over once it is 5s old \(its lock_ttl\)"):
        factory().lock("prod", LockInfo(), timeout=0)
    time.sleep(6.5)
    taker = factory()
    with caplog.at_level("WARNING", logger="hepinfra.state"):
        got = taker.lock("prod", LockInfo(), timeout=0)
    assert "took over the lock of environment 'prod' from " in caplog.text and "not refreshed for" in caplog.text
    assert str(dead.pid) in caplog.text
    taker.unlock("prod", got.id)
    assert factory().lock_holder("prod") is None


def test_s3_a_holder_whose_lock_was_taken_over_stops_writing(aws: Moto) -> None:
    """A run frozen past lock_ttl (SIGSTOP, a network cut) loses its lock; its next refresh sees
    that and its writes stop; a write that races the new holder anyway is refused by If-Match."""
    import time

    spec = S3State(backend="s3", bucket=aws.bucket(), prefix="infra/", lock_ttl="5s")
    frozen = S3Backend(spec)
    frozen.lock("prod", LockInfo())
    state = frozen.write("prod", State(environment="prod"))
    beat = frozen._beats["prod"]
    beat._halt.set()  # frozen: no refresh
    time.sleep(6.5)
    other = S3Backend(spec)
    taken = other.lock("prod", LockInfo(), timeout=0)
    with pytest.raises(LockError, match="was taken over by another run"):  # its first write looks first
        frozen.write("prod", state.model_copy(update={"databases": {"a": conformance._db("a")}}))
    other.write("prod", state.model_copy(update={"databases": {"b": conformance._db("b")}}))
    assert beat.beat() is False and beat.lost  # ...and so does its next refresh
    other.unlock("prod", taken.id)
    final = S3Backend(spec).read("prod")
    assert final is not None and set(final.databases) == {"b"}


def test_s3_a_lock_cleared_by_state_unlock_stops_its_holder(aws: Moto) -> None:
    spec = S3State(backend="s3", bucket=aws.bucket(), prefix="infra/")
    holder = S3Backend(spec)
    held = holder.lock("prod", LockInfo())
    holder.write("prod", State(environment="prod"))
    S3Backend(spec).unlock("prod", held.id)  # 'state unlock' from another machine
    assert holder._beats["prod"].beat() is False  # its refresh finds the lock gone
    with pytest.raises(LockError, match="was taken over by another run"):
        holder.write("prod", State(environment="prod"))


def test_s3_staleness_is_judged_by_the_holders_own_lock_ttl(aws: Moto) -> None:
    """A holder with lock_ttl 1m refreshes every 12s: a run with lock_ttl 5s must not take its lock at 6s."""
    import time

    bucket = aws.bucket()
    patient = S3Backend(S3State(backend="s3", bucket=bucket, prefix="infra/", lock_ttl="1m"))
    held = patient.lock("prod", LockInfo())
    time.sleep(6.5)
    hasty = S3Backend(S3State(backend="s3", bucket=bucket, prefix="infra/", lock_ttl="5s"))
    with pytest.raises(LockError, match="locked by"):
        hasty.lock("prod", LockInfo(), timeout=0)
    patient.unlock("prod", held.id)


def test_s3_a_refused_write_leaves_the_backup_alone(aws: Moto) -> None:
    bucket = aws.bucket()
    factory = s3_factory(bucket)
    first = factory().write("prod", State(environment="prod"))
    stale = factory()
    seen = stale.read("prod")
    assert seen is not None
    writer = factory()
    second = writer.write("prod", first.model_copy(update={"databases": {"a": conformance._db("a")}}))
    writer.read("prod")
    writer._backed_up.clear()  # a later run
    writer.write("prod", second.model_copy(update={"databases": {"b": conformance._db("b")}}))
    with pytest.raises(StateError):
        stale.write("prod", seen.model_copy(update={"databases": {"z": conformance._db("z")}}))
    backup = json.loads(aws.objects(bucket)[f"{bucket}/infra/prod.json.backup"])
    assert backup["serial"] == 2  # the version before the last accepted run, not the refused one's


def test_postgres_password_with_unescaped_characters_never_shows(postgres_server: Postgres) -> None:
    for password in ("Tr0ub/dor3xyz", "Tr0ub@dor&3xyz", "ab:cd/ef@gh"):
        url = f"postgresql://hepinfra:{password}@127.0.0.1:{postgres_server.port}/hepinfra_test"
        with pytest.raises(StateError) as caught:
            PostgresBackend(PostgresState(backend="postgres"), {"HEPINFRA_STATE_PG": url}).read("prod")
        text = str(caught.value)
        assert "\n" not in text
        for part in {password, *password.replace("@", "/").replace(":", "/").split("/")}:
            assert len(part) < 4 or part not in text, (part, text)


def test_postgres_tables_of_another_shape_are_refused_in_one_line(postgres_server: Postgres) -> None:
    import psycopg

    schema = postgres_server.schema()
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        admin.execute(f'CREATE TABLE "{schema}".states (env text, lineage text, serial text, body text, backup text)')
        admin.execute(f'CREATE TABLE "{schema}".locks (env text)')
        admin.execute(f"INSERT INTO \"{schema}\".states VALUES ('prod', 'x', 'abc', '{{}}', NULL)")  # noqa: S608
    with pytest.raises(StateError, match="are not hepinfra's") as caught:
        pg_factory(postgres_server, schema)().read("prod")
    assert "\n" not in str(caught.value)


def test_lock_ttl_is_bounded() -> None:
    from pydantic import ValidationError

    for bad in ("2s", "8d", "99999999999999999999999999999999999d"):
        with pytest.raises(ValidationError, match="lock_ttl must be between 5s and 7d"):
            S3State(backend="s3", bucket="abc", lock_ttl=bad)
