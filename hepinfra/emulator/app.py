"""The local hep.gg as an ASGI app: the three public APIs on one origin, plus a control API.

Owns: HTTP handling that reproduces hep.gg's public API documentation (the Management API,
the ID Generator and the Uploader pages; summarised in docs/emulator.md) exactly (paths, the three
Authorization forms, envelopes, statuses, codes and messages), the request log (no
secrets), fault injection, ``/_emulator/*`` test aids, and keeping a database's record in step
with its real server when one is configured for its engine (``EmulatorConfig.servers``: the
server changes first, the record only if that worked; engines/ holds the adapters). A client that hangs up mid-request
is logged with status 499, never as a server error or a traceback. Undocumented choices are
listed in docs/emulator.md. Must not: log a key, token or password.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import string
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hepinfra.emulator import idtypes
from hepinfra.emulator.engines import ENV_VARS, Engine, EngineError
from hepinfra.emulator.store import DuplicateName, OutOfSlots, Store
from hepinfra.safety.redact import register

ENGINES = ("mariadb", "postgres", "mongo")
FAULT_KINDS = ("500", "502", "503", "429", "drop-before", "drop-after")
NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
ID_BODY_LIMIT = 32 * 1024 * 1024
PORTS = {"mariadb": 3306, "postgres": 5432, "mongo": 27017}
SCHEMES = {"mariadb": "mysql", "postgres": "postgresql", "mongo": "mongodb"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Faults:
    """Test aids: added latency and a share of requests that fail in a chosen way."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fail_rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: float = 1.0
    # a create still being processed: List leaves out databases younger than this (hep.gg answers a
    # create before every replica lists it; a killed client's create can also land after its death)
    list_lag_ms: float = 0.0


@dataclass(frozen=True)
class EmulatorConfig:
    engines: tuple[str, ...] = ENGINES
    password_chars: str | None = None
    password_length: int = 32
    db_host: str = "db.teamhydra.dev"
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    servers: Mapping[str, Engine] = field(default_factory=dict)  # engine -> real server (else simulated)
    # real servers: a database's hep.gg user may make roles (CREATEROLE / CREATE USER), as rotation: alternating
    # needs; off by default, as hep.gg's shared servers may well withhold it
    role_privilege: bool = False


class InjectedDrop(httpx.RemoteProtocolError):
    """Raised to cut a connection. Over a socket uvicorn closes it mid-response; in-process,
    httpx's ASGI transport re-raises it, so a client sees a dropped connection either way."""

    def __init__(self) -> None:
        super().__init__("connection dropped by the emulator's fault injector")


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def db_error(status: int, message: str, code: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error": message}
    if code:
        body["code"] = code
    return _json(status, body)


def bearer(header: str | None) -> str | None:
    """The token of an Authorization header in raw, ``Bearer`` or ``Token`` form; '' if empty."""
    if header is None:
        return None
    value = header.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() in ("bearer", "token") and (rest or value.lower() in ("bearer", "token")):
        return rest.strip()
    return value


class ControlApi:
    """The test aids under ``/_emulator`` (loopback only): the request log, faults, a password oracle
    and a database's status and size. Mixed into ``Emulator``, whose state it reads."""

    store: Store
    log: deque[dict[str, Any]]
    faults: Faults
    script: deque[str | None]

    async def get_requests(self, request: Request) -> Response:
        since = int(request.query_params.get("since", 0))
        return _json(200, {"ok": True, "data": {"requests": [r for r in self.log if r["seq"] > since]}})

    async def clear_requests(self, request: Request) -> Response:
        self.log.clear()
        return _json(200, {"ok": True, "data": {}})

    async def faults_endpoint(self, request: Request) -> Response:
        if request.method == "PUT":
            body = await request.json()
            script = body.pop("script", None) or []
            unknown = {k for k in script if k is not None} - set(FAULT_KINDS)
            if unknown:
                return db_error(400, f"unknown fault kinds {sorted(unknown)}")
            try:
                self.faults = parse_faults(body, base=self.faults)
            except ValueError as exc:
                return db_error(400, str(exc))
            self.script.extend(script)
        return _json(200, {"ok": True, "data": {**asdict(self.faults), "script": list(self.script)}})

    async def check_password(self, request: Request) -> Response:
        body = await request.json()
        valid = self.store.check_password(str(body.get("dbUser", "")), str(body.get("password", "")))
        return _json(200, {"ok": True, "data": {"valid": valid}})

    async def patch_database(self, request: Request) -> Response:
        body = await request.json()
        status = body.get("status")
        if status is not None and status not in ("active", "over_quota", "disabled"):
            return db_error(400, "status must be active, over_quota or disabled")
        size = body.get("sizeBytes")
        if not self.store.set_database(request.path_params["id"], status=status, size_bytes=size):
            return db_error(404, "Database not found", "NOT_FOUND")
        return _json(200, {"ok": True, "data": {}})


class UploaderApi:
    """The Uploader: ``POST /upload`` (a bearer upload token, a multipart ``file`` field) and the public
    ``GET /u/ID/NAME`` that serves it. Mixed into ``Emulator``, whose store it uses."""

    store: Store

    async def upload(self, request: Request) -> Response:
        token = bearer(request.headers.get("authorization"))
        if not token:
            return db_error(401, "Missing bearer token")
        account = self.store.upload_token(token)
        if account is None:
            return db_error(401, "Token revoked")
        request.state.account = account.id
        if account.status != "active" or account.uploader == "forbidden":
            return db_error(403, "Forbidden")
        if account.uploader == "revoked":
            return db_error(403, "ACCESS_REQUIRED", "ACCESS_REQUIRED")
        try:
            form = await request.form()
        except Exception:  # starlette raises assorted errors for a malformed multipart body
            return db_error(400, "Request must be multipart/form-data with a file field")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return db_error(400, "No file provided in the file field")
        data = await upload.read()
        filename = upload.filename or "upload.bin"
        ctype = upload.content_type or "application/octet-stream"
        upload_id = self.store.add_upload(account.id, filename, ctype, data)
        url = str(request.base_url).rstrip("/") + f"/u/{upload_id}/{quote(filename)}"
        return _json(200, {"ok": True, "url": url, "id": upload_id, "size": len(data)})

    async def download(self, request: Request) -> Response:
        row = self.store.get_upload(request.path_params["id"])
        if row is None or row["filename"] != request.path_params["filename"]:
            return db_error(404, "File not found", "NOT_FOUND")
        return Response(row["data"], media_type=row["content_type"])


class Emulator(ControlApi, UploaderApi):
    """The handlers, bound to one Store and one config."""

    def __init__(self, store: Store, config: EmulatorConfig | None = None) -> None:
        self.store = store
        self.config = config or EmulatorConfig()
        self.faults = self.config.faults
        self.random = random.Random(self.config.seed)
        self.log: deque[dict[str, Any]] = deque(maxlen=200_000)
        self.script: deque[str | None] = deque()  # faults for the next requests, in order (None: none)
        self._seq = 0

    # --- helpers ---------------------------------------------------------------------------------

    def new_password(self) -> str:
        chars = self.config.password_chars
        length = self.config.password_length
        if not chars:
            alphabet = string.ascii_letters + string.digits
            password = "".join(secrets.choice(alphabet) for _ in range(length))
        else:
            # every requested character at least once, so quoting bugs cannot hide
            picked = list(dict.fromkeys(chars)) + [secrets.choice(chars) for _ in range(max(0, length - len(chars)))]
            secrets.SystemRandom().shuffle(picked)
            password = "".join(picked)
        register(password)
        return password

    def connection_string(self, row: Any) -> str:
        engine = row["engine"]
        user, password = quote(row["db_user"], safe=""), quote(row["password"], safe="")
        where = row["server"] or f"{self.config.db_host}:{PORTS[engine]}"  # a real server, or the simulated host
        url = f"{SCHEMES[engine]}://{user}:{password}@{where}/{quote(row['db_name'], safe='')}"
        return url + "?authSource=admin" if engine == "mongo" else url

    # --- real servers (optional): the record changes only together with the server -----------------

    def create_record(
        self, account: str, name: str, engine: str, *, status: str = "active", size_bytes: int = 0
    ) -> Any:
        """A new database with a new password: on the configured real server of ``engine`` (made
        before the record is committed; EngineError and no record if that fails), else simulated."""
        password, server = self.new_password(), self.config.servers.get(engine)
        if server is None:
            return self.store.create_database(account, name, engine, password, status=status, size_bytes=size_bytes)

        def provision(db_name: str, db_user: str) -> None:
            server.create(db_name, db_user, password)
            server.set_role_privilege(db_name, db_user, self.config.role_privilege)

        return self.store.create_database(
            account, name, engine, password, status=status, size_bytes=size_bytes, server=server.address,
            provision=provision,
        )  # fmt: skip

    def rotate_record(self, account: str, db_id: str) -> Any:
        """The record with a new password, set on its real server first (EngineError and the
        record unchanged if that fails); None if there is no such database."""
        password = self.new_password()

        def apply(row: Any) -> None:
            if row["server"] is not None:
                self._server_of(row).set_password(row["db_user"], password)

        return self.store.rotate_password(account, db_id, password, apply=apply)

    def _server_of(self, row: Any) -> Engine:
        server = self.config.servers.get(row["engine"])
        if server is None or server.address != row["server"]:
            raise EngineError(
                f"this {row['engine']} database lives on the server at {row['server']}, which this emulator "
                f"is not configured with ({ENV_VARS[row['engine']]})"
            )
        return server

    @staticmethod
    def summary(row: Any) -> dict[str, Any]:
        return {
            "id": row["id"],
            "name": row["name"],
            "engine": row["engine"],
            "dbName": row["db_name"],
            "dbUser": row["db_user"],
            "sizeBytes": row["size_bytes"],
            "sizeRefreshedAt": row["size_refreshed_at"],
            "status": row["status"],
            "createdAt": row["created_at"],
        }

    def with_secret(self, row: Any, *, full: bool) -> dict[str, Any]:
        data = {
            "id": row["id"],
            "name": row["name"],
            "engine": row["engine"],
            "dbName": row["db_name"],
            "dbUser": row["db_user"],
            "password": row["password"],
            "connectionString": self.connection_string(row),
        }
        if full:
            summary = self.summary(row)
            data.update({k: summary[k] for k in ("sizeBytes", "sizeRefreshedAt", "status", "createdAt")})
        return data

    def _db_account(self, request: Request) -> tuple[str | None, JSONResponse | None]:
        token = bearer(request.headers.get("authorization"))
        if not token:
            return None, db_error(401, "Missing API key", "NO_KEY")
        found = self.store.db_key(token)
        if found is None:
            return None, db_error(401, "Invalid API key", "BAD_KEY")
        account, disabled = found
        if disabled:
            return None, db_error(401, "API key is disabled", "KEY_DISABLED")
        if account.status != "active":
            return None, db_error(403, "Your account is suspended or not allowed to use this app")
        request.state.account = account.id
        return account.id, None

    # --- database management API -----------------------------------------------------------------

    async def list_databases(self, request: Request) -> Response:
        account, error = self._db_account(request)
        if error or account is None:
            return error or db_error(500, "unreachable")
        rows = self.store.list_databases(account)
        if self.faults.list_lag_ms:
            cutoff = datetime.now(UTC) - timedelta(milliseconds=self.faults.list_lag_ms)
            rows = [r for r in rows if datetime.fromisoformat(r["created_at"].replace("Z", "+00:00")) <= cutoff]
        return _json(200, {"ok": True, "data": {"databases": [self.summary(r) for r in rows]}})

    async def create_database(self, request: Request) -> Response:
        account, error = self._db_account(request)
        if error or account is None:
            return error or db_error(500, "unreachable")
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return db_error(400, "Request body must be JSON")
        if not isinstance(body, dict):
            return db_error(400, "Request body must be a JSON object")
        name, engine = body.get("name"), body.get("engine", "mariadb")
        if not isinstance(name, str) or not name:
            return db_error(400, "Name is required")
        if len(name) > 63:
            return db_error(400, "Name must be 1 to 63 characters")
        if not NAME_RE.fullmatch(name):
            return db_error(400, "Name may only contain letters, digits, underscore, or dash")
        if not name[0].isalnum():
            return db_error(400, "Name must start with a letter or digit")
        if engine is None:
            engine = "mariadb"
        if engine not in ENGINES:
            return db_error(400, "Engine must be one of mariadb, postgres, mongo")
        if engine not in self.config.engines:
            return db_error(400, f"The {engine} engine is not available on this deployment", "ENGINE_DISABLED")
        try:
            if engine in self.config.servers:  # a real server: its round trips leave the event loop free
                row = await asyncio.to_thread(self.create_record, account, name, engine)
            else:
                row = self.create_record(account, name, engine)
        except DuplicateName:
            return db_error(409, "You already have a database with that name")
        except OutOfSlots:
            return db_error(402, "No free database slots. Buy a pack or upgrade to Premium.", "OUT_OF_SLOTS")
        except EngineError as exc:
            return db_error(503, str(exc))
        return _json(201, {"ok": True, "data": self.with_secret(row, full=False)})

    async def reveal_database(self, request: Request) -> Response:
        account, error = self._db_account(request)
        if error or account is None:
            return error or db_error(500, "unreachable")
        row = self.store.get_database(account, request.path_params["id"])
        if row is None:
            return db_error(404, "Database not found", "NOT_FOUND")
        return _json(200, {"ok": True, "data": self.with_secret(row, full=True)})

    async def rotate_database(self, request: Request) -> Response:
        account, error = self._db_account(request)
        if error or account is None:
            return error or db_error(500, "unreachable")
        try:
            if self.config.servers:
                row = await asyncio.to_thread(self.rotate_record, account, request.path_params["id"])
            else:
                row = self.rotate_record(account, request.path_params["id"])
        except EngineError as exc:
            return db_error(503, str(exc))
        if row is None:
            return db_error(404, "Database not found", "NOT_FOUND")
        return _json(200, {"ok": True, "data": self.with_secret(row, full=False)})

    # --- ID Generator ----------------------------------------------------------------------------

    async def generate_id(self, request: Request) -> Response:
        if int(request.headers.get("content-length") or 0) > ID_BODY_LIMIT:
            return _json(413, {"error": "Request body too large"})
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body: dict[str, Any] = {}
        if ctype == "application/x-www-form-urlencoded":
            body = dict(await request.form())
        else:
            try:
                parsed = json.loads(await request.body() or b"{}")
            except ValueError:
                parsed = {}
            body = parsed if isinstance(parsed, dict) else {}
        username, token = body.get("username"), body.get("token")
        if not isinstance(username, str) or not username or not isinstance(token, str) or not token:
            return _json(401, {"error": "Please provide a username and token"})
        found = self.store.id_key(username)
        if found is None or not secrets.compare_digest(found[0].encode(), token.encode()):
            return _json(401, {"error": "Invalid username or token"})
        request.state.account = found[1]
        kind = body.get("type")
        if not isinstance(kind, str) or not kind:
            return _json(400, {"error": "Please specify the type"})
        generator = idtypes.GENERATORS.get(kind)
        if generator is None:
            return _json(400, {"error": f"ID Type {kind} not supported."})
        try:
            result = generator(body)
        except idtypes.IdOptionError as exc:
            return _json(400, {"error": str(exc)})
        self.store.count_generation(username)
        return _json(200, result)

    # --- Uploader --------------------------------------------------------------------------------

    # --- control API (test aids; not part of hep.gg) ----------------------------------------------

    async def index(self, request: Request) -> Response:
        return _json(200, {"ok": True, "service": "hep.gg local emulator", "docs": "docs/emulator.md"})


def parse_faults(body: dict[str, Any], *, base: Faults | None = None) -> Faults:
    base = base or Faults()
    kinds = tuple(body.get("kinds", base.kinds))
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {', '.join(FAULT_KINDS)}")
    faults = replace(
        base,
        latency_ms=float(body.get("latency_ms", base.latency_ms)),
        jitter_ms=float(body.get("jitter_ms", base.jitter_ms)),
        fail_rate=float(body.get("fail_rate", base.fail_rate)),
        kinds=kinds,
        retry_after=float(body.get("retry_after", base.retry_after)),
        list_lag_ms=float(body.get("list_lag_ms", base.list_lag_ms)),
    )
    if not 0.0 <= faults.fail_rate <= 1.0:
        raise ValueError("fail_rate must be between 0 and 1")
    if faults.fail_rate and not faults.kinds:
        raise ValueError("a fail_rate needs at least one fault kind")
    return faults


def _service(path: str) -> str:
    if path.startswith("/api/v1/db/"):
        return "databases"
    if path == "/upload" or path.startswith("/u/"):
        return "uploader"
    if path == "/":
        return "idgen"
    return "control"


class FaultsAndLog:
    """ASGI middleware: latency, injected faults and the request log (method, path, status only)."""

    def __init__(self, app: Starlette, emulator: Emulator) -> None:
        self.app = app
        self.emu = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, emu = scope["path"], self.emu
        service = _service(path)
        if service == "control":
            client = (scope.get("client") or ("", 0))[0]
            if not _loopback(client):  # the test aids answer loopback only (check-password is an oracle)
                await JSONResponse({"ok": False, "error": "the control API answers loopback only"}, 403)(
                    scope, receive, send
                )
                return
            await self.app(scope, receive, send)
            return
        faults = emu.faults
        if faults.latency_ms or faults.jitter_ms:
            delay = faults.latency_ms + emu.random.uniform(-faults.jitter_ms, faults.jitter_ms)
            await asyncio.sleep(max(0.0, delay) / 1000)
        fault = None
        if emu.script:
            fault = emu.script.popleft()
        elif faults.fail_rate and faults.kinds and emu.random.random() < faults.fail_rate:
            fault = emu.random.choice(faults.kinds)
        entry: dict[str, Any] = {
            "seq": 0,
            "time": time.time(),
            "service": service,
            "method": scope["method"],
            "path": path,
            "status": None,
            "fault": fault,
            "account": None,
        }
        emu._seq += 1
        entry["seq"] = emu._seq
        emu.log.append(entry)
        scope.setdefault("state", {})

        async def logging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                entry["account"] = scope["state"].get("account")
            await send(message)

        if fault is None:
            await self.app(scope, receive, logging_send)
            return
        if fault == "drop-before":
            await self._drop(send)
        if fault == "drop-after":

            async def swallow(message: Message) -> None:
                if message["type"] == "http.response.start":
                    entry["status"] = message["status"]
                    entry["account"] = scope["state"].get("account")

            await self.app(scope, receive, swallow)
            await self._drop(send)
        status = int(fault)
        headers = {"Retry-After": f"{faults.retry_after:g}"} if status == 429 else None
        message = "Too many requests" if status == 429 else "Injected server error"
        body = {"ok": False, "error": message} if service != "idgen" else {"error": message}
        entry["status"] = status
        await _json(status, body, headers)(scope, receive, send)

    @staticmethod
    async def _drop(send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"256")],
            }
        )
        raise InjectedDrop()


def create_app(store: Store, config: EmulatorConfig | None = None) -> FaultsAndLog:
    """The whole local hep.gg as one ASGI callable; ``.emu`` reaches the Emulator."""
    emu = Emulator(store, config)
    routes = [
        Route("/api/v1/db/databases", emu.list_databases, methods=["GET"]),
        Route("/api/v1/db/databases", emu.create_database, methods=["POST"]),
        Route("/api/v1/db/databases/{id}", emu.reveal_database, methods=["GET"]),
        Route("/api/v1/db/databases/{id}/rotate", emu.rotate_database, methods=["POST"]),
        Route("/", emu.generate_id, methods=["POST"]),
        Route("/", emu.index, methods=["GET"]),
        Route("/upload", emu.upload, methods=["POST"]),
        Route("/u/{id}/{filename}", emu.download, methods=["GET"]),
        Route("/_emulator/requests", emu.get_requests, methods=["GET"]),
        Route("/_emulator/requests", emu.clear_requests, methods=["DELETE"]),
        Route("/_emulator/faults", emu.faults_endpoint, methods=["GET", "PUT"]),
        Route("/_emulator/check-password", emu.check_password, methods=["POST"]),
        Route("/_emulator/databases/{id}", emu.patch_database, methods=["PATCH"]),
    ]
    from starlette.exceptions import HTTPException

    async def not_routed(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return db_error(status, "Method not allowed" if status == 405 else "Not found")

    async def hung_up(request: Request, exc: Exception) -> Response:
        # the client left mid-request: nothing to answer and nothing to report (499, nginx's
        # "client closed request", is what the request log shows)
        return Response(status_code=499)

    starlette = Starlette(
        routes=routes, exception_handlers={404: not_routed, 405: not_routed, ClientDisconnect: hung_up}
    )
    return FaultsAndLog(starlette, emu)


def _loopback(host: str) -> bool:
    import ipaddress

    if host in ("", "testclient"):  # in-process transports (the embedded local hep.gg) have no address
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
