"""The one conformance suite on every state backend: local files, S3 (moto in server mode, over
real HTTP) and PostgreSQL (a real server started by the tests). Plus what only a remote backend
can get wrong: its errors, its tables and objects, and secrets never stored."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

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
    with pytest.raises(StateError, match=r"^state backend s3 \(s3://b-x1/\): no AWS credentials found \(hint: set AWS_ACCESS_KEY_ID"):
        S3Backend(S3State(backend="s3", bucket="b-x1")).read("prod")


def test_s3_unreachable_endpoint(aws: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StateError, match=r"^state backend s3 \(s3://b-x1/prod.json\): cannot reach http://127"):
        S3Backend(S3State(backend="s3", bucket="b-x1")).read("prod")


def test_s3_lock_left_by_a_dead_run_is_named_until_unlocked(aws: Moto) -> None:
    factory = s3_factory(aws.bucket())
    holder = conformance.kill_a_holder(factory, "prod")
    assert holder.exitcode is not None
    with pytest.raises(LockError) as caught:
        factory().lock("prod", LockInfo(), timeout=0.3)
    left = factory().lock_holder("prod")
    assert left is not None and left.pid == holder.pid
    assert f"state unlock {left.id} -e prod" in str(caught.value) and f"pid {holder.pid}" in str(caught.value)
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
    assert str(caught.value).startswith("state backend postgres (schema hepinfra): MY_PG is not set (hint: export MY_PG=")


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

    code = "import hepinfra.cli, sys; print(any(m in sys.modules for m in ('boto3', 'botocore', 'psycopg')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert done.stdout.strip() == "False"
