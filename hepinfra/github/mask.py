"""``::add-mask::`` for the values ``output`` and ``run`` hand over in GitHub Actions.

Owns: which forms of a value are masked (``forms``), how a form is written as a workflow command
(``command``, ``escape_data``) and writing those commands around the redactor (``emit``).
Must not: print a value anywhere but in an ``::add-mask::`` line, or import anything heavy.

**Where the lines go.** The runner reads a step's stdout and stderr alike for workflow commands
(actions/runner ``src/Runner.Worker/Handlers/ScriptHandler.cs``: one ``OutputManager`` with the
``ActionCommandManager`` on ``OutputDataReceived`` and one on ``ErrorDataReceived``; a line holding
``::`` goes to ``TryProcessCommand``). The masks are written to stderr, so that a caller capturing
stdout (``$(hepinfra output ...)``, ``--format json``) gets exactly the values. They are written
and flushed before any value: the runner reads each stream on a thread of its own and, per batch,
handles the stderr lines it has read first (``Runner.Sdk/ProcessInvoker.cs``, ``ProcessOutput``),
so masks flushed first are in force before a value on stdout reaches the log unless the runner's
stderr reader lags behind its stdout reader (nothing a process can rule out; a value captured
with ``$(...)`` never reaches the log). They bypass the redactor (``RedactingStream``), which
would blank the very values they name; the runner never logs an ``add-mask`` line's data (it
echoes ``::add-mask::***`` at most).

**Escaping.** The runner unescapes a command's data with ``%0D`` -> CR, ``%0A`` -> LF, then
``%25`` -> ``%`` (``Runner.Common/ActionCommand.cs``, ``UnescapeData``), so ``%`` is written as
``%25`` first, then CR and LF: the mask the runner registers is exactly the form.

**The rule: which forms are masked.** For each value:

- the value itself, URL-encoded (``quote(v, safe='')`` and ``quote_plus``), JSON-escaped (the
  inside of ``json.dumps(v)``, with ``\\uXXXX`` escapes and without);
- for a value of several lines (split as the runner splits a log line: CR LF, CR or LF), each
  line and each line's encoded forms above: GitHub masks a log line at a time, so a form that
  spans lines could never match, and is left out (its lines stand for it);
- for every URL in the value with a password (a connection string, whole or inside a longer
  value), the URL itself, its password as written in the URL and percent-decoded, each with its
  encoded forms.

Forms are deduplicated, in that order. A value or line that is empty or only whitespace is
skipped with its encodings (the runner refuses a blank mask; its encodings give nothing away). A
value, line or URL shorter than ``MIN_LENGTH`` (4) characters is skipped with all its encodings,
since GitHub would blank every occurrence of, say, ``1`` or ``on`` in the whole log; **except** a
secret taken whole: a connection string's password, and the whole value when the caller marks it
secret (``output`` and ``run`` do for a name that says so: ``secret_name``). Those are masked
however short they are. The whole connection string is a value (or a line, or a URL inside one)
in its own right and is masked as such.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from typing import IO, Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

MIN_LENGTH = 4  # shorter forms blank ordinary text all over the log; a secret taken whole is exempt
PREFIX = "::add-mask::"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what ends a line for the runner (.NET ReadLine)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
_SECRET_NAME = re.compile(r"PASS|PWD|SECRET|TOKEN|KEY|PRIVATE|CREDENTIAL|AUTH", re.IGNORECASE)


def in_actions(environ: Mapping[str, str]) -> bool:
    """Whether this process runs in a GitHub Actions step (the runner sets ``GITHUB_ACTIONS=true``)."""
    return environ.get("GITHUB_ACTIONS") == "true"


def secret_name(name: str) -> bool:
    """Whether a value's name says it is a secret taken whole (``..._PASSWORD``, ``..._TOKEN``,
    ``..._SECRET``, ``..._KEY``, ...): its forms are masked however short."""
    return _SECRET_NAME.search(name) is not None


def _encodings(text: str) -> Iterator[str]:
    yield text
    yield quote(text, safe="")
    yield quote_plus(text, safe="")
    yield json.dumps(text)[1:-1]
    yield json.dumps(text, ensure_ascii=False)[1:-1]


def _connection_strings(value: str) -> Iterator[tuple[str, str]]:
    """(the URL, its password) for every URL in ``value`` that has a password, the URL without
    the quotes or punctuation a template may put right after it."""
    for match in _URL.finditer(value):
        url = match.group().rstrip("\"'`,;)]}>")
        try:
            password = urlsplit(url).password
        except ValueError:  # e.g. an unbalanced IPv6 bracket: not a URL after all
            continue
        if password:
            yield url, password


def forms(value: str, *, secret: bool = False) -> list[str]:
    """Every form of ``value`` to mask, deduplicated (the rule is in the module's docstring)."""
    found: dict[str, None] = {}

    def add(text: str, whole_secret: bool) -> None:
        if not text.strip() or (not whole_secret and len(text) < MIN_LENGTH):
            return  # with all its encodings: they say no more than the text does
        for form in _encodings(text):
            if form.strip() and "\r" not in form and "\n" not in form:
                found.setdefault(form)

    add(value, secret)
    lines = _LINE_BREAK.split(value)
    if len(lines) > 1:
        for line in lines:
            add(line, False)
    for url, password in _connection_strings(value):
        add(url, False)
        add(password, True)
        add(unquote(password), True)
    return list(found)


def all_forms(values: Mapping[str, str]) -> list[str]:
    """The forms of every value of ``values`` (name -> value), deduplicated across them."""
    found: dict[str, None] = {}
    for name, value in values.items():
        found.update(dict.fromkeys(forms(value, secret=secret_name(name))))
    return list(found)


def escape_data(form: str) -> str:
    """``form`` as a workflow command's data: the runner's ``UnescapeData`` gives it back exactly."""
    return form.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def command(form: str) -> str:
    """One ``::add-mask::`` line (with its newline)."""
    return f"{PREFIX}{escape_data(form)}\n"


def raw_stderr() -> Any:
    """The real stderr: the ``RedactingStream`` that ``hepinfra.cli.main`` puts around it would
    blank the values the mask lines must name."""
    from hepinfra.safety.redact import RedactingStream

    return sys.stderr.stream if isinstance(sys.stderr, RedactingStream) else sys.stderr


def emit(values: Mapping[str, str], stream: IO[str] | None = None) -> int:
    """Write an ``::add-mask::`` line for every form of every value to ``stream`` (the real
    stderr), flushed before the caller hands over any value; return how many were written."""
    masks = all_forms(values)
    if not masks:
        return 0
    sys.stdout.flush()  # anything hepinfra wrote before stays before the masks
    out = stream if stream is not None else raw_stderr()
    out.write("".join(command(form) for form in masks))
    out.flush()
    return len(masks)


__all__ = ["MIN_LENGTH", "all_forms", "command", "emit", "escape_data", "forms", "in_actions", "secret_name"]
