"""What a failed child process (an exec output's command or ``read:``, an ``after_rotate`` hook)
said, in one line a user can act on.

Owns: ``last_line``: the last meaningful line of its stderr or output (blank lines and the frames
of a traceback are skipped: Python's ``File "...", line N`` and code lines, ``Traceback (most
recent call last):``, the chained-exception banners, Node's ``at ...`` frames), so a Python
recipe's failure reads ``KeyError: 'VAULT_ADDR'``, never a bare ``Traceback``; when anything it
said mentions a value of the write in any form (plain, base64, hex, URL- or JSON-escaped; 8
characters of it in a row, or all of a shorter one) or the line holds a long opaque token, nothing is shown;
what is shown passes the redactor and is cut at 200 characters.
Must not: show a secret, or more than one line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

HIDDEN = "(its message is not shown: it mentions a value of this write, or something encoded)"
NOTHING = "(nothing on stderr)"
ONLY_FRAMES = "(only a traceback's frames)"

_OPAQUE = re.compile(r"[A-Za-z0-9+/=_-]{24,}")  # a long opaque token: a value, encoded some way?
_FRAME = re.compile(
    r"Traceback \(most recent call last\):"
    r"|File \".*\", line \d+.*"
    r"|\^[\^~ ]*"
    r"|During handling of the above exception, another exception occurred:"
    r"|The above exception was the direct cause of the following exception:"
    r"|at \S.*"  # Node, Java: "    at fn (file.js:1:2)"
)


def _forms(value: str) -> list[str]:
    import base64
    from urllib.parse import quote

    raw = value.encode()
    return [value, base64.b64encode(raw).decode(), raw.hex(), quote(value, safe=""), json.dumps(value)[1:-1]]


def _meaningful(text: str) -> tuple[str, bool]:
    """The last line that is neither blank nor part of a traceback's frames; and whether any line was."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    traceback = any(ln.strip().startswith("Traceback (most recent call last)") for ln in lines)
    for ln in reversed(lines):
        stripped = ln.strip()
        if _FRAME.fullmatch(stripped):
            continue
        if traceback and ln[:1].isspace():  # a frame's source line, indented under its File line
            continue
        return stripped, True
    return "", bool(lines)


def last_line(err: bytes, values: Iterable[str] = (), *, nothing: str = NOTHING) -> str:
    """One line for a user: the last meaningful line of ``err``, hidden when it mentions one of
    ``values`` (or anything encoded), masked through the redactor; ``nothing`` when it is empty."""
    from hepinfra.safety.paths import shown
    from hepinfra.safety.redact import redact

    text = err.decode("utf-8", errors="replace")
    line, any_line = _meaningful(text)
    if not line:
        return ONLY_FRAMES if any_line else nothing
    if _OPAQUE.search(line):  # base64, base32 or hex of a value or of the whole payload, at any alignment
        return HIDDEN
    for value in values:  # anywhere in what it said: a child that echoed a value says nothing more here
        for form in _forms(value):
            if len(form) >= 8 and any(form[i : i + 8] in text for i in range(len(form) - 7)):
                return HIDDEN
            if 0 < len(form) < 8 and form in line:  # a short value (a 4-letter id) appears whole or not at all
                return HIDDEN
    return shown(redact(line), 200)


def json_values(out: bytes) -> list[str]:
    """The string values of a JSON object a child printed (a ``read:`` command's output), to hide
    from its stderr; [] when it printed none."""
    try:
        found = json.loads(out) if out.strip() else {}
    except (ValueError, RecursionError):
        return []
    if not isinstance(found, dict):
        return []
    return [v if isinstance(v, str) else json.dumps(v) for v in found.values()]
