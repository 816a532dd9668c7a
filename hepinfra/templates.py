"""The sandboxed Jinja2 environment and the quoting filters every template may use.

Owns: one ImmutableSandboxedEnvironment with StrictUndefined (a typo is an error, not an
empty string), the filters ``dotenv``, ``shell``, ``url``, ``yaml``, ``json``, ``b64``, and
``dotenv_quote``, the one quoting rule for dotenv values: exact for each listed reader
(python-dotenv, docker compose's env_file parser, ``bash -c 'set -a; source FILE'``; all
three unless told otherwise), or a QuotingError that names the readers, never the value.
Must not: do I/O beyond reading a template file it is asked to load, or put a rendered
value into an error message.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import re
import shlex
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from hepinfra.template_fields import Fields, missing_field, missing_name, with_names

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment


_NAMES: ContextVar[tuple[str, ...]] = ContextVar("template_names", default=())  # the render's context


class QuotingError(ValueError):
    """A value cannot be quoted safely; ``str()`` says why without showing the value."""


class SafeTemplateError(ValueError):
    """Raised by hepinfra's own filters: the message is hepinfra's, never a value, so it may be shown."""


DOTENV_READERS: tuple[str, ...] = ("python-dotenv", "compose", "bash")

# python-dotenv (dotenv/variables.py) interpolates this in every value, single-quoted ones included.
_DOTENV_VARIABLE = re.compile(r"\$\{[^}:]*(?::-[^}]*)?\}")
# compose-go (template/template.go) interpolates `$$`, `$name` and `${...}` in unquoted and
# double-quoted values; its (?i) also folds k to U+212A and s to U+017F.
_COMPOSE_DOLLAR = re.compile("\\$[$_A-Za-z{\u017f\u212a]")
# bash expands `$` followed by these inside double quotes (a name, a digit, a special parameter,
# `(`, `[` or `{`); any non-ASCII follower counts too, as locales decide what a letter is.
_BASH_DOLLAR = re.compile(r"\$(?:[A-Za-z0-9_!#$(*?@\[{-]|[^\x00-\x7f])")
_WHITESPACE_THEN_HASH = re.compile(r"\s#")


@dataclass(frozen=True)
class _Facts:
    """What decides which quoting can carry a value (computed once per value)."""

    squote: bool
    backslash: bool
    ends_backslash: bool
    newline: bool
    cr: bool
    backtick: bool
    dollar: bool
    dotenv_interpolates: bool
    compose_interpolates: bool
    bash_expands: bool
    unquotable: bool  # can stand unquoted for python-dotenv and compose

    @classmethod
    def of(cls, value: str) -> _Facts:
        return cls(
            squote="'" in value,
            backslash="\\" in value,
            ends_backslash=value.endswith("\\"),
            newline="\n" in value,
            cr="\r" in value,
            backtick="`" in value,
            dollar="$" in value,
            dotenv_interpolates=bool(_DOTENV_VARIABLE.search(value)),
            compose_interpolates=bool(_COMPOSE_DOLLAR.search(value)),
            bash_expands=bool(_BASH_DOLLAR.search(value)),
            unquotable=not any(c in value for c in "\n\r")
            and (value == "" or (value[0] not in "'\"" and not value[0].isspace() and not value[-1].isspace()))
            and not _WHITESPACE_THEN_HASH.search(value),
        )


def _double(value: str, *, dollar: bool = False, backtick: bool = False, newlines: bool = False) -> str:
    """Double quotes escaping ``\\`` and ``"``; also ``$``, backtick, line feed and carriage return
    (as ``\\n`` and ``\\r``) when asked."""
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    if dollar:
        out = out.replace("$", "\\$")
    if backtick:
        out = out.replace("`", "\\`")
    if newlines:
        out = out.replace("\n", "\\n").replace("\r", "\\r")
    return f'"{out}"'


def _ansi_c(value: str) -> str:
    out = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"$'{out}'"


_Exact = Callable[[_Facts], bool]


@dataclass(frozen=True)
class _Style:
    """One way to write a value; ``fits``: python-dotenv's grammar still ends the entry right after it
    (so hepinfra finds it again, whatever follows); ``exact``: that reader reads back the value."""

    name: str
    encode: Callable[[str], str]
    fits: _Exact
    exact: dict[str, _Exact]


def _never(_: _Facts) -> bool:
    return False


def _always(_: _Facts) -> bool:
    return True


# In order of preference; the first two are what hepinfra always wrote for all three readers.
_STYLES = (
    _Style(
        "single quotes",
        lambda v: f"'{v}'",
        lambda f: not f.squote and not f.backslash,
        {"python-dotenv": lambda f: not f.dotenv_interpolates and not f.cr, "compose": _always, "bash": _always},
    ),
    _Style(
        'double quotes, escaping \\ and "',
        _double,
        lambda f: not f.ends_backslash,
        {
            "python-dotenv": lambda f: not f.dotenv_interpolates and not f.cr,
            "compose": lambda f: not f.compose_interpolates,
            "bash": lambda f: not f.bash_expands and not f.backtick,
        },
    ),
    _Style(
        "single quotes, escaping \\ and '",
        lambda v: "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'",
        lambda f: not f.ends_backslash,
        {
            "python-dotenv": lambda f: not f.dotenv_interpolates and not f.cr,
            "compose": lambda f: not f.backslash,
            "bash": lambda f: not f.squote and not f.backslash,
        },
    ),
    _Style(
        'double quotes, escaping \\, ", $ and `',
        lambda v: _double(v, dollar=True, backtick=True),
        lambda f: not f.ends_backslash,
        {
            "python-dotenv": lambda f: not f.dollar and not f.backtick and not f.cr,
            "compose": lambda f: not f.backtick,
            "bash": _always,
        },
    ),
    _Style(
        'double quotes, escaping \\, " and line breaks',
        lambda v: _double(v, newlines=True),
        lambda f: not f.ends_backslash,
        {
            "python-dotenv": lambda f: not f.dotenv_interpolates,
            "compose": lambda f: not f.compose_interpolates,
            "bash": lambda f: not f.newline and not f.cr and not f.bash_expands and not f.backtick,
        },
    ),
    _Style(
        'double quotes, escaping \\, ", $ and line breaks',
        lambda v: _double(v, dollar=True, newlines=True),
        lambda f: not f.ends_backslash,
        {
            "python-dotenv": lambda f: not f.dollar and not f.dotenv_interpolates,
            "compose": _always,
            "bash": lambda f: not f.newline and not f.cr and not f.backtick,
        },
    ),
    _Style(
        "unquoted",
        lambda v: v,
        lambda f: f.unquotable,
        {
            "python-dotenv": lambda f: not f.dotenv_interpolates,
            "compose": lambda f: not f.compose_interpolates,
            "bash": _never,
        },
    ),
    _Style("bash $'...' quotes", _ansi_c, _always, {"python-dotenv": _never, "compose": _never, "bash": _always}),
)


def dotenv_readers(readers: Iterable[str]) -> tuple[str, ...]:
    """``readers`` in canonical order, without repeats; ValueError for a name that is not a reader."""
    wanted = set(readers)
    unknown = wanted - set(DOTENV_READERS)
    if unknown:
        raise ValueError(f"unknown dotenv reader {sorted(unknown)[0]!r} (known: {', '.join(DOTENV_READERS)})")
    if not wanted:
        raise ValueError("at least one dotenv reader is needed")
    return tuple(r for r in DOTENV_READERS if r in wanted)


def _style_for(facts: _Facts, readers: tuple[str, ...]) -> _Style | None:
    for style in _STYLES:
        if style.fits(facts) and all(style.exact[r](facts) for r in readers):
            return style
    return None


def dotenv_quote(value: str, readers: Iterable[str] = DOTENV_READERS) -> str:
    """Quote ``value`` for a ``KEY=value`` dotenv entry so every listed reader reads back exactly ``value``.

    Readers: ``python-dotenv`` (``dotenv_values``, interpolation on), ``compose`` (docker compose's
    ``env_file``: compose-go's parser) and ``bash`` (``set -a; source FILE``). The first of these
    that is exact for every listed reader wins: single quotes; double quotes escaping ``\\`` and
    ``"``; single quotes escaping ``\\`` and ``'`` (python-dotenv, compose); double quotes also
    escaping ``$`` and backtick (compose, bash); double quotes with ``\\n``/``\\r`` escapes; the
    same escaping ``$``; unquoted; bash's ``$'...'``. Whatever is chosen, python-dotenv's grammar
    ends the entry where it ends (so the entry is found again). Else QuotingError, which names
    the readers that cannot share the value and never shows it.
    """
    wanted = dotenv_readers(readers)
    if "\0" in value:
        raise QuotingError("it contains a NUL character, which no dotenv reader can carry")
    facts = _Facts.of(value)
    style = _style_for(facts, wanted)
    if style is None:
        raise QuotingError(_why(facts, wanted))
    return style.encode(value)


def _why(facts: _Facts, readers: tuple[str, ...]) -> str:
    alone = [r for r in readers if _style_for(facts, (r,)) is None]
    if alone:
        return "; ".join(f"{r} cannot read it back exactly in any quoting: {_alone_reason(facts, r)}" for r in alone)
    for pair in itertools.combinations(readers, 2):
        if _style_for(facts, pair) is None:
            return f"{pair[0]} and {pair[1]} cannot share it: {_conflict(facts, 'both')}"
    return f"{', '.join(readers[:-1])} and {readers[-1]} cannot share it: {_conflict(facts, 'all three')}"


def _alone_reason(facts: _Facts, reader: str) -> str:
    if reader == "python-dotenv" and facts.dotenv_interpolates:
        return "it contains a '${...}' reference, which python-dotenv interpolates even inside single quotes"
    return (
        "it ends with a backslash, which quotes would take as escaping the closing quote, and it has "
        "characters that cannot stand unquoted"
    )


def _conflict(facts: _Facts, together: str) -> str:
    present = [
        name
        for name, there in (
            ("a single quote", facts.squote),
            ("a backslash", facts.backslash),
            ("a backtick", facts.backtick),
            ("a '$'", facts.dollar),
            ("a line break", facts.newline or facts.cr),
        )
        if there
    ]
    has = ", ".join(present[:-1]) + f" and {present[-1]}" if len(present) > 1 else "".join(present)
    return f"it has {has or 'characters'} and no single quoting reads that back exactly in {together}"


def _dotenv_filter(value: Any) -> str:
    try:
        return dotenv_quote(str(value))
    except QuotingError as exc:
        raise SafeTemplateError(f"dotenv filter: the value cannot be quoted: {exc}") from None


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


SIZE_LIMIT = 1_000_000  # no template needs a number, a repetition, a padding or a value beyond this
OUTPUT_LIMIT = 4 * 1024 * 1024  # characters one render may produce
RENDER_SECONDS = 10.0  # a dry-run (validate, plan, apply) may take this long per template
_WIDTH = re.compile(r"%[#0\- +]*(\d+)?(?:\.(\d+))?|\{[^{}]*?(\d{7,})[^{}]*\}")


def _too_big(what: str = "a number") -> Exception:
    from jinja2.exceptions import SecurityError

    return SecurityError(f"{what} above {SIZE_LIMIT:,} is refused in templates (it could exhaust memory)")


def _check_size(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > SIZE_LIMIT:
        raise _too_big()


def _check_result(value: Any) -> Any:
    if isinstance(value, str | list | tuple | dict) and len(value) > SIZE_LIMIT * 4:
        raise _too_big("a value")
    return value


def _check_format(spec: Any) -> None:
    """Widths and precisions in a ``%`` or ``str.format`` template ('%0999999999d' allocates a gigabyte)."""
    if isinstance(spec, str):
        for match in _WIDTH.finditer(spec):
            for group in match.groups():
                if group:
                    _check_size(int(group))


def _estimate(obj: Any, args: tuple[Any, ...]) -> None:
    """Refuse string methods whose result would be huge, before they allocate it."""
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
    if not isinstance(owner, str):
        return
    if name in ("format", "format_map"):
        _check_format(owner)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        grow = owner.count(args[0]) * max(0, len(args[1]) - len(args[0])) if args[0] else len(owner) * len(args[1])
        _check_size(len(owner) + grow)
    elif name == "join" and args and isinstance(args[0], list | tuple):
        _check_size(sum(len(str(x)) for x in args[0]) + len(owner) * max(0, len(args[0]) - 1))


def _bounded(func: Any) -> Any:
    """A filter whose numeric arguments and result are bounded (``center(10**9)``, ``indent`` of many
    lines by a wide margin)."""

    @functools.wraps(func)  # keeps Jinja2's pass_context/pass_environment marks
    def call(*args: Any, **kwargs: Any) -> Any:
        for value in (*args[1:], *kwargs.values()):
            _check_size(value)
        if func.__name__ == "do_replace" and len(args) >= 4:  # (eval_ctx, value, old, new[, count])
            _estimate(str(args[1]).replace, (str(args[2]), str(args[3])))
        if func.__name__ in ("do_indent", "do_wordwrap", "do_center") and args:
            widths = [v for v in (*args[1:], *kwargs.values()) if isinstance(v, int) and not isinstance(v, bool)]
            text = args[1] if not isinstance(args[0], str) and len(args) > 1 else args[0]
            if isinstance(text, str) and widths:
                _check_size((text.count("\n") + 1) * max(widths) + len(text))
        return _check_result(func(*args, **kwargs))

    return call


def render_template(template: Template, context: dict[str, Any]) -> str:
    """Render with the output bounded to ``OUTPUT_LIMIT`` characters (a loop cannot fill memory) and,
    in the main thread, the time to ``RENDER_SECONDS`` (a loop cannot hang validate or plan)."""
    import signal
    import threading

    from jinja2.exceptions import SecurityError

    def expired(signum: int, frame: Any) -> None:
        raise SecurityError(f"the template took longer than {RENDER_SECONDS:g} s to render")

    timed = threading.current_thread() is threading.main_thread() and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    previous = signal.signal(signal.SIGALRM, expired) if timed else None
    if timed:
        signal.setitimer(signal.ITIMER_REAL, RENDER_SECONDS)
    names = _NAMES.set(tuple(context))
    try:
        parts, total = [], 0
        for chunk in template.generate(with_names(context)):
            total += len(chunk)
            if total > OUTPUT_LIMIT:
                raise SecurityError(f"the template renders more than {OUTPUT_LIMIT:,} characters")
            parts.append(chunk)
        return "".join(parts)
    finally:
        _NAMES.reset(names)
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


@functools.cache
def environment() -> ImmutableSandboxedEnvironment:
    """The sandbox, bounded: ``*`` and ``**`` cannot build huge values, and numeric arguments of
    calls and filters are capped, so a dry-run (``validate``) cannot be made to exhaust memory."""
    from jinja2 import StrictUndefined, UndefinedError
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import missing

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%", "+"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and isinstance(right, int) and right > 64:
                _check_size(SIZE_LIMIT + 1)  # 2 ** 100000 is a number no template needs
            elif operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, str | list | tuple) and isinstance(times, int):
                        _check_size(len(seq) * times)
            elif operator == "%":
                _check_format(left)
            return _check_result(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            for value in (*args, *kwargs.values()):
                _check_size(value)
            _estimate(__obj, args)
            return _check_result(super().call(__context, __obj, *args, **kwargs))

        def wrap_str_format(self, value: Any) -> Any:
            wrapped = super().wrap_str_format(value)  # str.format / format_map, wrapped at attribute access
            if wrapped is None:
                return None
            _check_format(value.__self__)
            return wrapped

    class FieldMissing(UndefinedError):
        """A field a variable of fields does not have: the message is hepinfra's (names only)."""

        names_a_field = True

    class Missing(StrictUndefined):
        """StrictUndefined that names the variable whose field is missing and the closest field."""

        __slots__ = ()

        def __init__(
            self, hint: str | None = None, obj: Any = missing, name: str | None = None, exc: Any = UndefinedError
        ) -> None:
            super().__init__(hint, obj, name, FieldMissing if isinstance(obj, Fields) and hint is None else exc)

        @property
        def _undefined_message(self) -> str:
            obj = self._undefined_obj
            if isinstance(obj, Fields) and not self._undefined_hint:
                return missing_field(obj._variable, self._undefined_name, obj)
            if obj is missing and not self._undefined_hint and isinstance(self._undefined_name, str):
                return missing_name(self._undefined_name, _NAMES.get())  # the closest of the context's names
            return str(super()._undefined_message)

    env = Bounded(undefined=Missing, autoescape=False, keep_trailing_newline=True, auto_reload=False)
    env.filters.update(FILTERS)
    env.filters = {name: _bounded(f) for name, f in env.filters.items()}
    return env


@functools.lru_cache(maxsize=4096)
def compile_string(source: str) -> Template:
    """Compile a template string (cached: 1,000 databases share a handful of sources)."""
    return environment().from_string(source)


def render_string(source: str, context: dict[str, Any]) -> str:
    if "{" not in source:  # fast path: most names and paths are plain
        return source
    return render_template(compile_string(source), context)


def template_error_message(exc: Exception, file: str | None = None) -> str:
    """A one-line description of a Jinja2 error that never includes a rendered value; for a template
    ``file``, prefixed with the file and the template's line (``app.json.j2:3: ...``)."""
    from jinja2 import TemplateSyntaxError, UndefinedError

    if isinstance(exc, TemplateSyntaxError):
        text = f"template syntax error: {exc.message}"
    elif getattr(exc, "names_a_field", False):
        text = str(getattr(exc, "message", ""))  # db has no field 'x' (did you mean 'y'?)
    elif isinstance(exc, UndefinedError):
        text = f"template uses an undefined value: {exc.message}"
    elif isinstance(exc, SafeTemplateError):  # hepinfra's own filters: their message is never a value
        text = f"template failed: {exc}"
    else:
        text = f"template failed: {getattr(exc, 'message', None) or type(exc).__name__}"
    if file is None:
        return text
    line = _template_line(exc)
    return f"{file}:{line}: {text}" if line else f"{file}: {text}"


# --- placeholders and errors that never quote a secret -------------------------------------------

PORTS = {"postgres": 5432, "mariadb": 3306, "mongo": 27017}
SCHEMES = {"postgres": "postgresql", "mariadb": "mysql", "mongo": "mongodb"}


def placeholder_db(engine: str, name: str = "placeholder") -> dict[str, Any]:
    """A ``db`` variable shaped exactly like a real one of ``engine`` (types included: ``port``
    is an int), holding no secret: for dry-runs and for describing a failed render."""
    user, password, db_name, host = "dum_placeholder", "placeholder-password", "um_placeholder", "db.example.invalid"
    port = PORTS.get(engine, 3306)
    url = f"{SCHEMES.get(engine, 'mysql')}://{user}:{password}@{host}:{port}/{db_name}"
    if engine == "mongo":
        url += "?authSource=admin"
    return {
        "id": "01PLACEHOLDER",
        "name": name,
        "engine": engine,
        "db_name": db_name,
        "db_user": user,
        "user": user,
        "password": password,
        "connection_string": url,
        "host": host,
        "port": port,
    }


def placeholder_id(id_type: str) -> dict[str, Any]:
    """An ``id`` variable shaped like a real one (``private`` only for a keypair), holding no secret."""
    value = {"value": "placeholder-id", "type": id_type}
    if id_type == "keypair":
        value["private"] = "placeholder-private-id"
    return value


def placeholder_upload(file: str, digest: str = "0" * 64, size: int = 0) -> dict[str, Any]:
    """An ``upload`` variable shaped like a real one."""
    return {
        "url": "https://upload.example.invalid/u/placeholder/file",
        "file": file,
        "sha256": digest,
        "size": size,
    }


def _template_line(exc: BaseException) -> int | None:
    """The line of the template where a render failed (Jinja2 rewrites tracebacks to template lines)."""
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line if isinstance(line, int) else None


def render_error(exc: Exception, source: str, context: dict[str, Any], file: str | None = None) -> str:
    """Describe a render that failed with real values in scope, without ever quoting one.

    The message is taken from rendering the same template with placeholders in place of every
    secret-bearing variable: a typo fails the same way and is shown in full. A failure that
    only real values cause is described by its type and template line, message withheld.
    Either way the result passes the redactor. ``file``: the template file's name, shown with the line.
    """
    from hepinfra.safety.redact import redact

    if isinstance(exc, SafeTemplateError):
        return redact(template_error_message(exc, file))
    fake = {**context}
    if isinstance(context.get("db"), dict):
        fake["db"] = placeholder_db(str(context["db"].get("engine", "mariadb")), str(context["db"].get("name", "")))
    if isinstance(context.get("id"), dict):
        fake["id"] = placeholder_id(str(context["id"].get("type", "")))
    try:
        render_template(compile_string(source), fake)
    except Exception as fake_exc:
        return redact(template_error_message(fake_exc, file))
    line = _template_line(exc)
    if file is not None:  # app.json.j2:3: template failed with the real values
        where, at = (f"{file}:{line}: " if line else f"{file}: "), ""
    else:
        where, at = "", (f" at line {line}" if line else "")
    return (
        f"{where}template failed{at} with the real values: {type(exc).__name__} "
        "(its message is withheld because it may quote a secret)"
    )
