"""Contract: the database management API, row by row of hep.gg's Management API documentation.

Wire tests speak raw HTTP to the emulator over loopback and compare status, envelope,
code and message exactly; client tests run the same rows through DatabasesClient.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest

from hepinfra import errors as E
from hepinfra.emulator.app import EmulatorConfig
from tests.conftest import HTTP, KEY, KEY_DISABLED, KEY_FULL, KEY_OTHER, KEY_SUSPENDED, Server, run

DBS = "/api/v1/db/databases"
SUMMARY_FIELDS = {"id", "name", "engine", "dbName", "dbUser", "sizeBytes", "sizeRefreshedAt", "status", "createdAt"}
SECRET_FIELDS = {"id", "name", "engine", "dbName", "dbUser", "password", "connectionString"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def req(server: Server, method: str, path: str, auth: str | None = f"Bearer {KEY}", **kw: object) -> httpx.Response:
    headers = {"Authorization": auth} if auth is not None else {}
    return HTTP.request(method, server.url + path, headers=headers, timeout=10, **kw)  # type: ignore[arg-type]


def create(server: Server, name: str, engine: str | None = None, auth: str = f"Bearer {KEY}") -> httpx.Response:
    body = {"name": name} if engine is None else {"name": name, "engine": engine}
    return req(server, "POST", DBS, auth=auth, json=body)


# --- authentication: the three header forms and the three 401 codes ------------------------------


@pytest.mark.parametrize("auth", [f"Bearer {KEY}", f"Token {KEY}", KEY])
def test_all_three_authorization_forms_are_accepted(server: Server, auth: str) -> None:
    r = req(server, "GET", DBS, auth=auth)
    assert r.status_code == 200
    assert r.json() == {"ok": True, "data": {"databases": []}}


@pytest.mark.parametrize("auth", [None, "", "Bearer", "Token", "bearer"])
def test_401_no_key_for_missing_header_or_empty_token(server: Server, auth: str | None) -> None:
    r = req(server, "GET", DBS, auth=auth)
    assert r.status_code == 401
    body = r.json()
    assert body["ok"] is False and body["code"] == "NO_KEY" and isinstance(body["error"], str)
    assert set(body) == {"ok", "error", "code"}


def test_401_bad_key(server: Server) -> None:
    r = req(server, "GET", DBS, auth="Bearer hepgg_db_nope")
    assert (r.status_code, r.json()["code"], r.json()["ok"]) == (401, "BAD_KEY", False)


def test_401_key_disabled(server: Server) -> None:
    r = req(server, "GET", DBS, auth=f"Bearer {KEY_DISABLED}")
    assert (r.status_code, r.json()["code"]) == (401, "KEY_DISABLED")


@pytest.mark.parametrize("method,path", [("GET", DBS), ("POST", DBS), ("GET", DBS + "/x"), ("POST", DBS + "/x/rotate")])
def test_403_suspended_account_has_no_code(server: Server, method: str, path: str) -> None:
    r = req(server, method, path, auth=f"Bearer {KEY_SUSPENDED}", json={"name": "a"})
    assert r.status_code == 403
    body = r.json()
    assert body["ok"] is False and "code" not in body and body["error"]


# --- list ----------------------------------------------------------------------------------------


def test_list_is_ordered_by_creation_and_holds_no_secrets(server: Server) -> None:
    for name in ("zeta", "alpha", "mid"):
        assert create(server, name).status_code == 201
    r = req(server, "GET", DBS)
    assert r.status_code == 200
    rows = r.json()["data"]["databases"]
    assert [d["name"] for d in rows] == ["zeta", "alpha", "mid"]
    for d in rows:
        assert set(d) == SUMMARY_FIELDS
        assert "password" not in r.text and "connectionString" not in r.text
        assert d["engine"] == "mariadb" and d["status"] == "active"
        assert isinstance(d["sizeBytes"], int) and ISO.match(d["createdAt"])
        assert d["sizeRefreshedAt"] is None  # never measured


def test_list_shows_only_the_callers_account(server: Server) -> None:
    create(server, "mine")
    create(server, "theirs", auth=f"Bearer {KEY_OTHER}")
    names = [d["name"] for d in req(server, "GET", DBS).json()["data"]["databases"]]
    assert names == ["mine"]


# --- create --------------------------------------------------------------------------------------


def test_create_returns_201_with_the_documented_shape_and_mariadb_default(server: Server) -> None:
    r = create(server, "my-app")
    assert r.status_code == 201
    body = r.json()
    assert body["ok"] is True and set(body["data"]) == SECRET_FIELDS
    data = body["data"]
    assert data["engine"] == "mariadb"
    assert re.fullmatch(r"um_[0-9a-f]{10}_1", data["dbName"]) and data["dbUser"] == "d" + data["dbName"]
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", data["id"])  # ULID, like "01HV..."
    assert data["connectionString"] == (
        f"mysql://{data['dbUser']}:{quote(data['password'], safe='')}@db.teamhydra.dev:3306/{data['dbName']}"
    )


@pytest.mark.parametrize(
    "engine,scheme,port,suffix",
    [
        ("mariadb", "mysql", 3306, ""),
        ("postgres", "postgresql", 5432, ""),
        ("mongo", "mongodb", 27017, "?authSource=admin"),
    ],
)
def test_connection_string_scheme_matches_engine(
    server: Server, engine: str, scheme: str, port: int, suffix: str
) -> None:
    data = create(server, f"db-{engine}", engine).json()["data"]
    assert data["engine"] == engine
    cs = data["connectionString"]
    assert cs.startswith(f"{scheme}://") and cs.endswith(f":{port}/{data['dbName']}{suffix}")


def test_connection_string_percent_encodes_user_and_password(tricky_server: Server) -> None:
    data = create(tricky_server, "tricky", "postgres").json()["data"]
    password = data["password"]
    assert set("$'\"#\\@:/% ") & set(password)  # the tricky characters are really there
    parts = urlsplit(data["connectionString"])
    assert unquote(parts.password or "") == password and unquote(parts.username or "") == data["dbUser"]
    assert parts.hostname == "db.teamhydra.dev" and parts.port == 5432


def test_second_database_gets_the_next_number(server: Server) -> None:
    first = create(server, "one").json()["data"]
    second = create(server, "two").json()["data"]
    assert first["dbName"].endswith("_1") and second["dbName"].endswith("_2")
    assert first["dbName"][:-2] == second["dbName"][:-2]


@pytest.mark.parametrize("name", ["a", "A" * 63, "9lives", "my_app-2", "x-_-y"])
def test_valid_names(server: Server, name: str) -> None:
    assert create(server, name).status_code == 201


@pytest.mark.parametrize("name", ["", "A" * 64, "-lead", "_lead", "has space", "dot.ted", "slash/", "ümlaut"])
def test_400_name_validation_has_no_code(server: Server, name: str) -> None:
    r = create(server, name)
    assert r.status_code == 400
    body = r.json()
    assert body["ok"] is False and "code" not in body and body["error"]


def test_400_missing_name_has_no_code(server: Server) -> None:
    r = req(server, "POST", DBS, json={"engine": "postgres"})
    assert r.status_code == 400 and "code" not in r.json()


def test_400_engine_disabled(make_world: Any) -> None:
    server = make_world(EmulatorConfig(engines=("mariadb", "postgres")))
    r = create(server, "m", "mongo")
    assert r.status_code == 400
    assert r.json()["code"] == "ENGINE_DISABLED" and r.json()["ok"] is False
    assert create(server, "p", "postgres").status_code == 201


def test_402_out_of_slots(server: Server) -> None:
    assert create(server, "only", auth=f"Bearer {KEY_FULL}").status_code == 201
    r = create(server, "second", auth=f"Bearer {KEY_FULL}")
    assert r.status_code == 402
    assert r.json() == {
        "ok": False,
        "error": "No free database slots. Buy a pack or upgrade to Premium.",
        "code": "OUT_OF_SLOTS",
    }


def test_409_duplicate_name_has_no_code(server: Server) -> None:
    assert create(server, "dup").status_code == 201
    r = create(server, "dup", "postgres")
    assert r.status_code == 409
    assert r.json() == {"ok": False, "error": "You already have a database with that name"}


def test_same_name_on_another_account_is_fine(server: Server) -> None:
    assert create(server, "shared").status_code == 201
    assert create(server, "shared", auth=f"Bearer {KEY_OTHER}").status_code == 201


# --- reveal and rotate ---------------------------------------------------------------------------


def test_reveal_returns_current_password_and_does_not_reset_it(server: Server) -> None:
    created = create(server, "rv", "postgres").json()["data"]
    for _ in range(2):
        r = req(server, "GET", f"{DBS}/{created['id']}")
        assert r.status_code == 200
        data = r.json()["data"]
        assert set(data) == SECRET_FIELDS | {"sizeBytes", "sizeRefreshedAt", "status", "createdAt"}
        assert data["password"] == created["password"]
        assert data["connectionString"] == created["connectionString"]
    assert server.password_valid(created["dbUser"], created["password"])


def test_rotate_replaces_the_password_and_the_old_one_stops_working(server: Server) -> None:
    created = create(server, "rot").json()["data"]
    r = req(server, "POST", f"{DBS}/{created['id']}/rotate")
    assert r.status_code == 200
    rotated = r.json()["data"]
    assert set(rotated) == SECRET_FIELDS
    assert rotated["password"] != created["password"]
    assert not server.password_valid(created["dbUser"], created["password"])
    assert server.password_valid(created["dbUser"], rotated["password"])
    assert req(server, "GET", f"{DBS}/{created['id']}").json()["data"]["password"] == rotated["password"]


@pytest.mark.parametrize("suffix", ["", "/rotate"])
def test_404_not_found_for_another_accounts_database(server: Server, suffix: str) -> None:
    theirs = create(server, "theirs", auth=f"Bearer {KEY_OTHER}").json()["data"]
    method = "POST" if suffix else "GET"
    r = req(server, method, f"{DBS}/{theirs['id']}{suffix}")
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND" and r.json()["ok"] is False
    r = req(server, method, f"{DBS}/01NOSUCHDATABASE0000000000{suffix}")
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"


def test_delete_is_not_exposed(server: Server) -> None:
    created = create(server, "keep").json()["data"]
    r = req(server, "DELETE", f"{DBS}/{created['id']}")
    assert r.status_code == 405 and r.json()["ok"] is False
    assert [d["name"] for d in req(server, "GET", DBS).json()["data"]["databases"]] == ["keep"]


# --- the same rows through the real client ---------------------------------------------------------


def test_client_create_list_reveal_rotate(server: Server) -> None:
    async def scenario() -> None:
        async with server.hepgg() as hub:
            dbs = hub.databases()
            made = await dbs.create("client-app", "postgres")
            assert made.engine == "postgres" and not made.recovered
            assert made.connection_string.get_secret_value().startswith("postgresql://")
            listed = await dbs.list()
            assert [d.name for d in listed] == ["client-app"] and listed[0].status == "active"
            assert listed[0].created_at is not None
            revealed = await dbs.reveal(made.id)
            assert revealed.password.get_secret_value() == made.password.get_secret_value()
            rotated = await dbs.rotate(made.id)
            assert rotated.password.get_secret_value() != made.password.get_secret_value()
            assert (await dbs.find("client-app")) is not None and (await dbs.find("nope")) is None

    run(scenario())


@pytest.mark.parametrize(
    "key,cls,code,hint",
    [
        ("", E.NoCredentialsError, None, "HEPGG_DB_KEY"),
        ("hepgg_db_wrong", E.BadCredentialsError, "BAD_KEY", "copy it again"),
        (KEY_DISABLED, E.KeyDisabledError, "KEY_DISABLED", "suspension"),
        (KEY_SUSPENDED, E.ForbiddenError, None, "suspended"),
    ],
)
def test_client_auth_errors_map_to_classes(server: Server, key: str, cls: type, code: str | None, hint: str) -> None:
    async def scenario() -> None:
        async with server.hepgg({"HEPGG_DB_KEY": key}) as hub:
            await hub.databases().list()

    with pytest.raises((cls, E.UsageError)) as info:
        run(scenario())
    if key:
        assert type(info.value) is cls and info.value.code == code
        assert info.value.status == (403 if cls is E.ForbiddenError else 401)
    assert hint in str(info.value)


def test_client_maps_create_errors(server: Server) -> None:
    async def scenario() -> None:
        async with server.hepgg() as hub:
            dbs = hub.databases()
            await dbs.create("taken")
            with pytest.raises(E.NameTakenError) as taken:
                await dbs.create("taken")
            assert taken.value.status == 409 and "name is taken on this account" in str(taken.value)
            with pytest.raises(E.InvalidNameError) as bad:
                await dbs.create("-bad")
            assert bad.value.status == 400 and bad.value.code is None
            with pytest.raises(E.NotFoundError) as missing:
                await dbs.rotate("01NOSUCHDATABASE0000000000")
            assert missing.value.code == "NOT_FOUND"
        async with server.hepgg({"HEPGG_DB_KEY": KEY_FULL}) as hub:
            await hub.databases().create("one")
            with pytest.raises(E.OutOfSlotsError) as slots:
                await hub.databases().create("two")
            assert slots.value.code == "OUT_OF_SLOTS" and "free a slot" in str(slots.value)
            assert "No free database slots" in str(slots.value)

    run(scenario())


def test_client_maps_engine_disabled(make_world: Any) -> None:
    server = make_world(EmulatorConfig(engines=("postgres",)))

    async def scenario() -> None:
        async with server.hepgg() as hub:
            with pytest.raises(E.EngineDisabledError) as info:
                await hub.databases().create("m")  # the default engine, mariadb, is off here
            assert info.value.code == "ENGINE_DISABLED"

    run(scenario())
