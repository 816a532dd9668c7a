"""The per-run secret registry and the one redactor every outgoing message passes.

Owns: remembering every secret value the process has seen (API keys and tokens read from the
environment, passwords and connection strings hep.gg returned, ID Generator values) with the
encoded forms they take in URLs, JSON and shells; replacing any of them in a text with
``[redacted]``; and the hooks that apply this at the edges: a logging filter, stream wrappers
for stdout/stderr, event payloads, and tracebacks.
Must not: store or print a secret, or import anything heavy (it is on the start-up path).

This is the second line of defence: messages are built without values in the first place.
The redactor catches what slips through (a library's exception text, a template error that
quotes a value, a debug traceback).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import quote, quote_plus

MASK = "[redacted]"
MIN_LENGTH = 6  # shorter values would mask ordinary words; no credential hep.gg issues is this short

_lock = threading.Lock()
_values: set[str] = set()
# first MIN_LENGTH characters -> the registered forms starting with them, longest first: one dict
# look-up per position of a text, however many secrets a run has seen (a 1,000-database refresh)
_index: dict[str, tuple[str, ...]] = {}


def _forms(value: str) -> Iterable[str]:
    """The value and the encodings it commonly appears in (URL userinfo, JSON strings, shell quoting)."""
    yield value
    yield quote(value, safe="")
    yield quote_plus(value, safe="")
    yield json.dumps(value)[1:-1]
    yield value.replace("'", "'\\''")


def register(*values: str | None) -> None:
    """Remember secret values for this run; every later ``redact`` masks them."""
    fresh: set[str] = set()
    for value in values:
        if value:
            fresh.update(form for form in _forms(value) if len(form) >= MIN_LENGTH)
    with _lock:
        for form in fresh - _values:
            _values.add(form)
            head = form[:MIN_LENGTH]
            _index[head] = tuple(sorted((*_index.get(head, ()), form), key=len, reverse=True))


def known() -> int:
    """How many secret forms are registered (for tests and diagnostics; never the values)."""
    return len(_values)


def redact(text: str) -> str:
    """``text`` with every registered secret (in any registered form) replaced by ``[redacted]``."""
    index = _index
    if not index or len(text) < MIN_LENGTH:
        return text
    parts: list[str] = []
    last = i = 0
    end = len(text) - MIN_LENGTH
    while i <= end:
        candidates = index.get(text[i : i + MIN_LENGTH])
        if candidates:
            for form in candidates:  # longest first: a connection string goes whole, not around its password
                if text.startswith(form, i):
                    parts += (text[last:i], MASK)
                    i = last = i + len(form)
                    break
            else:
                i += 1
        else:
            i += 1
    if not parts:
        return text
    parts.append(text[last:])
    return "".join(parts)


def redact_data(value: Any) -> Any:
    """Redact every string inside a JSON-like value (events, documents)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


def format_exception(exc: BaseException) -> str:
    """A traceback (for HEPINFRA_DEBUG) that passed the redactor."""
    import traceback

    return redact("".join(traceback.format_exception(exc)))


class RedactFilter(logging.Filter):
    """Rewrites each record's message through the redactor (attach to handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class RedactingStream:
    """A text stream wrapper: every ``write`` passes the redactor before reaching ``stream``.

    Writers in hepinfra write whole lines, so a secret is never split across two writes.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)
