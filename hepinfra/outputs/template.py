"""The template sink: a Jinja2 template file rendered to a path (Kubernetes Secret, JSON, TOML...).

Owns: rendering the whole file and writing it atomically, keeping a stricter mode already on it
(``previous_keys`` does not apply: the whole file is hepinfra's). Must not: show a value in an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.fsutil import atomic_write
from hepinfra.outputs.base import existing_mode, observe_whole_file, remove_whole_file
from hepinfra.templates import compile_string, render_error, render_template
from hepinfra.values import ObservedOutput, OutputTarget


class TemplateSink:
    kind = "template"

    def observe(self, file: Path, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        return observe_whole_file(file, digest)

    def write(
        self,
        file: Path,
        target: OutputTarget,
        context: dict[str, Any],
        digest: Digester,
        *,
        previous_keys: tuple[str, ...] = (),
    ) -> str:
        assert target.template_source is not None
        try:
            data = render_template(compile_string(target.template_source), context).encode()
        except Exception as exc:  # a template failure, without its values
            raise OutputError(
                f"{target.path}: {target.template}: {render_error(exc, target.template_source, context)}"
            ) from None
        atomic_write(file, data, existing_mode(file, target.mode), sync_dir=False)
        return digest(data)

    def retire(self, file: Path, keys: tuple[str, ...]) -> None:
        remove_whole_file(file)
