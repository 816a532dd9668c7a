"""YAML loading that keeps every node's line and column, and refuses what plain data cannot be.

Owns: turning YAML text into plain Python data (mappings, lists, text, numbers, booleans,
null, dates) plus maps from key path to (line, column); refusing duplicate keys, tags other
than YAML's standard scalar, mapping and sequence tags (``!!python/...``, ``!!binary``,
``!!set``, local ``!tags``), nesting deeper than ``MAX_DEPTH`` and alias expansion beyond
``MAX_ALIAS_NODES``; every YAML problem as one located ManifestError, with a hint for tab
indentation and for an unquoted ``{{ … }}``; locating a pydantic error ``loc``; and quoting
user input in messages (``clip``), capped so that a huge value is never echoed.
Must not: know about the manifest schema, or construct anything but plain data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import yaml

from hepinfra.errors import ManifestError
from hepinfra.values import QUOTE_LIMIT, clip

Path = tuple[str | int, ...]
Positions = dict[Path, tuple[int, int]]

MAX_DEPTH = 64
FLOW_SCAN_FROM = 8_000  # brackets in a text before its nesting is checked on the event stream
MAX_ALIAS_NODES = 100_000  # values built again through aliases: stops a "billion laughs" early

_YAML = "tag:yaml.org,2002:"
STR_TAG = _YAML + "str"
MAP_TAG = _YAML + "map"
SEQ_TAG = _YAML + "seq"
NULL_TAG = _YAML + "null"
MERGE_TAG = _YAML + "merge"
# scalar tag -> how a message names a value of it
SCALAR_TAGS = {
    STR_TAG: "text",
    _YAML + "int": "a whole number",
    _YAML + "float": "a number",
    _YAML + "bool": "true or false",
    NULL_TAG: "null",
    _YAML + "timestamp": "a date",
}
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
_UNQUOTED_TEMPLATE = re.compile(r"(?:^|[:,\[?]|(?:^|\s)-)[ \t]*\{\{")

try:
    _Loader: Any = yaml.CSafeLoader
    _POSITION_IN_BYTES = True  # libyaml reports a reader error's position in UTF-8 bytes
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader
    _POSITION_IN_BYTES = False


class Document(NamedTuple):
    """A loaded YAML document: its data and where each part of it is written."""

    data: Any
    values: Positions  # path of a value -> (line, column)
    keys: Positions  # path of a mapping entry -> (line, column) of its key
    typed_keys: dict[Path, tuple[str, str]]  # entry whose key YAML read as non-text -> (source, what it is)
    spellings: dict[Path, str]  # path of a scalar YAML read as non-text -> its source text


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_YAML) :] if tag.startswith(_YAML) else tag


def _nesting_beyond(text: str, limit: int) -> tuple[int, int] | None:
    """(line, column) where mappings and sequences first nest deeper than ``limit``, from the event
    stream (flat, no recursion); None when they do not, or when the text is not valid YAML (the
    composer then reports it, located)."""
    if text.count("[") + text.count("{") < FLOW_SCAN_FROM:
        # block nesting needs indentation growing with depth (16 MiB allows ~4,000 levels) and libyaml's
        # composer handles ~10,000 flow levels: only a text with this many brackets needs the extra pass
        return None
    depth = 0
    try:  # PyYAML's pure-Python parser: iterative, and without libyaml's own nesting limit (PyYAML >= 6.0.4),
        # which fails the scan ahead of the first event with a message and column of its own
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > limit:
                    mark = event.start_mark
                    return (mark.line + 1, mark.column + 1) if mark else (None, None)  # type: ignore[return-value]
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return None
    return None


def load(text: str, filename: str) -> Document:
    """Parse one YAML document into plain data and the positions of its values and keys."""
    lines = _LINE_BREAK.split(text)

    def fail(message: str, line: int | None, col: int | None) -> ManifestError:
        return ManifestError(message, file=filename, line=line, column=col)

    def source_line(line: int) -> str:
        return lines[line - 1] if 0 < line <= len(lines) else ""

    def template_hint(*line_numbers: int) -> str:
        if any(_UNQUOTED_TEMPLATE.search(source_line(n)) for n in line_numbers):
            return '; quote a value that starts with {{, e.g. name: "{{ env }}-shop"'
        return ""

    too_deep = _nesting_beyond(text, MAX_DEPTH)
    if too_deep is not None:  # checked on the flat event stream: composing it would recurse in C and crash
        raise fail("nesting is too deep", *too_deep)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        problem = clip(exc.problem or exc.context or "invalid YAML", 200)
        if exc.problem == "second occurrence" and exc.context_mark is not None:  # libyaml's duplicate anchor
            problem = f"the anchor is already defined at line {exc.context_mark.line + 1}"
        indent = source_line(line or 0)
        if line is not None and "\t" in indent[: len(indent) - len(indent.lstrip(" \t"))]:
            problem = "a tab is used for indentation; YAML indents with spaces only"
        elif line is not None and col is not None and source_line(line)[col - 1 : col] == "\t":
            problem = "a tab is not allowed here; YAML indents with spaces only"
        marks = [m.line + 1 for m in (exc.problem_mark, exc.context_mark) if m is not None]
        raise fail(f"not valid YAML: {problem}{template_hint(*marks)}", line, col) from None
    except yaml.reader.ReaderError as exc:
        before = text.encode("utf-8", "surrogatepass")[: exc.position].decode("utf-8", "ignore")
        if not _POSITION_IN_BYTES:  # pragma: no cover
            before = text[: exc.position]
        line = len(_LINE_BREAK.findall(before)) + 1
        col = len(_LINE_BREAK.split(before)[-1]) + 1
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise fail(f"not valid YAML: the character U+{char:04X} is not allowed", line, col) from None
    except yaml.YAMLError as exc:
        raise fail(
            f"not valid YAML: {clip(str(exc).splitlines()[0] if str(exc) else 'unreadable', 200)}", 1, 1
        ) from None
    values: Positions = {}
    keys: Positions = {}
    typed_keys: dict[Path, tuple[str, str]] = {}
    spellings: dict[Path, str] = {}
    if node is None:
        loader.dispose()
        return Document(None, values, keys, typed_keys, spellings)
    # The pure-Python constructor builds scalars (libyaml's does not expose construct_object).
    constructor = yaml.SafeLoader("")
    seen: set[int] = set()
    expanded = 0

    def scalar(n: yaml.ScalarNode) -> Any:
        if n.tag == STR_TAG:  # the common case: no constructor needed
            return n.value
        if n.tag not in SCALAR_TAGS:
            raise refused(n)
        what = SCALAR_TAGS[n.tag]
        try:
            value = constructor.construct_object(n)
            bad = n.tag == NULL_TAG and not _NULL.match(n.value)  # !!null accepts anything otherwise
        except Exception:  # each constructor fails its own way (ValueError, KeyError, TypeError, ...)
            bad = True
        if bad:
            line, col = _mark(n)
            raise fail(f"'{clip(n.value)}' is not {what} (it is tagged {_tag_name(n.tag)})", line, col)
        return value

    def refused(n: yaml.Node) -> ManifestError:
        line, col = _mark(n)
        if n.tag in SCALAR_TAGS or n.tag in (MAP_TAG, SEQ_TAG):  # a standard tag on the wrong kind of node
            kind = "a mapping" if isinstance(n, yaml.MappingNode) else "a list"
            kind = kind if isinstance(n, yaml.CollectionNode) else "a plain value"
            return fail(f"{kind} cannot be tagged {_tag_name(n.tag)}", line, col)
        return fail(
            f"the tag {clip(_tag_name(n.tag))} is not allowed: a manifest is plain YAML "
            "(text, numbers, true/false, null, mappings and lists)",
            line,
            col,
        )

    def merged_sources(n: yaml.Node) -> list[yaml.MappingNode]:
        sources = n.value if isinstance(n, yaml.SequenceNode) and n.tag == SEQ_TAG else [n]
        if not all(isinstance(s, yaml.MappingNode) for s in sources):
            line, col = _mark(n)
            raise fail("'<<' (merge) takes a mapping or a list of mappings", line, col)
        return list(sources)

    def build(n: yaml.Node, path: Path, depth: int) -> Any:
        nonlocal expanded
        line, col = _mark(n)
        if depth > MAX_DEPTH:
            raise fail(f"nesting is too deep (more than {MAX_DEPTH} levels)", line, col)
        if id(n) in seen:
            expanded += 1
            if expanded > MAX_ALIAS_NODES:
                raise fail(
                    f"aliases expand to more than {MAX_ALIAS_NODES:,} values; use fewer nested aliases", line, col
                )
        else:
            seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            if n.tag != MAP_TAG:
                raise refused(n)
            out: dict[str, Any] = {}
            merges = [value for key, value in n.value if key.tag == MERGE_TAG]
            for merge in reversed(merges):  # merged entries: earlier sources win, own entries win over all
                for source in reversed(merged_sources(merge)):
                    out.update(build(source, path, depth + 1))
            values[path] = (line, col)
            own: dict[str, tuple[int, int]] = {}
            for key_node, value_node in n.value:
                if key_node.tag == MERGE_TAG:
                    continue
                kline, kcol = _mark(key_node)
                if not isinstance(key_node, yaml.ScalarNode):
                    message = "a mapping key must be a plain value" + template_hint(kline, line)
                    raise fail(message, kline, kcol)
                key_value = scalar(key_node)
                key = key_value if isinstance(key_value, str) else str(key_value)
                if key in own:
                    raise ManifestError(
                        f"duplicate key '{clip(key)}' (first defined at line {own[key][0]})",
                        file=filename,
                        line=kline,
                        column=kcol,
                        path=_dotted((*path, key)),
                    )
                own[key] = (kline, kcol)
                keys[(*path, key)] = (kline, kcol)
                if key_node.tag != STR_TAG:
                    typed_keys[(*path, key)] = (key_node.value, SCALAR_TAGS[key_node.tag])
                else:
                    typed_keys.pop((*path, key), None)
                out[key] = build(value_node, (*path, key), depth + 1)
            return out
        values[path] = (line, col)
        if isinstance(n, yaml.SequenceNode):
            if n.tag != SEQ_TAG:
                raise refused(n)
            return [build(item, (*path, i), depth + 1) for i, item in enumerate(n.value)]
        assert isinstance(n, yaml.ScalarNode)
        value = scalar(n)
        if n.tag != STR_TAG:
            spellings[path] = n.value
        else:
            spellings.pop(path, None)
        return value

    try:
        return Document(build(node, (), 0), values, keys, typed_keys, spellings)
    finally:
        loader.dispose()


def clip_quoted(message: str, limit: int = 200) -> str:
    """``message`` with every single-quoted part longer than ``limit`` clipped (a last line of defence
    against echoing huge input; quotes are paired left to right, and the limit is generous so that an
    apostrophe in hepinfra's own wording never clips its text)."""

    def one(match: re.Match[str]) -> str:
        inner = match.group(1)
        return f"'{clip(inner, QUOTE_LIMIT)}'" if len(inner) > limit else match.group(0)

    return re.sub(r"'([^']*)'", one, message)


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{clip(part)}" if out else clip(part))
    return out


def locate(data: Any, loc: Sequence[str | int]) -> Path:
    """The real data path of a pydantic ``loc``: drops union tags and markers like ``[key]``."""
    path: list[str | int] = []
    node = data
    for part in loc:
        found = isinstance(node, dict) and part in node
        found = found or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
        if found:
            path.append(part)
            node = node[part]
    return tuple(path)


def dotted(path: Sequence[str | int]) -> str:
    return _dotted(path) or "(top level)"
