"""Blocking work that must neither hold a worker of the event loop's default executor (state writes
and outputs share those) nor keep the process from exiting on a signal: a daemon thread of its own.

Owns: ``in_daemon_thread``. Used for after_rotate hooks (up to an hour) and verify's logins (a
server that drips one byte at a time defeats a driver's per-read timeouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_daemon_thread(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` in a daemon thread of its own; the awaiting task gets its result or error. Wrap
    it in ``asyncio.wait_for`` to stop waiting (the thread is then abandoned, never joined)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            outcome: tuple[T | None, BaseException | None] = (call(*args), None)
        except BaseException as exc:  # handed to the awaiting task
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the run ended meanwhile (interrupted): nobody waits
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="hepinfra-hook", daemon=True).start()
    return await future
