"""Serving the local hep.gg: uvicorn on loopback, in the foreground or in a background thread.

Owns: building a Store + app from a data directory, the foreground server used by
``hepinfra emulator`` (prints its address, stops on SIGINT/SIGTERM), and ``serve_in_thread``
for tests. Must not: print a key or a token.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepinfra.emulator.app import EmulatorConfig, FaultsAndLog, create_app
from hepinfra.emulator.seed import SeedFile, apply_seed
from hepinfra.emulator.store import Store

if TYPE_CHECKING:  # uvicorn is imported only to serve: the embedded emulator never needs it
    import uvicorn

DB_FILE = "hepgg.sqlite3"


class _QuietInjectedFaults(logging.Filter):
    """Injected connection drops are expected; keep them out of uvicorn's error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return type(exc).__name__ != "InjectedDrop"


def build_app(data_dir: Path | None, config: EmulatorConfig, seeds: list[SeedFile], *, slots: int) -> FaultsAndLog:
    store = Store(data_dir / DB_FILE if data_dir is not None else None)
    app = create_app(store, config)
    for seed in seeds:
        apply_seed(store, seed, default_slots=slots, create=app.emu.create_record)
    return app


def _config(app: Any, host: str, port: int, log_level: str) -> uvicorn.Config:
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(_QuietInjectedFaults())
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http="h11",
        lifespan="off",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
    )


def bound_address(server: uvicorn.Server) -> str:
    sock = server.servers[0].sockets[0]
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def serve_forever(app: Any, host: str, port: int, *, announce: Any) -> None:
    """Run until SIGINT/SIGTERM (uvicorn installs the handlers); ``announce(url)`` once listening."""
    import uvicorn

    config = _config(app, host, port, "warning")
    server = uvicorn.Server(config)

    original_startup = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets)
        if server.started:
            announce(bound_address(server))

    server.startup = startup  # type: ignore[method-assign]
    server.run()


@dataclass
class RunningEmulator:
    url: str
    app: FaultsAndLog
    server: uvicorn.Server
    thread: threading.Thread


@contextmanager
def serve_in_thread(app: FaultsAndLog, host: str = "127.0.0.1") -> Iterator[RunningEmulator]:
    """Serve ``app`` on a free loopback port in a daemon thread (as httpx's own tests do)."""
    import uvicorn

    server = uvicorn.Server(_config(app, host, 0, "error"))
    thread = threading.Thread(target=server.run, daemon=True, name="hepgg-emulator")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the emulator did not start")
        time.sleep(0.005)
    try:
        yield RunningEmulator(bound_address(server), app, server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
