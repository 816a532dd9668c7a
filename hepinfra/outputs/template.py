"""The template sink: a Jinja2 template file rendered to a path (Kubernetes Secret, JSON, TOML...).

Owns: rendering the whole file and writing it atomically. Must not: show a value in an error.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.fsutil import atomic_write
from hepinfra.manifest import OutputTarget
from hepinfra.plan import ObservedOutput
from hepinfra.templates import compile_string, template_error_message


class TemplateSink:
    kind = "template"

    def observe(self, file: Path, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        try:
            return ObservedOutput(exists=True, digest=digest(file.read_bytes()))
        except FileNotFoundError:
            return ObservedOutput(exists=False)
        except OSError as exc:
            return ObservedOutput(exists=True, problem=f"unreadable ({exc.strerror})")

    def write(self, file: Path, target: OutputTarget, context: dict[str, Any], digest: Digester) -> str:
        assert target.template_source is not None
        try:
            data = compile_string(target.template_source).render(context).encode()
        except Exception as exc:  # a template failure, without its values
            raise OutputError(f"{target.path}: {target.template}: {template_error_message(exc)}") from None
        atomic_write(file, data, target.mode, sync_dir=False)
        return digest(data)

    def retire(self, file: Path, keys: tuple[str, ...]) -> None:
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
