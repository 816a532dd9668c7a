"""Contract: the uploader, rows of hep.gg's uploader authentication documentation, and the facts of
its published ShareX uploader configuration (``POST /upload``, multipart field ``file``, the
token in ``Authorization``, JSON ``url`` in the answer)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from hepinfra import errors as E
from tests.conftest import HTTP, UP_ACCESS_REVOKED, UP_FORBIDDEN, UP_REVOKED, UP_TOKEN, Server, run


def upload(
    server: Server, auth: str | None, content: bytes = b"hello hep.gg", name: str = "hello.txt"
) -> httpx.Response:
    headers = {"Authorization": auth} if auth is not None else {}
    files = {"file": (name, content, "text/plain")}
    return HTTP.post(server.url + "/upload", headers=headers, files=files, timeout=10)


@pytest.mark.parametrize("auth", [UP_TOKEN, f"Bearer {UP_TOKEN}", f"Token {UP_TOKEN}"])
def test_three_header_forms_upload_and_the_url_serves_the_bytes(server: Server, auth: str) -> None:
    payload = bytes(range(256)) * 4
    r = upload(server, auth, payload, "blob.bin")
    assert r.status_code == 200
    url = r.json()["url"]
    assert url.startswith(server.url + "/u/") and url.endswith("/blob.bin")
    assert HTTP.get(url, timeout=10).content == payload


@pytest.mark.parametrize("auth", ["", "Bearer", "Token"])
def test_401_missing_bearer_token(server: Server, auth: str) -> None:
    r = upload(server, auth)
    assert (r.status_code, r.json()) == (401, {"ok": False, "error": "Missing bearer token"})


@pytest.mark.parametrize("token", ["hyd-up-unknown", UP_REVOKED])
def test_401_token_revoked(server: Server, token: str) -> None:
    r = upload(server, f"Bearer {token}")
    assert (r.status_code, r.json()) == (401, {"ok": False, "error": "Token revoked"})


def test_403_forbidden(server: Server) -> None:
    r = upload(server, UP_FORBIDDEN)
    assert (r.status_code, r.json()) == (403, {"ok": False, "error": "Forbidden"})


def test_403_access_required(server: Server) -> None:
    r = upload(server, UP_ACCESS_REVOKED)
    assert r.status_code == 403
    assert r.json() == {"ok": False, "error": "ACCESS_REQUIRED", "code": "ACCESS_REQUIRED"}


def test_400_without_a_file_field(server: Server) -> None:
    r = HTTP.post(server.url + "/upload", headers={"Authorization": UP_TOKEN}, files={"other": ("a", b"x")}, timeout=10)
    assert r.status_code == 400 and r.json()["ok"] is False


def test_client_upload_path_and_bytes(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "report.json"
    source.write_bytes(b'{"a": 1}')

    async def scenario() -> None:
        async with server.hepgg() as hub:
            url = await hub.uploader().upload(source)
            assert url.endswith("/report.json")
            assert HTTP.get(url, timeout=10).content == b'{"a": 1}'
            url2 = await hub.uploader().upload(b"raw", "raw.txt")
            assert HTTP.get(url2, timeout=10).content == b"raw"

    run(scenario())


@pytest.mark.parametrize(
    "token,cls",
    [
        ("hyd-up-nope", E.BadCredentialsError),
        (UP_FORBIDDEN, E.ForbiddenError),
        (UP_ACCESS_REVOKED, E.AccessRequiredError),
    ],
)
def test_client_maps_uploader_errors(server: Server, token: str, cls: type) -> None:
    async def scenario() -> None:
        async with server.hepgg({"HEPGG_UPLOAD_TOKEN": token}) as hub:
            await hub.uploader().upload(b"x", "x.txt")

    with pytest.raises(cls) as info:
        run(scenario())
    assert type(info.value) is cls


def test_client_upload_missing_file_is_a_usage_error(server: Server, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server.hepgg() as hub:
            await hub.uploader().upload(tmp_path / "nope.txt")

    with pytest.raises(E.UsageError, match=r"nope\.txt: cannot read file"):
        run(scenario())
