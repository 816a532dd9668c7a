"""Contract: the ID Generator, row by row of hep.gg's ID Generator documentation (overview,
generate, authentication)."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from hepinfra import errors as E
from tests.conftest import HTTP, ID_TOKEN, ID_USER, Server, run

TYPES = ["uuid", "nanoid", "2fa", "license", "words", "word", "snowflake", "keypair", "cuid"]
OPTIONS = {"nanoid": {"length": 12}}


def gen(server: Server, body: dict[str, object], *, form: bool = False, **kw: object) -> httpx.Response:
    if form:
        return HTTP.post(server.url + "/", data={k: str(v) for k, v in body.items()}, timeout=10, **kw)  # type: ignore[arg-type]
    return HTTP.post(server.url + "/", json=body, timeout=10, **kw)  # type: ignore[arg-type]


def creds(**extra: object) -> dict[str, object]:
    return {"username": ID_USER, "token": ID_TOKEN, **extra}


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
def test_every_type_returns_an_id_in_both_encodings(server: Server, kind: str, form: bool) -> None:
    r = gen(server, creds(type=kind, **OPTIONS.get(kind, {})), form=form)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == ({"id", "privateID"} if kind == "keypair" else {"id"})
    assert isinstance(body["id"], str) and body["id"]


def test_the_documented_quickstart_nanoid_of_12(server: Server) -> None:
    body = gen(server, {"username": ID_USER, "token": ID_TOKEN, "type": "nanoid", "length": 12}).json()
    assert re.fullmatch(r"[A-Za-z0-9_-]{12}", body["id"])


def test_type_shapes(server: Server) -> None:
    def one(kind: str, **opts: object) -> dict[str, str]:
        r = gen(server, creds(type=kind, **opts))
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    assert uuid.UUID(one("uuid")["id"]).version == 4
    pair = one("keypair")
    assert re.fullmatch(r"[0-9a-f]{64}", pair["id"]) and re.fullmatch(r"[0-9a-f]{64}", pair["privateID"])
    assert re.fullmatch(r"([A-Z2-9]{5}-){4}[A-Z2-9]{5}", one("license")["id"])
    assert re.fullmatch(r"[a-z]+-[a-z]+-[a-z]+", one("words")["id"])
    assert re.fullmatch(r"[a-z]+_[a-z]+", one("word", count=2, style="snake")["id"])
    assert re.fullmatch(r"[A-Z2-7]{32}", one("2fa")["id"])
    assert re.fullmatch(r"[a-z][a-z0-9]{23}", one("cuid")["id"])
    a, b = int(one("snowflake")["id"]), int(one("snowflake")["id"])
    assert b > a > 0


def test_username_is_lowercased_server_side(server: Server) -> None:
    for username in (ID_USER.upper(), ID_USER.lower(), ID_USER):
        assert gen(server, {"username": username, "token": ID_TOKEN, "type": "uuid"}).status_code == 200


def test_token_is_matched_exactly(server: Server) -> None:
    r = gen(server, {"username": ID_USER, "token": ID_TOKEN.upper(), "type": "uuid"})
    assert (r.status_code, r.json()) == (401, {"error": "Invalid username or token"})


@pytest.mark.parametrize(
    "body",
    [
        {"type": "uuid"},
        {"username": ID_USER, "type": "uuid"},
        {"token": ID_TOKEN, "type": "uuid"},
        {"username": "", "token": ID_TOKEN, "type": "uuid"},
        {"username": ID_USER, "token": "", "type": "uuid"},
    ],
)
@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
def test_401_missing_credentials(server: Server, body: dict[str, object], form: bool) -> None:
    r = gen(server, body, form=form)
    assert (r.status_code, r.json()) == (401, {"error": "Please provide a username and token"})


def test_401_unknown_user(server: Server) -> None:
    r = gen(server, {"username": "nobody", "token": ID_TOKEN, "type": "uuid"})
    assert (r.status_code, r.json()) == (401, {"error": "Invalid username or token"})


def test_credentials_in_query_parameters_are_not_read(server: Server) -> None:
    # This request puts the token in a URL on purpose; keep httpx from logging that URL.
    import logging

    httpx_log = logging.getLogger("httpx")
    httpx_log.disabled = True
    try:
        r = HTTP.post(
            server.url + "/", params={"username": ID_USER, "token": ID_TOKEN}, json={"type": "uuid"}, timeout=10
        )
    finally:
        httpx_log.disabled = False
    assert (r.status_code, r.json()) == (401, {"error": "Please provide a username and token"})


def test_credentials_in_headers_are_not_read(server: Server) -> None:
    r = HTTP.post(server.url + "/", headers={"Authorization": f"Bearer {ID_TOKEN}"}, json={"type": "uuid"}, timeout=10)
    assert (r.status_code, r.json()) == (401, {"error": "Please provide a username and token"})


def test_authentication_is_checked_before_type(server: Server) -> None:
    r = gen(server, {"username": ID_USER, "token": "wrong", "type": "foo"})
    assert (r.status_code, r.json()) == (401, {"error": "Invalid username or token"})
    r = gen(server, {"type": "foo"})
    assert (r.status_code, r.json()) == (401, {"error": "Please provide a username and token"})


def test_400_unknown_type(server: Server) -> None:
    r = gen(server, creds(type="foo"))
    assert (r.status_code, r.json()) == (400, {"error": "ID Type foo not supported."})


def test_400_nanoid_needs_a_length(server: Server) -> None:
    r = gen(server, creds(type="nanoid"))
    assert (r.status_code, r.json()) == (400, {"error": "Please specify the length"})


@pytest.mark.parametrize(
    "kind,opts,message",
    [
        ("nanoid", {"length": 0}, "The length must be between 1 and 255"),
        ("nanoid", {"length": "ten"}, "The length must be a whole number"),
        ("words", {"style": "shouty"}, "Unknown style shouty, use one of kebab, snake, camel, pascal, space, title"),
        ("words", {"count": 99}, "The count must be between 1 and 16"),
        ("license", {"segments": 0}, "The segments must be between 1 and 16"),
        ("cuid", {"length": 1}, "The length must be between 2 and 32"),
    ],
)
def test_400_options_out_of_range_name_the_problem(
    server: Server, kind: str, opts: dict[str, object], message: str
) -> None:
    r = gen(server, creds(type=kind, **opts))
    assert (r.status_code, r.json()) == (400, {"error": message})


def test_client_generate_json_and_form(server: Server) -> None:
    async def scenario() -> None:
        async with server.hepgg() as hub:
            client = hub.idgen()
            one = await client.generate("nanoid", length=12)
            two = await client.generate("nanoid", encoding="form", length=12)
            assert len(one.id.get_secret_value()) == 12 and len(two.id.get_secret_value()) == 12
            assert one.private_id is None
            pair = await client.generate("keypair")
            assert pair.private_id is not None and len(pair.private_id.get_secret_value()) == 64

    run(scenario())


def test_client_maps_idgen_errors(server: Server) -> None:
    async def scenario() -> None:
        async with server.hepgg() as hub:
            with pytest.raises(E.UnsupportedIdTypeError) as info:
                await hub.idgen().generate("foo")
            assert info.value.status == 400 and info.value.server_message == "ID Type foo not supported."
            with pytest.raises(E.IdOptionError) as opt:
                await hub.idgen().generate("nanoid")
            assert opt.value.server_message == "Please specify the length"
            with pytest.raises(E.UsageError):
                await hub.idgen().generate("uuid", token="x")
        async with server.hepgg({"HEPGG_ID_USERNAME": ID_USER, "HEPGG_ID_TOKEN": "wrong"}) as hub:
            with pytest.raises(E.BadCredentialsError) as bad:
                await hub.idgen().generate("uuid")
            assert bad.value.status == 401 and bad.value.server_message == "Invalid username or token"

    run(scenario())
