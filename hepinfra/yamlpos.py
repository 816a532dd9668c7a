"""YAML loading that keeps every node's line and column, and rejects duplicate keys.

Owns: turning YAML text into plain Python data plus a map from key path to (line, column),
and locating a pydantic error ``loc`` in that map. Must not: know about the manifest schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from hepinfra.errors import ManifestError

Path = tuple[str | int, ...]
STR_TAG = "tag:yaml.org,2002:str"
Positions = dict[Path, tuple[int, int]]

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def load(text: str, filename: str) -> tuple[Any, Positions, Positions]:
    """Parse one YAML document: (data, value positions, key positions)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ManifestError(f"not valid YAML: {problem}", file=filename, line=line, column=col) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML: {exc}", file=filename) from None
    values: Positions = {}
    keys: Positions = {}
    if node is None:
        loader.dispose()
        return None, values, keys
    # The pure-Python constructor builds scalars (libyaml's does not expose construct_object).
    constructor = yaml.SafeLoader("")

    def build(n: yaml.Node, path: Path, depth: int) -> Any:
        if depth > 64:
            raise ManifestError("nesting is too deep", file=filename, line=_mark(n)[0], column=_mark(n)[1])
        values[path] = _mark(n)
        if isinstance(n, yaml.MappingNode):
            constructor.flatten_mapping(n)
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    line, col = _mark(key_node)
                    raise ManifestError("a mapping key must be a plain value", file=filename, line=line, column=col)
                key = key_node.value if key_node.tag == STR_TAG else constructor.construct_object(key_node)
                key = key if isinstance(key, str) else str(key)
                if key in out:
                    line, col = _mark(key_node)
                    first = keys[(*path, key)]
                    raise ManifestError(
                        f"duplicate key '{key}' (first defined at line {first[0]})",
                        file=filename,
                        line=line,
                        column=col,
                        path=_dotted((*path, key)),
                    )
                keys[(*path, key)] = _mark(key_node)
                out[key] = build(value_node, (*path, key), depth + 1)
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(item, (*path, i), depth + 1) for i, item in enumerate(n.value)]
        if n.tag == STR_TAG:  # the common case: no constructor needed
            return n.value
        try:
            return constructor.construct_object(n)
        except yaml.constructor.ConstructorError as exc:
            line, col = _mark(n)
            raise ManifestError(f"bad value: {exc.problem}", file=filename, line=line, column=col) from None

    try:
        return build(node, (), 0), values, keys
    finally:
        loader.dispose()


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
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
