"""Retries and ambiguity, proven with the emulator's fault injector over a real socket.

Safe calls (list, reveal) are retried on 429/5xx/dropped connections; a create or rotate
whose answer was lost is resolved by List / Reveal, never by a blind second call.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from hepinfra import errors as E
from hepinfra.hepgg import RetryPolicy
from tests.conftest import Server, run


def calls(server: Server) -> list[tuple[str, str, str | None]]:
    return [
        (r["method"], r["path"].rsplit("/", 1)[-1] if "rotate" in r["path"] else r["path"], r["fault"])
        for r in server.requests()
        if r["service"] == "databases"
    ]


@pytest.mark.parametrize("fault", ["500", "502", "503", "429", "drop-before", "drop-after"])
def test_list_is_retried_through_every_fault_kind(server: Server, fault: str) -> None:
    server.faults(script=[fault, fault], retry_after=0)

    async def scenario() -> int:
        async with server.hepgg() as hub:
            return len(await hub.databases().list())

    assert run(scenario()) == 0
    log = calls(server)
    assert [f for _, _, f in log] == [fault, fault, None]


def test_list_gives_up_after_the_attempt_budget_with_the_servers_message(server: Server) -> None:
    server.faults(script=["503"] * 10)

    async def scenario() -> None:
        async with server.hepgg() as hub:
            await hub.databases().list()

    with pytest.raises(E.ServerError) as info:
        run(scenario())
    assert info.value.status == 503 and "Injected server error" in str(info.value)
    assert len(calls(server)) == 4  # FAST_RETRY.attempts


def test_retry_after_is_honoured(server: Server) -> None:
    server.faults(script=["429"], retry_after=0.3)

    async def scenario() -> None:
        async with server.hepgg(retry=RetryPolicy(attempts=3, base_delay=0.001, max_retry_after=5)) as hub:
            await hub.databases().list()

    started = time.perf_counter()
    run(scenario())
    assert time.perf_counter() - started >= 0.3


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (6, 1.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays) and max(delays) > ceiling / 2
    assert policy.delay(0, retry_after=7) == 7 and RetryPolicy(max_retry_after=2).delay(0, 60) == 2


def test_dropped_create_after_commit_is_found_by_name_not_created_twice(server: Server) -> None:
    server.faults(script=["drop-after"])

    async def scenario() -> tuple[str, str, bool]:
        async with server.hepgg() as hub:
            made = await hub.databases().create("shop", "postgres")
            return made.db_user or "", made.password.get_secret_value(), made.recovered

    user, password, recovered = run(scenario())
    assert recovered
    assert server.password_valid(user, password)
    log = calls(server)
    assert [(m, f) for m, _, f in log] == [("POST", "drop-after"), ("GET", None), ("GET", None)]  # create, list, reveal
    assert len(server.app.emu.store.list_databases(server.app.emu.store.account_of_db_key(server_key()) or "")) == 1


def server_key() -> str:
    from tests.conftest import KEY

    return KEY


@pytest.mark.parametrize("fault", ["drop-before", "500", "502", "503", "429"])
def test_create_that_did_not_commit_is_created_once(server: Server, fault: str) -> None:
    server.faults(script=[fault], retry_after=0)

    async def scenario() -> bool:
        async with server.hepgg() as hub:
            return (await hub.databases().create("once")).recovered

    assert run(scenario()) is False
    methods = [(m, f) for m, _, f in calls(server)]
    if fault == "429":  # the server refused it outright: retried without a lookup
        assert methods == [("POST", "429"), ("POST", None)]
    else:  # ambiguous: List first, then one more create
        assert methods == [("POST", fault), ("GET", None), ("POST", None)]
    account = server.app.emu.store.account_of_db_key(server_key()) or ""
    assert [r["name"] for r in server.app.emu.store.list_databases(account)] == ["once"]


def test_dropped_rotate_is_resolved_by_reveal_never_a_second_rotate(server: Server) -> None:
    async def scenario() -> tuple[str, str, str, bool]:
        async with server.hepgg() as hub:
            made = await hub.databases().create("rot")
            server.faults(script=["drop-after"])
            rotated = await hub.databases().rotate(made.id)
            return (
                made.db_user or "",
                made.password.get_secret_value(),
                rotated.password.get_secret_value(),
                rotated.recovered,
            )

    user, old, new, recovered = run(scenario())
    assert recovered and old != new
    assert server.password_valid(user, new) and not server.password_valid(user, old)
    rotates = [r for r in server.requests() if r["path"].endswith("/rotate")]
    assert len(rotates) == 1
    row = server.app.emu.store.list_databases(server.app.emu.store.account_of_db_key(server_key()) or "")[0]
    assert row["rotations"] == 1


def test_rotate_dropped_before_commit_keeps_the_old_password_working(server: Server) -> None:
    async def scenario() -> tuple[str, str, str]:
        async with server.hepgg() as hub:
            made = await hub.databases().create("rot2")
            server.faults(script=["drop-before"])
            rotated = await hub.databases().rotate(made.id)
            assert rotated.recovered
            return made.db_user or "", made.password.get_secret_value(), rotated.password.get_secret_value()

    user, old, current = run(scenario())
    assert old == current and server.password_valid(user, current)
    assert len([r for r in server.requests() if r["path"].endswith("/rotate")]) == 1


def test_random_faults_never_duplicate_a_create_or_double_a_rotation(server: Server) -> None:
    server.faults(fail_rate=0.3, retry_after=0)
    names = [f"svc-{i:02d}" for i in range(30)]

    async def scenario() -> dict[str, tuple[str, str]]:
        async with server.hepgg(retry=RetryPolicy(attempts=8, base_delay=0.001, max_delay=0.005)) as hub:
            dbs = hub.databases()
            made = await asyncio.gather(*(dbs.create(n, "postgres") for n in names))
            rotated = await asyncio.gather(*(dbs.rotate(m.id) for m in made))
            return {
                m.name: (m.db_user or "", r.password.get_secret_value()) for m, r in zip(made, rotated, strict=True)
            }

    result = run(scenario())
    server.faults(fail_rate=0)
    store = server.app.emu.store
    rows = store.list_databases(store.account_of_db_key(server_key()) or "")
    assert sorted(r["name"] for r in rows) == names  # none lost, none duplicated
    assert all(r["rotations"] <= 1 for r in rows)  # never rotated twice
    for user, password in result.values():
        assert server.password_valid(user, password)
    faults = Counter(r["fault"] for r in server.requests() if r["fault"])
    assert sum(faults.values()) >= 10  # the injector really fired


def test_unreachable_host_is_a_transport_error_naming_the_call() -> None:
    from hepinfra.hepgg import Hepgg
    from hepinfra.hepgg.config import Endpoints

    async def scenario() -> None:
        hub = Hepgg(
            Endpoints("http://127.0.0.1:9", "http://127.0.0.1:9"),
            environ={"HEPGG_DB_KEY": "k"},
            retry=RetryPolicy(attempts=2, base_delay=0.001),
        )
        async with hub:
            await hub.databases().list()

    with pytest.raises(E.TransportError) as info:
        run(scenario())
    assert "GET http://127.0.0.1:9/api/v1/db/databases failed: connection refused (ConnectError)" in str(info.value)
    assert not isinstance(info.value, E.AmbiguousResultError)


def test_a_server_that_drips_its_answer_is_cut_off_by_a_deadline() -> None:
    import socket
    import threading
    import time as _time

    from hepinfra.hepgg import Hepgg
    from hepinfra.hepgg.config import Endpoints

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():  # one byte every 0.1 s: no single read ever times out
            try:
                conn.sendall(b" ")
            except OSError:
                break
            _time.sleep(0.1)
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    async def scenario() -> None:
        hub = Hepgg(Endpoints(url, url), environ={"HEPGG_DB_KEY": "k" * 12}, retry=RetryPolicy(attempts=1), timeout=0.5)
        async with hub:
            await hub.databases().list()

    started = _time.monotonic()
    try:
        with pytest.raises(E.TransportError) as info:
            run(scenario())
    finally:
        stop.set()
        listener.close()
    assert _time.monotonic() - started < 10
    assert "timed out" in str(info.value)
