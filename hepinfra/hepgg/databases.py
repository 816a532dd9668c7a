"""Client for the database management API (``/api/v1/db/databases``).

Owns: list / create / reveal / rotate, and resolving ambiguous mutations without a blind
retry: a create whose answer was lost is looked up by name with List (names are unique per
account); a rotate whose answer was lost is resolved with Reveal, never a second rotate.
Must not: print, log or raise a key or a password.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hepinfra import errors as E
from hepinfra.hepgg._http import HttpCore
from hepinfra.hepgg.models import DatabaseCredentials, DatabaseSummary, parse

BASE = "/api/v1/db/databases"
SERVICE = "databases"
LATE_S = 30.0  # how long a name that met 409 may take to show in List (twice the request timeout)


class DatabasesClient:
    def __init__(self, core: HttpCore) -> None:
        self._core = core

    def _data(self, response: Any) -> Any:
        body = HttpCore.json(response, SERVICE)
        if not isinstance(body, dict) or body.get("ok") is not True or "data" not in body:
            raise E.ProtocolError("hep.gg database API: response lacks the {ok: true, data} envelope", service=SERVICE)
        return body["data"]

    async def list(self) -> list[DatabaseSummary]:
        """Every database of the key's account, in creation order. No secrets."""
        data = self._data(await self._core.call("GET", BASE, idempotent=True))
        items = data.get("databases") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise E.ProtocolError("hep.gg database API: list response lacks data.databases", service=SERVICE)
        return [parse(DatabaseSummary, item, service=SERVICE, what="list") for item in items]

    async def find(self, name: str) -> DatabaseSummary | None:
        return next((db for db in await self.list() if db.name == name), None)

    async def reveal(self, database_id: str) -> DatabaseCredentials:
        response = await self._core.call("GET", f"{BASE}/{database_id}", idempotent=True)
        return _same(parse(DatabaseCredentials, self._data(response), service=SERVICE, what="reveal"), id=database_id)

    async def create(self, name: str, engine: str = "mariadb") -> DatabaseCredentials:
        """Create ``name``. If the answer is lost, List finds out whether it was created. A name that
        is taken raises ``NameTakenError`` (409); the caller settles it with ``await_listed`` (a killed
        run's create that landed after the plan's List, or this call's own retry meeting its first
        attempt).

        Returns the new database; ``recovered`` is True when its credentials came from
        Reveal after a lost answer.
        """
        attempts = self._core.retry.attempts
        for attempt in range(attempts):
            try:
                response = await self._core.call("POST", BASE, idempotent=False, json={"name": name, "engine": engine})
                made = parse(DatabaseCredentials, self._data(response), service=SERVICE, what="create")
                return _same(made, name=name, engine=engine)
            except E.NameTakenError:
                if attempt == 0:
                    raise
                # this call's own first attempt, whose answer was lost, landed after List looked
                late = await self.await_listed(name, engine, LATE_S)
                return late.model_copy(update={"taken": False})
            except E.AmbiguousResultError:
                found = await self.find(name)
                if found is not None:
                    revealed = await self.reveal(found.id)
                    return revealed.model_copy(update={"recovered": True})
                if attempt == attempts - 1:
                    raise
                await self._core._sleep(self._core.retry.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def await_listed(self, name: str, engine: str, wait_s: float) -> DatabaseCredentials:
        """After a create met 409: the name exists on this account, although the List the plan read did
        not show it (an earlier run's create that landed late, or one made elsewhere since). List again
        until it shows, for at most ``wait_s`` seconds, and return its credentials by Reveal
        (``recovered`` True). Another engine under that name is refused: its credentials never reach
        this database's outputs."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + wait_s, 0.1
        while True:
            found = await self.find(name)
            if found is not None:
                break
            if loop.time() + delay > deadline:
                raise E.NameTakenError(
                    f"hep.gg database API: '{name}' is taken (409) but List did not show it within {wait_s:.0f}s",
                    service=SERVICE,
                    hint="run the apply again: the next plan finds it by name and adopts it",
                )
            await self._core._sleep(delay)
            delay = min(delay * 2, 2.0)
        if found.engine != engine:
            raise E.NameTakenError(
                f"hep.gg database API: '{name}' is taken by a {found.engine} database, not {engine}; nothing was "
                "written",
                service=SERVICE,
                hint="pick another name, or declare that engine to adopt it",
            )
        revealed = await self.reveal(found.id)
        return revealed.model_copy(update={"recovered": True, "taken": True})

    async def rotate(self, database_id: str) -> DatabaseCredentials:
        """Rotate the password. If the answer is lost, Reveal returns the current one.

        After a lost answer the rotation may or may not have happened; either way the
        revealed password is the one that works now (``recovered`` is True).
        """
        try:
            response = await self._core.call("POST", f"{BASE}/{database_id}/rotate", idempotent=False)
        except E.AmbiguousResultError:
            revealed = await self.reveal(database_id)
            return revealed.model_copy(update={"recovered": True})
        return _same(parse(DatabaseCredentials, self._data(response), service=SERVICE, what="rotate"), id=database_id)


def _same(answer: DatabaseCredentials, **asked: str) -> DatabaseCredentials:
    """An answer about another database than the one asked for is refused: its credentials must never
    reach this database's outputs or state."""
    for field, wanted in asked.items():
        if getattr(answer, field) != wanted:
            raise E.ProtocolError(
                f"hep.gg database API: the answer is about another database (its {field} is not the one asked "
                "for); nothing was written",
                service=SERVICE,
            )
    return answer
