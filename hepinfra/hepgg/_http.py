"""The HTTP core shared by the three clients: pooling, timeouts, retries, error mapping.

Owns: one ``httpx.AsyncClient`` per service, the retry policy (exponential backoff with
full jitter, ``Retry-After`` honoured), and the rule that decides what may be retried.
Must not: retry a non-idempotent call whose request may have reached the server; such a
call raises ``AmbiguousResultError`` and the resource client resolves it (List / Reveal).
Must not: log or raise anything holding a header or a body.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from hepinfra import __version__
from hepinfra import errors as E
from hepinfra.hepgg._errors import SERVICE_NAMES, error_from_response

log = logging.getLogger("hepinfra.hepgg")

# Test aid for crash tests (docs/development.md): HEPINFRA_TEST_KILL_AT=before:N or after:N sends
# SIGKILL to this process right before the N-th request leaves, or right after its answer arrives.
_KILL_AT = os.environ.get("HEPINFRA_TEST_KILL_AT", "")
_calls = 0


def _maybe_kill(moment: str, number: int) -> None:
    if _KILL_AT and f"{moment}:{number}" == _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


# Statuses that say "try again": safe to retry for idempotent calls. 429 is safe for every
# call (the server refused it); 5xx on a mutation is ambiguous (it may have committed).
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# Exceptions raised before any byte of the request left: always safe to retry.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    max_retry_after: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based): full jitter, or Retry-After."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


_ERRNO_CAUSES = {
    errno.ECONNREFUSED: "connection refused",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "no route to host",
    errno.ECONNRESET: "connection reset by the server",
    errno.ETIMEDOUT: "timed out",
}
_TEXT_CAUSES = (
    ("connection refused", "connection refused"),
    ("name or service not known", "host name not found (DNS)"),
    ("temporary failure in name resolution", "host name not found (DNS)"),
    ("certificate", "TLS certificate not trusted"),
)


def transport_cause(exc: Exception) -> str:
    """What went wrong on the wire, in words ("connection refused", "timed out"), never a payload."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({kind})"
    seen: BaseException | None = exc
    for _ in range(8):  # the OS error is a few causes down (httpx <- httpcore <- anyio <- socket)
        if seen is None:
            break
        if isinstance(seen, socket.gaierror):
            return f"host name not found (DNS) ({kind})"
        if isinstance(seen, OSError) and seen.errno in _ERRNO_CAUSES:
            return f"{_ERRNO_CAUSES[seen.errno]} ({kind})"
        for needle, cause in _TEXT_CAUSES:
            if needle in str(seen).lower():
                return f"{cause} ({kind})"
        seen = seen.__cause__ or seen.__context__
    return kind


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime  # HTTP-date form; rare, so imported lazily

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class HttpCore:
    """One service's connection pool plus the call/retry loop."""

    def __init__(
        self,
        service: str,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 32,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.service = service
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._deadline = 4 * timeout  # one whole request and its answer, however slowly it trickles in
        self._client = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            headers={"User-Agent": f"hepinfra/{__version__}", **(headers or {})},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
            # plain http (the local emulator) has no certificate to check: skip building a TLS
            # context (~150 ms of CA loading); https always verifies
            verify=not base_url.startswith("http://"),
        )

        url = httpx.URL(base_url)
        self._base = str(url.copy_with(userinfo=None)).rstrip("/")  # shown in messages: never credentials

    async def aclose(self) -> None:
        await self._client.aclose()

    def _transport_error(self, what: str, exc: Exception, *, ambiguous: bool) -> E.TransportError:
        cls = E.AmbiguousResultError if ambiguous else E.TransportError
        name = SERVICE_NAMES.get(self.service, self.service)
        return cls(f"hep.gg {name}: {what} failed: {transport_cause(exc)}", service=self.service)

    async def call(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> httpx.Response:
        """Send one logical call, retrying what is safe to retry; return a 2xx response or raise."""
        what = f"{method} {self._base}{path}"
        policy = self.retry
        for attempt in range(policy.attempts):
            last = attempt == policy.attempts - 1
            started = time.perf_counter()
            global _calls
            _calls += 1
            number = _calls
            _maybe_kill("before", number)
            try:
                try:  # a per-read timeout alone lets a server that drips one byte at a time hold a run forever
                    response = await asyncio.wait_for(self._client.request(method, path, **kwargs), self._deadline)
                except TimeoutError:
                    raise httpx.ReadTimeout(f"no complete answer within {self._deadline:g} s") from None
                _maybe_kill("after", number)
            except NOT_SENT as exc:
                log.debug("%s: %s (attempt %d), not sent", what, type(exc).__name__, attempt + 1)
                if last:
                    raise self._transport_error(what, exc, ambiguous=False) from None
                await self._sleep(policy.delay(attempt))
                continue
            except httpx.TransportError as exc:  # sent, answer lost: timeout, dropped connection
                log.debug("%s: %s (attempt %d)", what, type(exc).__name__, attempt + 1)
                if not idempotent:
                    raise self._transport_error(what, exc, ambiguous=True) from None
                if last:
                    raise self._transport_error(what, exc, ambiguous=False) from None
                await self._sleep(policy.delay(attempt))
                continue
            elapsed = (time.perf_counter() - started) * 1000
            log.debug("%s -> %d in %.0f ms (attempt %d)", what, response.status_code, elapsed, attempt + 1)
            status = response.status_code
            if status < 400:
                return response
            if status >= 500 and not idempotent:  # it may have committed before failing
                error = error_from_response(self.service, what, response)
                raise E.AmbiguousResultError(
                    error.message,
                    service=self.service,
                    status=status,
                    code=error.code,
                    server_message=error.server_message,
                )
            if status in RETRYABLE_STATUS and not last:
                await self._sleep(policy.delay(attempt, parse_retry_after(response.headers.get("Retry-After"))))
                continue
            raise error_from_response(self.service, what, response)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    @staticmethod
    def json(response: httpx.Response, service: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise E.ProtocolError(
                f"hep.gg {SERVICE_NAMES.get(service, service)}: response is not JSON (status {response.status_code})",
                service=service,
                status=response.status_code,
            ) from None
