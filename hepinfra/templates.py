"""The sandboxed Jinja2 environment and the quoting filters every template may use.

Owns: one ImmutableSandboxedEnvironment with StrictUndefined (a typo is an error, not an
empty string), the filters ``dotenv``, ``shell``, ``url``, ``yaml``, ``json``, ``b64``, and
``dotenv_quote``, the one quoting rule for values that python-dotenv, docker compose's
env_file parser and ``bash -c 'set -a; source FILE'`` all read back exactly.
Must not: do I/O beyond reading a template file it is asked to load, or put a rendered
value into an error message.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import shlex
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment


class QuotingError(ValueError):
    """A value cannot be quoted safely; ``str()`` says why without showing the value."""


# `$` followed by one of these expands in bash double quotes (or interpolates in compose).
_EXPANDING_DOLLAR = re.compile(r"\$[A-Za-z0-9_{(@*#?!$-]")


def dotenv_quote(value: str) -> str:
    """Quote ``value`` for a dotenv line so python-dotenv, docker compose and bash agree.

    Single quotes when the value has no ``'`` or ``\\``; else double quotes escaping ``\\``
    and ``"`` when it has no backtick, no expanding ``$``, and does not end in ``"`` or ``\\``;
    else QuotingError.
    """
    if any(c in value for c in "\n\r\0"):
        raise QuotingError("it contains a line break or NUL, which dotenv readers disagree on")
    if "${" in value:
        raise QuotingError("it contains '${', which python-dotenv interpolates even inside quotes")
    if "'" not in value and "\\" not in value:
        return f"'{value}'"
    if value.endswith(('"', "\\")):
        # compose-go ends a double-quoted value at the first quote not after a backslash, then trims
        # every quote at both ends: a trailing quote is lost and a trailing backslash never ends
        raise QuotingError(
            "it needs double quotes but ends with a double quote or a backslash, which docker compose's "
            "env_file parser misreads"
        )
    if "`" not in value and not _EXPANDING_DOLLAR.search(value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise QuotingError(
        "it contains both a quote or backslash and a backtick or '$' expansion, which no single "
        "quoting reads back the same in python-dotenv, docker compose and bash"
    )


def _dotenv_filter(value: Any) -> str:
    try:
        return dotenv_quote(str(value))
    except QuotingError as exc:
        from jinja2 import TemplateRuntimeError

        raise TemplateRuntimeError(f"dotenv filter: the value cannot be quoted: {exc}") from None


def _yaml_filter(value: Any) -> str:
    # A JSON string is a valid YAML double-quoted scalar; ASCII-only so no reader mis-decodes it.
    return json.dumps(value if isinstance(value, int | float | bool) or value is None else str(value))


FILTERS = {
    "dotenv": _dotenv_filter,
    "shell": lambda v: shlex.quote(str(v)),
    "url": lambda v: quote(str(v), safe=""),
    "yaml": _yaml_filter,
    "json": lambda v: json.dumps(v),
    "b64": lambda v: base64.b64encode(v if isinstance(v, bytes) else str(v).encode()).decode(),
}


@functools.cache
def environment() -> ImmutableSandboxedEnvironment:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, auto_reload=False
    )
    env.filters.update(FILTERS)
    return env


@functools.lru_cache(maxsize=4096)
def compile_string(source: str) -> Template:
    """Compile a template string (cached: 1,000 databases share a handful of sources)."""
    return environment().from_string(source)


def render_string(source: str, context: dict[str, Any]) -> str:
    if "{" not in source:  # fast path: most names and paths are plain
        return source
    return compile_string(source).render(context)


def template_error_message(exc: Exception) -> str:
    """A one-line description of a Jinja2 error that never includes a rendered value."""
    from jinja2 import TemplateSyntaxError, UndefinedError

    if isinstance(exc, TemplateSyntaxError):
        return f"template syntax error: {exc.message}"
    if isinstance(exc, UndefinedError):
        return f"template uses an undefined value: {exc.message}"
    text = getattr(exc, "message", None) or type(exc).__name__
    return f"template failed: {text}"
