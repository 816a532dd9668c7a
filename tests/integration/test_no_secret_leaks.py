"""No key, token or password appears in any exception text, repr or log line."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from hepinfra import errors as E
from tests.conftest import ENV, ID_USER, KEY_DISABLED, SECRETS, Server, run


def test_errors_reprs_and_logs_hold_no_secret(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    def record(value: Any) -> None:
        texts.extend([str(value), repr(value)])
        if isinstance(value, BaseException):
            texts.extend(str(a) for a in value.args)
            if value.__cause__ is not None:
                record(value.__cause__)

    async def scenario() -> None:
        async with server.hepgg() as hub:
            dbs = hub.databases()
            made = await dbs.create("leak-check", "postgres")
            record(made)
            record(made.model_dump())
            record(await dbs.reveal(made.id))
            record(await dbs.rotate(made.id))
            record(await dbs.list())
            record(await hub.idgen().generate("keypair"))
            record(await hub.uploader().upload(b"x", "x.txt"))
            server.faults(script=["drop-after", "503"], retry_after=0)
            record(await dbs.rotate(made.id))
            for bad in (dbs.create("leak-check"), dbs.create("-x"), dbs.reveal("nope"), hub.idgen().generate("foo")):
                with pytest.raises(E.ApiError) as info:
                    await bad
                record(info.value)
        for env in ({**ENV, "HEPGG_DB_KEY": KEY_DISABLED}, {**ENV, "HEPGG_DB_KEY": "hepgg_db_wrong-secret"}):
            async with server.hepgg(env) as hub:
                with pytest.raises(E.AuthError) as info:
                    await hub.databases().list()
                record(info.value)
        async with server.hepgg({"HEPGG_ID_USERNAME": ID_USER, "HEPGG_ID_TOKEN": "wrong-secret"}) as hub:
            with pytest.raises(E.AuthError) as info:
                await hub.idgen().generate("uuid")
            record(info.value)
        async with server.hepgg({"HEPGG_DB_KEY": "hepgg_db_wrong-secret"}) as hub:
            record(hub.databases())

    run(scenario())
    texts.extend(r.getMessage() for r in caplog.records)
    texts.extend(str(r.args) for r in caplog.records)
    issued = server.issued_secrets() + SECRETS + ["hepgg_db_wrong-secret", "wrong-secret"]
    assert len(issued) > len(SECRETS) + 5
    blob = "\n".join(texts)
    assert "hepgg.databases" in blob or "DatabaseCredentials" in blob  # we really captured something
    leaked = [s for s in issued if s in blob]
    assert leaked == []
