"""Real servers for the state backends, started by the tests on loopback and stopped after.

- ``moto_server``: moto in server mode (``python -m moto.server``), spoken to over real HTTP.
- ``postgres_server``: a PostgreSQL cluster from Debian's ``postgresql`` package, made with
  initdb in a temp dir and started with pg_ctl on a free port, as the ``postgres`` user when
  the tests run as root (PostgreSQL refuses to run as root), with password authentication.
- ``mariadb_server``: a MariaDB server from Debian's ``mariadb-server`` package, made with
  mariadb-install-db in a temp dir and started as ``mariadbd`` on a free loopback port, as the
  ``mysql`` user when the tests run as root, with a root password.
- ``pgbouncer_server``: PgBouncer from Debian's ``pgbouncer`` package on a free loopback port, in
  session or transaction pooling, its ``[databases]`` taken from a file it ``%include``-s (the file a
  ``pgbouncer`` output writes). As the ``postgres`` user when the tests run as root (PgBouncer refuses
  root), with CAP_DAC_READ_SEARCH so it reads the 0600 file root's apply wrote (in production, apply
  runs as PgBouncer's user).
- ``TcpForwarder``: a loopback TCP port in front of a server, that a test can stop and start
  (a database server that goes away and comes back).
A server that cannot start fails the tests that need it; nothing skips.
Before each server stops, everything it stores joins the session's secret scan.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest


def free_port() -> int:
    """A free loopback port for a server, chosen at random BELOW the kernel's ephemeral range: a port
    the kernel hands out (bind to 0) is also what it gives the next outgoing connection of any
    process, so a busy run could take it between our choice and the server's bind ("Address already
    in use", seen with three xdist workers)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randint(10000, max(10001, low - 1))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # every probe was taken: the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- moto ------------------------------------------------------------------------------------------


@dataclass
class Moto:
    url: str
    env: dict[str, str]  # what a hepinfra process needs to reach it (credentials, endpoint, region)
    pid: int = 0  # the server process (a test may SIGSTOP it: a frozen S3)

    def client(self) -> object:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def bucket(self) -> str:
        """A new empty bucket."""
        name = f"hepinfra-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name

    def objects(self, only: str | None = None) -> dict[str, bytes]:
        """Every object of every bucket (or of bucket ``only``): ``bucket/key`` -> body."""
        from concurrent.futures import ThreadPoolExecutor

        s3: Any = self.client()
        wanted = []
        for bucket in s3.list_buckets()["Buckets"]:
            if only is not None and bucket["Name"] != only:
                continue
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
                wanted += [(bucket["Name"], item["Key"]) for item in page.get("Contents", [])]

        def get(pair: tuple[str, str]) -> bytes:
            return bytes(s3.get_object(Bucket=pair[0], Key=pair[1])["Body"].read())

        with ThreadPoolExecutor(16) as pool:  # the session's scan reads hundreds of objects
            bodies = list(pool.map(get, wanted))
        return {f"{b}/{k}": body for (b, k), body in zip(wanted, bodies, strict=True)}


class ServerFailed(Exception):
    """A test server could not start (the tests fail on it; they never skip)."""


@contextlib.contextmanager
def moto_process(secret: str, extra_env: dict[str, str] | None = None) -> Iterator[Moto]:
    """moto in server mode on a free loopback port, until the block ends (``extra_env``: moto's
    own settings, such as INITIAL_NO_AUTH_ACTION_COUNT to enforce IAM after N requests)."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="hepinfra-moto-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(extra_env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/moto-api/", timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise ServerFailed(f"moto server did not start: {Path(log.name).read_text()[-2000:]}") from None
            time.sleep(0.1)
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAHEPINFRATEST0001",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        yield Moto(url, env, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server_log = Path(log.name).read_text(errors="replace")
        os.unlink(log.name)
        try:
            from tests.conftest import record_artifact

            record_artifact("moto server log", server_log)  # joins the session's secret scan
        except ImportError:  # a benchmark, not the tests
            pass


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Moto]:
    """One moto server for the session; everything it stores joins the secret scan at the end."""
    from tests.conftest import ISSUED, record_artifact

    secret = "moto-secret-" + secrets.token_hex(12)
    ISSUED.add(secret)
    try:
        with moto_process(secret) as moto:
            yield moto
            for name, body in moto.objects().items():
                record_artifact(f"s3 object {name}", body.decode(errors="replace"))
    except ServerFailed as exc:
        pytest.fail(str(exc))


# --- PostgreSQL --------------------------------------------------------------------------------------


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str
    database: str
    data_dir: Path | None = None  # the cluster's data directory (postmaster.pid: a test may freeze it)

    def pids(self) -> list[int]:
        """The postmaster and its children (a test SIGSTOPs them all: a frozen server)."""
        assert self.data_dir is not None
        postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(Path(stat).read_bytes().rsplit(b")", 1)[1].split()[1]) == postmaster:
                    children.append(int(stat.split("/")[2]))
        return [postmaster, *children]

    @property
    def url(self) -> str:
        """The libpq URL with its password: what HEPINFRA_STATE_PG holds (a secret)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    @property
    def url_without_password(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def schema(self) -> str:
        """A new schema name (hepinfra creates it)."""
        return f"s_{uuid.uuid4().hex[:12]}"

    def rows(self) -> list[str]:
        """Every row of every hepinfra table in every schema, as text."""
        import psycopg

        out = []
        with psycopg.connect(self.url, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_name IN ('states', 'locks') AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            ).fetchall()
            for schema, table in tables:
                for row in conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall():  # noqa: S608
                    out.append(" ".join(str(v) for v in row))
        return out


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise ServerFailed("PostgreSQL is not installed (.ci/run installs Debian's 'postgresql' package)")
    return Path(found[-1]).parent


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One PostgreSQL cluster for the session; every hepinfra row joins the secret scan at the end."""
    from tests.conftest import ISSUED, record_artifact

    password = "pg-" + secrets.token_urlsafe(18)
    ISSUED.add(password)
    try:
        with postgres_cluster(password) as server:
            yield server
            for row in server.rows():
                record_artifact("postgres row", row)
    except ServerFailed as exc:
        pytest.fail(str(exc))


@contextlib.contextmanager
def postgres_cluster(password: str) -> Iterator[Postgres]:
    """A new cluster in a temp dir on a free loopback port (user hepinfra, database hepinfra_test)."""
    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="hepinfra-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the unprivileged 'postgres'
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    os.chmod(root, 0o700)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if as_user:
        shutil.chown(pwfile, "postgres", "postgres")
    data, sockets, port = root / "data", root / "sock", free_port()
    sockets.mkdir()
    if as_user:
        shutil.chown(sockets, "postgres", "postgres")

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise ServerFailed(f"{args[0]} failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")

    run(
        str(bindir / "initdb"), "-D", str(data), "-U", "hepinfra", "--auth=scram-sha-256",
        f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync", "--no-instructions",
    )  # fmt: skip
    pwfile.unlink()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "-t", "60", "start")
    server = Postgres("127.0.0.1", port, "hepinfra", password, "hepinfra_test", data)
    try:
        import psycopg

        with psycopg.connect(f"postgresql://hepinfra:{password}@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE hepinfra_test")
        yield server
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


# --- MariaDB ----------------------------------------------------------------------------------------


@dataclass
class MariaDB:
    host: str
    port: int
    user: str
    password: str
    socket: Path
    log_text: str = ""  # the server's error log, read when it has stopped

    @property
    def url(self) -> str:
        """The admin URL with its password: what HEPINFRA_LOCAL_MARIADB holds (a secret)."""
        return f"mysql://{self.user}:{quote(self.password, safe='')}@{self.host}:{self.port}/"

    @property
    def url_without_password(self) -> str:
        return f"mysql://{self.user}@{self.host}:{self.port}/"

    def connect(self, **kw: Any) -> Any:
        """A PyMySQL connection as root (autocommit)."""
        import pymysql

        return pymysql.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, autocommit=True, **kw
        )


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDB]:
    """One MariaDB server for the session; its error log joins the secret scan at the end."""
    from tests.conftest import ISSUED, record_artifact

    password = "maria-" + secrets.token_urlsafe(18)
    ISSUED.add(password)
    try:
        with mariadb_instance(password) as server:
            yield server
        record_artifact("mariadb error log", server.log_text)
    except ServerFailed as exc:
        pytest.fail(str(exc))


@contextlib.contextmanager
def mariadb_instance(password: str) -> Iterator[MariaDB]:
    """A new MariaDB in a temp dir on a free loopback port (admin: root with ``password``)."""
    import pymysql

    if not shutil.which("mariadbd", path=os.environ.get("PATH", "") + ":/usr/sbin"):
        raise ServerFailed("MariaDB is not installed (.ci/run installs Debian's 'mariadb-server' package)")
    mariadbd = shutil.which("mariadbd", path=os.environ.get("PATH", "") + ":/usr/sbin") or "mariadbd"
    root = Path(tempfile.mkdtemp(prefix="hepinfra-mariadb-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # mariadbd will not run as root: run it as the unprivileged 'mysql'
        account = pwd.getpwnam("mysql")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "mysql", "--"]
    os.chmod(root, 0o700)
    data, sock, pid_file, log, port = root / "data", root / "sock", root / "pid", root / "err.log", free_port()
    done = subprocess.run(
        [*as_user, "mariadb-install-db", "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal",
         "--skip-test-db", "--skip-name-resolve"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise ServerFailed(f"mariadb-install-db failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")
    proc = subprocess.Popen(
        [*as_user, mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={sock}", f"--port={port}",
         "--bind-address=127.0.0.1", "--skip-name-resolve", f"--pid-file={pid_file}", f"--log-error={log}",
         "--skip-log-bin", "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0",
         "--skip-innodb-doublewrite", "--max-connections=200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    server: MariaDB | None = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:  # root may log in without a password over the socket until it has one
                conn = pymysql.connect(unix_socket=str(sock), user="root", autocommit=True)
                break
            except pymysql.MySQLError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise ServerFailed(f"mariadbd did not start: {tail}") from None
                time.sleep(0.1)
        with conn, conn.cursor() as cursor:
            for host in ("localhost", "127.0.0.1", "::1"):  # the loopback roots mariadb-install-db made
                cursor.execute("ALTER USER 'root'@%s IDENTIFIED BY %s", (host, password))
        server = MariaDB("127.0.0.1", port, "root", password, sock)
        yield server
    finally:
        _stop_mariadbd(proc, pid_file)
        if log.exists() and server is not None:
            server.log_text = log.read_text(errors="replace")
        shutil.rmtree(root, ignore_errors=True)


def _stop_mariadbd(proc: subprocess.Popen[bytes], pid_file: Path) -> None:
    """SIGTERM to the mariadbd this fixture started (runuser would SIGKILL it after 2 s)."""
    import signal

    try:
        os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# --- PgBouncer ------------------------------------------------------------------------------------------


@dataclass
class PgBouncer:
    host: str
    port: int
    pool_mode: str
    users: dict[str, str]  # the consumers' own credentials (auth_file), and the admin's
    admin: str = "pgb_admin"
    pid: int = 0
    log_text: str = ""  # its log, read when it has stopped

    def url(self, database: str, user: str = "app") -> str:
        """A consumer's URL: its own stable credential, PgBouncer's address, the database's name there."""
        return f"postgresql://{user}:{quote(self.users[user], safe='')}@{self.host}:{self.port}/{database}"

    @property
    def admin_url(self) -> str:
        """What PGBOUNCER_ADMIN_URL holds (a secret)."""
        return self.url("pgbouncer", self.admin)

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW DATABASES``, ``SHOW POOLS``... on the admin console, as dicts."""
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5, row_factory=dict_row) as conn:
            return list(conn.execute(f"SHOW {what}").fetchall())

    def database(self, name: str) -> dict[str, Any] | None:
        return next((row for row in self.show("DATABASES") if row["name"] == name), None)


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer", path=os.environ.get("PATH", "") + ":/usr/sbin")
    if not found:
        raise ServerFailed("PgBouncer is not installed (.ci/run installs Debian's 'pgbouncer' package)")
    return found


@contextlib.contextmanager
def pgbouncer_instance(
    include: Path, pool_mode: str, users: dict[str, str], settings: dict[str, str] | None = None
) -> Iterator[PgBouncer]:
    """PgBouncer on a free loopback port whose ``[databases]`` come from ``include`` (made empty if
    missing), ``pool_mode`` session or transaction, SCRAM logins from ``users`` (the admin among them),
    and any further ``[pgbouncer]`` ``settings``."""
    binary = _pgbouncer_binary()
    root = Path(tempfile.mkdtemp(prefix="hepinfra-pgbouncer-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PgBouncer will not run as root: the 'postgres' user, able to read root's 0600 file
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups",
                   "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]  # fmt: skip
    os.chmod(root, 0o700)
    if not include.exists():
        include.parent.mkdir(parents=True, exist_ok=True)
        include.write_text("")
        include.chmod(0o600)
    port = free_port()
    userlist = "".join(f'"{name}" "{password}"\n' for name, password in users.items())
    (root / "userlist.txt").write_text(userlist)
    log = root / "pgbouncer.log"
    (root / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"%include {include}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {root / 'userlist.txt'}\nadmin_users = pgb_admin\n"
        f"pool_mode = {pool_mode}\nlogfile = {log}\ndefault_pool_size = 20\nmax_client_conn = 500\n"
        + "".join(f"{key} = {value}\n" for key, value in (settings or {}).items())
    )
    if as_user:
        for name in ("userlist.txt", "pgbouncer.ini"):
            shutil.chown(root / name, "postgres", "postgres")
    stderr = (root / "stderr.log").open("wb")  # never a pipe: PgBouncer logs there too, and would block on a full one
    proc = subprocess.Popen([*as_user, binary, str(root / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                            stderr=stderr, start_new_session=True)  # fmt: skip
    stderr.close()
    server = PgBouncer("127.0.0.1", port, pool_mode, dict(users), pid=proc.pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                server.show("VERSION")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = (root / "stderr.log").read_text(errors="replace")
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise ServerFailed(f"pgbouncer did not start: {err[-1000:]} {tail}") from None
                time.sleep(0.05)
        yield server
    finally:
        proc.terminate()  # SIGTERM: immediate shutdown
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        server.log_text = log.read_text(errors="replace") if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pgbouncer_server() -> Iterator[Any]:
    """``start(include, pool_mode, **settings)``: a PgBouncer for this test (stopped after it), whose consumers log
    in as ``app``; its admin console's URL is ``.admin_url``. Its log joins the secret scan."""
    from tests.conftest import ISSUED, record_artifact

    users = {"app": "app-" + secrets.token_urlsafe(12), "pgb_admin": "adm-" + secrets.token_urlsafe(12)}
    ISSUED.update(users.values())
    stack = contextlib.ExitStack()
    started: list[PgBouncer] = []

    def start(include: Path, pool_mode: str = "transaction", **settings: str) -> PgBouncer:
        try:
            server = stack.enter_context(pgbouncer_instance(include, pool_mode, users, settings))
        except ServerFailed as exc:
            pytest.fail(str(exc))
        started.append(server)
        return server

    with stack:
        yield start
    for server in started:
        record_artifact("pgbouncer log", server.log_text)


# --- a TCP port that can go away ---------------------------------------------------------------------


class TcpForwarder:
    """A loopback port forwarding to ``upstream`` (host, port). ``stop()`` closes the port and cuts
    every connection through it (the server looks gone: connection refused); ``start()`` opens
    the same port again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        import threading

        self.upstream = upstream
        self.port = free_port()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self.start()

    def start(self) -> None:
        import threading

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._sock = sock
        threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            cut, self._open = self._open, set()
        if sock is not None:
            with contextlib.suppress(OSError):  # wakes the accept() that holds the socket open
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for conn in cut:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _serve(self, sock: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()


# --- a proxy that loses answers -----------------------------------------------------------------------


class DroppingProxy:
    """An HTTP/1.1 proxy on loopback in front of ``upstream``: it forwards every request, and for
    the first ``drops`` requests whose method and path match, closes the client's connection
    instead of answering (the request did reach the server: a lost answer, as on a flaky network)."""

    def __init__(
        self,
        upstream: str,
        method: str,
        path_suffix: str,
        drops: int = 1,
        *,
        target: str = "",
        answer: tuple[int, dict[str, str], bytes] | None = None,
    ) -> None:
        """``target``: also match this X-Amz-Target header (JSON APIs post to '/'); ``answer``: reply
        this (status, headers, body) instead of forwarding, rather than losing the answer."""
        import threading
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.method, self.suffix, self.drops = method, path_suffix, drops
        self.target, self.answer = target, answer
        self.dropped = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        import http.client

        with client, client.makefile("rb") as reader:
            while True:
                line = reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers: list[tuple[str, str]] = []
                while (header := reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, value = header.decode().split(":", 1)
                    headers.append((name.strip(), value.strip()))
                length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                body = reader.read(length) if length else b""
                amz_target = next((v for k, v in headers if k.lower() == "x-amz-target"), "")
                if self.answer is not None and self._matches(method, target, amz_target):
                    status, extra, data = self.answer
                    head = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                    client.sendall(f"HTTP/1.1 {status} X\r\n{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
                    continue
                upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
                upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    upstream.putheader(name, value)
                upstream.endheaders(body)
                answer = upstream.getresponse()
                data = answer.read()
                drop = self.answer is None and self._matches(method, target, amz_target)
                if drop:
                    return  # the server did it; the client never hears
                out = [f"HTTP/1.1 {answer.status} {answer.reason}\r\n".encode()]
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        out.append(f"{name}: {value}\r\n".encode())
                out.append(f"Content-Length: {len(data)}\r\n\r\n".encode())
                client.sendall(b"".join(out) + data)

    def _matches(self, method: str, target: str, amz_target: str) -> bool:
        with self._lock:
            hit = method == self.method and target.split("?")[0].endswith(self.suffix)
            hit = hit and (not self.target or amz_target == self.target) and self.dropped < self.drops
            self.dropped += hit
            return hit

    def close(self) -> None:
        self._sock.close()
