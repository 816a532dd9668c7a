"""``verify:`` trusts hep.gg for where a database is, and the templates for nothing else.

A pull request's author controls the templates: a rendered URL that routes the login to another
server (``?hostaddr=``, another host or port, ``?host=/tmp``, ``?service=``, ``?options=``) must
never be dialled, a query value made of the password must never reach a message, a server that
asks for the password in cleartext must never get it, and a failed login is a fixed cause with
the host:port dialled, never the driver's text. Against the local hep.gg backed by the real
PostgreSQL of tests/servers.py, through the CLI; fake servers on loopback record what they got.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from dotenv import dotenv_values

from hepinfra.emulator.app import EmulatorConfig
from hepinfra.emulator.engines import open_engine
from hepinfra.verify import VerifyError, check
from tests.cliutil import invoke, write_project
from tests.conftest import ISSUED, Server
from tests.servers import MariaDB, Postgres

SSL_REQUEST, GSS_REQUEST = 80877103, 80877104
RETRY_HINT = "(hint: the next apply verifies again (without rotating))"
ROUTE_HINT = "(hint: verify dials only the host and port hep.gg gave for the database; fix the output's template)"


class FakeServer:
    """A loopback listener that speaks just enough of a database protocol to ask for the password
    in cleartext, and records every connection and every byte the client sends after that."""

    def __init__(self, greet: Callable[[socket.socket], None]) -> None:
        self._greet = greet
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.connections = 0
        self.after_ask: list[bytes] = []  # what each client sent after being asked for the password
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(3)
        received = b""
        try:
            self._greet(conn)
            while chunk := conn.recv(65536):
                received += chunk
        except OSError:
            pass
        finally:
            self.after_ask.append(received)
            conn.close()

    def close(self) -> None:
        self._sock.close()
        for thread in self._threads:
            thread.join(5)


def _exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def postgres_cleartext(conn: socket.socket) -> None:
    """Refuse TLS and GSS, read the StartupMessage, answer AuthenticationCleartextPassword."""
    while True:
        length, code = struct.unpack("!ii", _exactly(conn, 8))
        if code in (SSL_REQUEST, GSS_REQUEST):
            conn.sendall(b"N")
            continue
        _exactly(conn, length - 8)
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))
        return


def mysql_packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def mysql_clear_password(conn: socket.socket) -> None:
    """A MariaDB greeting (mysql_native_password), then an auth switch to mysql_clear_password."""
    caps = 0x1 | 0x8 | 0x200 | 0x8000 | 0x80000  # long password, with db, protocol 41, secure conn, plugin auth
    greeting = (
        b"\x0a" + b"5.5.5-10.11.6-MariaDB\x00" + struct.pack("<I", 7) + b"abcdefgh\x00"
        + struct.pack("<H", caps & 0xFFFF) + b"\x21" + struct.pack("<H", 2) + struct.pack("<H", caps >> 16)
        + b"\x15" + b"\x00" * 10 + b"ijklmnopqrst\x00" + b"mysql_native_password\x00"
    )  # fmt: skip
    conn.sendall(mysql_packet(0, greeting))
    header = _exactly(conn, 4)
    _exactly(conn, int.from_bytes(header[:3], "little"))  # the handshake response: a scramble, not the password
    conn.sendall(mysql_packet(2, b"\xfe" + b"mysql_clear_password\x00"))


@pytest.fixture
def fake_postgres() -> Iterator[FakeServer]:
    fake = FakeServer(postgres_cleartext)
    yield fake
    fake.close()


MANIFEST = """
version: 1
environments:
  prod: {}
databases:
  shop:
    engine: postgres
    verify: true
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "@TEMPLATE@"}
"""
FILES = {".gitignore": ".env\n"}


@pytest.fixture
def world(make_world: Callable[[EmulatorConfig], Server], postgres_server: Postgres) -> Server:
    """The local hep.gg whose postgres databases live on the real test cluster."""
    return make_world(EmulatorConfig(servers={"postgres": open_engine("postgres", postgres_server.url)}))


def apply(tmp_path: Path, server: Server, url_template: str, *flags: str) -> tuple[int, str]:
    path = write_project(tmp_path, MANIFEST.replace("@TEMPLATE@", url_template.replace('"', '\\"')), FILES)
    done = invoke(["apply", "-f", str(path), "--auto-approve", *flags], server=server)
    return done.code, done.out + done.err


def rendered_password(root: Path) -> str:
    url = dotenv_values(root / ".env")["SHOP_URL"] or ""
    password = unquote(urlsplit(url).password or "")
    ISSUED.add(password)
    return password


def failure_line(text: str) -> str:
    """The one verify failure apply reports (in its progress line and its summary), from ``verify of``."""
    found = {line[line.index("verify of shop-prod failed") :] for line in text.splitlines() if "verify of" in line}
    assert len(found) == 1, text
    return found.pop()


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{{ db.connection_string }}?hostaddr=127.0.0.1&port=FAKE", "its query sets hostaddr"),
        ("{{ db.connection_string }}?port=FAKE&hostaddr=127.0.0.1", "its query sets port"),
        ("postgresql://{{ db.user }}:{{ db.password }}@localhost:FAKE/{{ db.db_name }}", "another host"),
        ("postgresql://{{ db.user }}:{{ db.password }}@{{ db.host }}:FAKE/{{ db.db_name }}", "another port"),
        ("{{ db.connection_string }}?host=/tmp", "its query sets host"),
        ("{{ db.connection_string }}?service=x", "its query sets service"),
        ("{{ db.connection_string }}?options=-c%20search_path%3Dx", "its query sets options"),
        ("{{ db.connection_string }}?HOST%61DDR=127.0.0.1&port=FAKE", "its query sets hostaddr"),
        ("postgresql://{{ db.user }}:{{ db.password }}@%2Ftmp/{{ db.db_name }}", "a unix socket"),
    ],
)  # fmt: skip
def test_a_rendered_url_that_routes_elsewhere_is_never_dialled(
    tmp_path: Path, world: Server, postgres_server: Postgres, fake_postgres: FakeServer, template: str, why: str
) -> None:
    code, text = apply(tmp_path, world, template.replace("FAKE", str(fake_postgres.port)))
    where = f"{postgres_server.host}:{postgres_server.port}"
    assert code == 1, text
    assert failure_line(text) == (
        f"verify of shop-prod failed: the rendered URL does not point at hep.gg's {where} ({why}); not dialled "
        + ROUTE_HINT
    )
    assert fake_postgres.connections == 0 and fake_postgres.after_ask == []
    assert rendered_password(tmp_path) not in text


def test_a_server_at_hepggs_own_address_asking_for_a_cleartext_password_never_gets_it(
    fake_postgres: FakeServer,
) -> None:
    password = "cleartext-bait-Pw-91"
    url = f"postgresql://shop:{password}@127.0.0.1:{fake_postgres.port}/shop"
    with pytest.raises(VerifyError) as caught:
        check("postgres", url, url, 5)
    assert str(caught.value) == (
        f"could not log in at 127.0.0.1:{fake_postgres.port} with the rendered credentials: "
        f"the server asked for the password in cleartext; not sent {RETRY_HINT}"
    )
    fake_postgres.close()
    assert fake_postgres.connections >= 1
    for sent in fake_postgres.after_ask:
        assert not sent.startswith(b"p") and password.encode() not in sent, sent


def test_a_mariadb_server_switching_to_mysql_clear_password_never_gets_it() -> None:
    """PyMySQL answers an auth switch to mysql_clear_password with the password (no plugin map
    needed): verify's map refuses it before anything is sent."""
    fake = FakeServer(mysql_clear_password)
    password = "cleartext-bait-Pw-92"
    url = f"mysql://shop:{password}@127.0.0.1:{fake.port}/shop"
    try:
        with pytest.raises(VerifyError) as caught:
            check("mariadb", url, url, 5)
    finally:
        fake.close()
    assert str(caught.value) == (
        f"could not log in at 127.0.0.1:{fake.port} with the rendered credentials: "
        f"the server asked for the password in cleartext; not sent {RETRY_HINT}"
    )
    assert fake.connections == 1 and fake.after_ask == [b""], fake.after_ask


def test_a_query_value_made_of_the_password_never_reaches_the_output(tmp_path: Path, world: Server) -> None:
    """``?sslmode={{ db.password | reverse }}`` is not a routing option: verify ignores it (hepinfra
    picks the channel) and logs in; no message, text or JSON, can carry the reversed password."""
    template = "{{ db.connection_string }}?sslmode={{ db.password | reverse }}"
    code, text = apply(tmp_path, world, template)
    assert code == 0, text
    password = rendered_password(tmp_path)
    code_json, text_json = apply(tmp_path, world, template, "--json")
    rotated = invoke(["rotate", "-f", str(tmp_path / "hepinfra.yaml"), "shop", "--auto-approve", "--json"],
                     server=world)  # fmt: skip
    assert code_json == 0 and rotated.code == 0, text_json + rotated.out + rotated.err
    verified = [json.loads(line) for line in rotated.out.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "done" and e.get("verified_ms", 0) > 0 for e in verified), rotated.out
    new_password = rendered_password(tmp_path)
    for seen in (text, text_json, rotated.out + rotated.err):
        for secret in (password, new_password):
            assert secret not in seen and secret[::-1] not in seen


def test_a_wrong_password_at_the_right_address_is_the_fixed_cause(
    tmp_path: Path, world: Server, postgres_server: Postgres
) -> None:
    template = "postgresql://{{ db.user }}:not-the-Password-7@{{ db.host }}:{{ db.port }}/{{ db.db_name }}"
    code, text = apply(tmp_path, world, template)
    assert code == 1, text
    assert failure_line(text) == (
        f"verify of shop-prod failed: could not log in at {postgres_server.host}:{postgres_server.port} "
        f"with the rendered credentials: authentication failed {RETRY_HINT}"
    )


def test_a_route_check_needs_no_server() -> None:
    from hepinfra.verify import difference

    official = "postgresql://u:pw@db.example:5432/d?sslmode=require"
    assert difference("postgres", official, official) is None
    assert difference("postgres", "postgresql://u:pw@DB.example/d?sslmode=x&application_name=y", official) is None
    assert (
        difference("postgres", "postgresql://u:pw@db.example:5432/d?dbname=other", official) == "its query sets dbname"
    )
    assert difference("postgres", "postgresql://u:pw@db.example:99999/d", official) == "not a valid URL"
    assert difference("postgres", "postgresql://u:pw@/d?host=db.example", official) == "no host"
    assert difference("postgres", "postgresql://u:pw@db.example:5432,db.example:5433/d", official) == "several hosts"
    maria = "mysql://u:pw@db.example:3306/d"
    assert difference("mariadb", "mysql://u:pw@db.example/d", maria) is None
    assert difference("mariadb", "mysql://u:pw@db.example/d?unix_socket=/run/x", maria) == "its query sets unix_socket"


def test_a_wrong_mariadb_password_and_a_closed_port_are_fixed_causes(mariadb_server: MariaDB) -> None:
    where = f"{mariadb_server.host}:{mariadb_server.port}"
    wrong = f"mysql://{mariadb_server.user}:not-the-Password-8@{where}/mysql"
    with pytest.raises(VerifyError) as caught:
        check("mariadb", wrong, wrong, 5)
    assert (
        str(caught.value)
        == f"could not log in at {where} with the rendered credentials: authentication failed {RETRY_HINT}"
    )
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    for engine, scheme in (("mariadb", "mysql"), ("postgres", "postgresql")):
        url = f"{scheme}://u:not-the-Password-9@127.0.0.1:{port}/d"
        with pytest.raises(VerifyError) as caught:
            check(engine, url, url, 5)
        assert str(caught.value) == (
            f"could not log in at 127.0.0.1:{port} with the rendered credentials: connection refused {RETRY_HINT}"
        )
