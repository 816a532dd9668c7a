"""The dotenv sink: manages only its own keys inside a file, keeping every other entry byte for byte.

Owns: reading a dotenv file into entries the way python-dotenv's parser does (``parse_entries``:
multi-line quoted values, comments, ``export``, lines it cannot parse), replacing, appending and
removing hepinfra's entries (an entry keeps its ``export`` prefix and its line ending; new ones
take the file's dominant line ending), quoting values with ``templates.dotenv_quote`` for the
output's readers, and refusing a value that cannot be quoted exactly or a write that would change
how another entry reads; and the ``dotenv:`` output's schema and resolution (``DotenvOutput``).
Must not: show a value in an error.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.fsutil import atomic_write
from hepinfra.outputs.base import existing_mode
from hepinfra.spec import EnvVarName, FileOutputBase
from hepinfra.templates import QuotingError, dotenv_quote, render_error, render_string
from hepinfra.values import DOTENV_READERS, DotenvReader, ObservedOutput, OutputTarget

if TYPE_CHECKING:
    from hepinfra.resolution import Resolution

# python-dotenv's grammar (dotenv/parser.py), unchanged, as of 1.0 and 1.1.
_MULTILINE_WHITESPACE = re.compile(r"\s*", re.MULTILINE)
_WHITESPACE = re.compile(r"[^\S\r\n]*")
_EXPORT = re.compile(r"(?:export[^\S\r\n]+)?")
_SINGLE_QUOTED_KEY = re.compile(r"'([^']+)'")
_UNQUOTED_KEY = re.compile(r"([^=\#\s]+)")
_EQUAL_SIGN = re.compile(r"(=[^\S\r\n]*)")
_SINGLE_QUOTED_VALUE = re.compile(r"'((?:\\'|[^'])*)'")
_DOUBLE_QUOTED_VALUE = re.compile(r'"((?:\\"|[^"])*)"')
_UNQUOTED_VALUE = re.compile(r"([^\r\n]*)")
_COMMENT = re.compile(r"(?:[^\S\r\n]*#[^\r\n]*)?")
_END_OF_LINE = re.compile(r"[^\S\r\n]*(?:\r\n|\n|\r|$)")
_REST_OF_LINE = re.compile(r"[^\r\n]*(?:\r|\n|\r\n)?")
_DOUBLE_QUOTE_ESCAPES = re.compile(r"\\[\\'\"abfnrtv]")
# python-dotenv 1.2 reads a quoted value differently: a backslash escapes any character (and so can
# never end the value). Where the two grammars disagree, the entry is read as one python-dotenv cannot
# parse: hepinfra never relies on one version's reading of it
_SINGLE_QUOTED_VALUE_12 = re.compile(r"'((?:\\.|[^'\\])*)'", re.DOTALL)
_DOUBLE_QUOTED_VALUE_12 = re.compile(r'"((?:\\.|[^"\\])*)"', re.DOTALL)
_SINGLE_QUOTE_ESCAPES = re.compile(r"\\[\\']")
# what python-dotenv's codecs "unicode-escape" turns each of those escapes into
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_LINE_BREAK = re.compile(r"\r\n|\n|\r")
_BOM = "\ufeff"


class _Unparsable(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    """One binding as python-dotenv's parser delimits it; ``text`` is its exact source.

    ``text[:start]`` is the whitespace before it (blank lines, indentation), ``text[start:key_at]``
    its ``export`` prefix; ``eol`` the line ending it ends with ("" at the end of the file).
    ``value`` is decoded as python-dotenv decodes it (no interpolation), ``raw`` its source text
    (quotes and a trailing comment included; what ``observe`` digests); both None without ``=``.
    """

    text: str
    offset: int  # where the entry starts in the file's text
    start: int
    key_at: int
    key: str | None
    value: str | None
    raw: str | None
    eol: str
    error: bool

    @property
    def core(self) -> str:
        """The entry without its leading whitespace and line ending."""
        return self.text[self.start : len(self.text) - len(self.eol)]

    def line(self, text: str) -> int:
        return len(_LINE_BREAK.findall(text, 0, self.offset + self.start)) + 1


def parse_entries(text: str) -> list[Entry]:
    """Split ``text`` (no BOM, line endings untranslated) into entries exactly where python-dotenv does."""
    entries: list[Entry] = []
    pos = 0
    while pos < len(text):
        entry = _parse_entry(text, pos)
        assert entry.text, "the parser always advances"
        entries.append(entry)
        pos += len(entry.text)
    return entries


def _match(regex: re.Pattern[str], text: str, pos: int) -> re.Match[str]:
    match = regex.match(text, pos)
    if match is None:
        raise _Unparsable
    return match


def _parse_entry(text: str, begin: int) -> Entry:
    pos = _match(_MULTILINE_WHITESPACE, text, begin).end()
    start = pos - begin
    if pos >= len(text):
        return Entry(text[begin:], begin, start, start, None, None, None, "", False)
    key_at = start
    try:
        pos = _match(_EXPORT, text, pos).end()
        key_at = pos - begin
        char = text[pos : pos + 1]
        key: str | None = None
        if char == "'":
            match = _match(_SINGLE_QUOTED_KEY, text, pos)
            key, pos = match.group(1), match.end()
        elif char != "#":
            match = _match(_UNQUOTED_KEY, text, pos)
            key, pos = match.group(1), match.end()
        pos = _match(_WHITESPACE, text, pos).end()
        value = raw = None
        if text.startswith("=", pos):
            pos = _match(_EQUAL_SIGN, text, pos).end()
            raw_at = pos
            value, pos = _parse_value(text, pos)
            pos = _match(_COMMENT, text, pos).end()
            raw = text[raw_at:pos].rstrip()
        else:
            pos = _match(_COMMENT, text, pos).end()
        end = _match(_END_OF_LINE, text, pos)
        eol = end.group()[len(end.group().rstrip("\r\n")) :]
        return Entry(text[begin : end.end()], begin, start, key_at, key, value, raw, eol, False)
    except _Unparsable:
        rest = _REST_OF_LINE.match(text, pos)
        assert rest is not None  # it matches the empty string
        stop = rest.end()
        body = text[begin:stop]
        return Entry(body, begin, start, key_at, None, None, None, body[len(body.rstrip("\r\n")) :], True)


def _parse_value(text: str, pos: int) -> tuple[str, int]:
    char = text[pos : pos + 1]
    if char == "'":
        match = _quoted(_SINGLE_QUOTED_VALUE, _SINGLE_QUOTED_VALUE_12, text, pos)
        return _decode(_SINGLE_QUOTE_ESCAPES, match.group(1)), match.end()
    if char == '"':
        match = _quoted(_DOUBLE_QUOTED_VALUE, _DOUBLE_QUOTED_VALUE_12, text, pos)
        return _decode(_DOUBLE_QUOTE_ESCAPES, match.group(1)), match.end()
    if char in ("", "\n", "\r"):
        return "", pos
    match = _match(_UNQUOTED_VALUE, text, pos)
    return re.sub(r"\s+#.*", "", match.group(1)).rstrip(), match.end()


def _quoted(older: re.Pattern[str], newer: re.Pattern[str], text: str, pos: int) -> re.Match[str]:
    """A quoted value both python-dotenv grammars read as the same span, or _Unparsable."""
    match, other = _match(older, text, pos), newer.match(text, pos)
    if other is None or other.end() != match.end():
        raise _Unparsable
    return match


def _decode(escapes: re.Pattern[str], value: str) -> str:
    return escapes.sub(lambda m: _ESCAPES[m.group()[1]], value)


# --- reading and digesting -----------------------------------------------------------------------------


def _read_text(file: Path) -> str | None:
    try:
        return file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else "not UTF-8"
        raise OutputError(f"{file}: cannot read dotenv file: {reason}") from None


def _managed_raw(entries: list[Entry], keys: tuple[str, ...] | None) -> dict[str, str]:
    """Each managed key's value source text (``keys`` None: every key's), as python-dotenv sees the
    file (the last binding wins)."""
    found: dict[str, str] = {}
    wanted = set(keys) if keys is not None else None
    for entry in entries:
        if entry.key is not None and (wanted is None or entry.key in wanted) and entry.raw is not None:
            found[entry.key] = entry.raw
    return found


@functools.lru_cache(maxsize=8)
def _bindings(text: str) -> dict[str, str]:
    """Every key's value source text in ``text``, as python-dotenv sees it (the last binding wins).
    Cached by content: the outputs that share one file (a thousand databases' keys in one ``.env``)
    parse it once per plan, not once each. Callers must not change the dict."""
    return _managed_raw(parse_entries(text), None)


def _digest(values: dict[str, str], keys: tuple[str, ...], digest: Digester) -> str:
    return digest("".join(f"{k}={values.get(k, '<absent>')}\n" for k in sorted(keys)))


def _dominant_eol(text: str) -> str:
    """The line ending most lines of ``text`` use ("\\n" on a tie or for an empty file)."""
    crlf = text.count("\r\n")
    counts = {"\n": text.count("\n") - crlf, "\r\n": crlf, "\r": text.count("\r") - crlf}
    return max(counts, key=lambda eol: counts[eol])


def _kept_whitespace(entry: Entry) -> str:
    """What stays of a removed entry: the blank lines before it, not the indentation of its own line."""
    lead = entry.text[: entry.start]
    return lead[: max(lead.rfind("\n"), lead.rfind("\r")) + 1]


class DotenvSink:
    kind = "dotenv"

    def observe(self, file: Path, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        try:
            text = _read_text(file)
        except OutputError as exc:
            return ObservedOutput(exists=True, problem=f"unreadable ({exc.message.split(': ', 1)[-1]})")
        if text is None:
            return ObservedOutput(exists=False)
        bindings = _bindings(text.removeprefix(_BOM))
        values = {key: bindings[key] for key in keys if key in bindings}
        if set(values) != set(keys):
            return ObservedOutput(exists=True, digest="keys-missing")
        return ObservedOutput(exists=True, digest=_digest(values, keys, digest))

    def render_values(self, target: OutputTarget, context: dict[str, Any]) -> dict[str, str]:
        """Each key's value, rendered and quoted for the target's readers (the text after ``KEY=``)."""
        values: dict[str, str] = {}
        for key, source in target.keys:
            try:
                rendered = render_string(source, context)
            except Exception as exc:  # a template failure, without its values
                raise OutputError(f"{target.path}: {key}: {render_error(exc, source, context)}") from None
            try:
                values[key] = dotenv_quote(rendered, target.readers)
            except QuotingError as exc:
                raise OutputError(
                    f"{target.path}: {key}: the value cannot be written safely to a dotenv file read by "
                    f"{', '.join(target.readers)}: {exc}",
                    hint="if only some of these programs read this file, list them in the output's `readers:` "
                    "(python-dotenv, compose, bash); or use a template output in a format your consumer reads "
                    "(JSON, YAML), or rotate to get another password",
                ) from None
        return values

    def write(
        self,
        file: Path,
        target: OutputTarget,
        context: dict[str, Any],
        digest: Digester,
        *,
        previous_keys: tuple[str, ...] = (),
    ) -> str:
        values = self.render_values(target, context)
        text = _read_text(file) or ""
        bom = _BOM if text.startswith(_BOM) else ""
        body = text.removeprefix(_BOM)
        entries = parse_entries(body)
        gone = set(previous_keys) - set(values)
        _refuse_hidden_keys(target, body, entries, set(values) | gone)
        eol = _dominant_eol(body)
        pieces: list[tuple[str, Entry | None]] = []  # (text, the foreign entry it keeps, if any)
        done: set[str] = set()
        for entry in entries:
            if entry.error or entry.key is None or (entry.key not in values and entry.key not in gone):
                pieces.append((entry.text, entry))
            elif entry.key in gone or entry.key in done:  # removed; a duplicate would shadow the managed one
                pieces.append((_kept_whitespace(entry), None))
            else:
                line = f"{entry.text[: entry.key_at]}{entry.key}={values[entry.key]}{entry.eol or eol}"
                pieces.append((line, None))
                done.add(entry.key)
        added = [f"{key}={value}{eol}" for key, value in values.items() if key not in done]
        if added and pieces and not "".join(p for p, _ in pieces).endswith(("\n", "\r")):
            last, kept = pieces[-1]
            pieces[-1] = (last + eol, kept)
        pieces.extend((line, None) for line in added)
        new_body = "".join(p for p, _ in pieces)
        _check_reads_the_same(target, body, new_body, [e for _, e in pieces if e is not None], values)
        mode = existing_mode(file, target.mode)
        atomic_write(file, (bom + new_body).encode(), mode, sync_dir=False)
        return _digest(values, tuple(values), digest)

    def retire(self, file: Path, keys: tuple[str, ...]) -> None:
        text = _read_text(file)
        if text is None:
            return
        bom = _BOM if text.startswith(_BOM) else ""
        gone = set(keys)
        entries = parse_entries(text.removeprefix(_BOM))
        kept = [_kept_whitespace(e) if not e.error and e.key in gone else e.text for e in entries]
        new_text = bom + "".join(kept)
        if new_text != text:
            atomic_write(file, new_text.encode(), existing_mode(file, 0o600))


def _check_reads_the_same(
    target: OutputTarget, old: str, new: str, foreign: list[Entry], values: dict[str, str]
) -> None:
    """Refuse a write after which python-dotenv would read another entry differently or miss a key.

    An entry python-dotenv cannot parse (an unterminated quote) or a quoted value ending in a
    backslash reaches forward to the next quote in the file: writing hepinfra's quotes after it
    would pull hepinfra's keys into it.
    """

    def signature(entry: Entry) -> tuple[str | None, str | None, bool, str]:
        return entry.key, entry.value, entry.error, entry.core

    expected = [e for e in foreign if e.core]
    now = parse_entries(new)
    seen = [signature(e) for e in now if e.core and (e.error or e.key not in values)]
    managed = sorted(e.key for e in now if not e.error and e.key in values)
    if (
        seen == [signature(e) for e in expected]
        and managed == sorted(values)
        and _managed_raw(now, tuple(values)) == values
    ):
        return
    changed = (e for e, s in zip(expected, [*seen, None], strict=False) if signature(e) != s)
    culprit = next(changed, None) or next((e for e in reversed(expected) if e.error), None)
    where = f"line {culprit.line(old)}" if culprit else "an entry"
    raise OutputError(
        f"{target.path}: {where} would be read differently by python-dotenv once hepinfra's keys are written "
        "(an unterminated quote, or a quoted value ending in a backslash?); the file is left as it was",
        hint="fix or remove that line, then apply again",
    )


def _refuse_hidden_keys(target: OutputTarget, body: str, entries: list[Entry], managed: set[str]) -> None:
    """A part of the file python-dotenv cannot parse (an unterminated quote, say) that holds one of
    hepinfra's keys: rewriting around it would leave the old value there, in plain text, and a file
    bash cannot source. Refuse, naming the line, and leave the file as it is."""
    for entry in entries:
        if not entry.error:
            continue
        for key in managed:
            match = re.search(rf"(?m)^[ \t]*(?:export[ \t]+)?{re.escape(key)}[ \t]*=", entry.text)
            if match:
                line = body.count("\n", 0, entry.offset + match.start()) + 1
                raise OutputError(
                    f"{target.path}: line {line}: {key} sits in a part of the file that python-dotenv cannot "
                    "parse (an unterminated quote above it?); fix the file, the write was refused",
                )


# --- the manifest's ``dotenv:`` output ------------------------------------------------------------


class DotenvOutput(FileOutputBase):
    """Manage some keys inside a dotenv file, keeping every other entry."""

    kind: ClassVar[str] = "dotenv"
    review_fields: ClassVar[tuple[str, ...]] = ("dotenv", "keys", "readers", "mode", "allow_tracked")
    claims: ClassVar[str] = "keys"  # keys inside a file, a whole file, or nothing of the project
    remote: ClassVar[bool] = False
    local: ClassVar[bool] = True  # plaintext for this machine: a CI runner's copy is thrown away

    dotenv: str = Field(min_length=1)
    keys: dict[EnvVarName, str] = Field(min_length=1)
    # the programs that read the file: every value is quoted so that each reads it back exactly
    readers: list[DotenvReader] = Field(default=list(DOTENV_READERS), min_length=1)

    def resolve(
        self, r: Resolution, base: tuple[str | int, ...], context: dict[str, Any], value_context: dict[str, Any]
    ) -> OutputTarget:
        node: tuple[str | int, ...] = (*base, "dotenv")
        path, real = r.check_path(r.render(self.dotenv, context, node), self, node)
        for k, source in self.keys.items():
            r.dry_render(source, value_context, (*base, "keys", k))
        definition: dict[str, Any] = {"kind": "dotenv", "keys": sorted(self.keys.items())}
        readers = tuple(x for x in DOTENV_READERS if x in self.readers)
        if readers != DOTENV_READERS:  # the default leaves the digest as it always was
            definition["readers"] = list(readers)
        return self.file_target(path, real, node, definition, keys=tuple(self.keys.items()), readers=readers)
