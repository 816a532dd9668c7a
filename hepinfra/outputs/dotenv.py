"""The dotenv sink: manages only its own keys inside a file, keeping every other line.

Owns: finding, replacing, appending and removing ``KEY=value`` lines, quoting values with
``templates.dotenv_quote`` (python-dotenv, docker compose and bash read back the same value),
and refusing a value that cannot be quoted safely. Must not: show a value in an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.fsutil import atomic_write
from hepinfra.manifest import OutputTarget
from hepinfra.plan import ObservedOutput
from hepinfra.templates import QuotingError, dotenv_quote, render_string, template_error_message

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")


def _read_lines(file: Path) -> list[str] | None:
    try:
        return file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise OutputError(f"{file}: cannot read dotenv file: {exc}") from None


def _managed_values(lines: list[str], keys: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    wanted = set(keys)
    for line in lines:
        match = _LINE.match(line)
        if match and match.group(1) in wanted:
            found[match.group(1)] = match.group(2).rstrip()
    return found


def _digest(values: dict[str, str], keys: tuple[str, ...], digest: Digester) -> str:
    return digest("".join(f"{k}={values.get(k, '<absent>')}\n" for k in sorted(keys)))


class DotenvSink:
    kind = "dotenv"

    def observe(self, file: Path, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        try:
            lines = _read_lines(file)
        except OutputError as exc:
            return ObservedOutput(exists=True, problem=f"unreadable ({exc.message.split(': ', 1)[-1]})")
        if lines is None:
            return ObservedOutput(exists=False)
        values = _managed_values(lines, keys)
        if set(values) != set(keys):
            return ObservedOutput(exists=True, digest="keys-missing")
        return ObservedOutput(exists=True, digest=_digest(values, keys, digest))

    def render_values(self, target: OutputTarget, context: dict[str, Any]) -> dict[str, str]:
        values: dict[str, str] = {}
        for key, source in target.keys:
            try:
                rendered = render_string(source, context)
            except Exception as exc:  # a template failure, without its values
                raise OutputError(f"{target.path}: {key}: {template_error_message(exc)}") from None
            try:
                values[key] = dotenv_quote(rendered)
            except QuotingError as exc:
                raise OutputError(
                    f"{target.path}: {key}: the value cannot be written safely to a dotenv file: {exc}",
                    hint="use a template output in a format your consumer reads (JSON, YAML), or rotate to get "
                    "another password",
                ) from None
        return values

    def write(self, file: Path, target: OutputTarget, context: dict[str, Any], digest: Digester) -> str:
        values = self.render_values(target, context)
        lines = _read_lines(file) or []
        done: set[str] = set()
        out: list[str] = []
        for line in lines:
            match = _LINE.match(line)
            if match and match.group(1) in values:
                key = match.group(1)
                if key in done:
                    continue  # a duplicate of a managed key would shadow it: drop it
                out.append(f"{key}={values[key]}")
                done.add(key)
            else:
                out.append(line)
        out.extend(f"{key}={value}" for key, value in values.items() if key not in done)
        mode = _existing_mode(file, target.mode)
        atomic_write(file, ("\n".join(out) + "\n").encode(), mode, sync_dir=False)
        return _digest(values, tuple(values), digest)

    def retire(self, file: Path, keys: tuple[str, ...]) -> None:
        lines = _read_lines(file)
        if lines is None:
            return
        gone = set(keys)
        kept = [line for line in lines if not ((m := _LINE.match(line)) and m.group(1) in gone)]
        if kept != lines:
            atomic_write(file, ("\n".join(kept) + "\n").encode() if kept else b"", _existing_mode(file, 0o600))


def _existing_mode(file: Path, default: int) -> int:
    """Keep a stricter mode someone set; never loosen below what the manifest asks."""
    try:
        return os.stat(file).st_mode & 0o777 & default or default
    except FileNotFoundError:
        return default
