"""The template sink: a Jinja2 template file rendered to a path (Kubernetes Secret, JSON, TOML...).

Owns: rendering the whole file and writing it atomically, keeping a stricter mode already on it
(``previous_keys`` does not apply: the whole file is hepinfra's); and the ``template:`` output's schema
and resolution (``TemplateOutput``). Must not: show a value in an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.fsutil import atomic_write
from hepinfra.outputs.base import existing_mode, observe_whole_file, remove_whole_file
from hepinfra.spec import FileOutputBase
from hepinfra.templates import compile_string, render_error, render_template
from hepinfra.values import DOTENV_READERS, ObservedOutput, OutputTarget

if TYPE_CHECKING:
    from hepinfra.resolution import Resolution


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
                f"{target.path}: {render_error(exc, target.template_source, context, file=target.template)}"
            ) from None
        atomic_write(file, data, existing_mode(file, target.mode), sync_dir=False)
        return digest(data)

    def retire(self, file: Path, keys: tuple[str, ...]) -> None:
        remove_whole_file(file)


# --- the manifest's ``template:`` output ----------------------------------------------------------


class TemplateOutput(FileOutputBase):
    """Render a Jinja2 template file to a path."""

    kind: ClassVar[str] = "template"
    review_fields: ClassVar[tuple[str, ...]] = ("template", "path", "mode", "allow_tracked")
    claims: ClassVar[str] = "whole"  # keys inside a file, a whole file, or nothing of the project
    remote: ClassVar[bool] = False
    local: ClassVar[bool] = True  # plaintext for this machine: a CI runner's copy is thrown away

    template: str = Field(min_length=1)
    path: str = Field(min_length=1)

    def resolve(
        self, r: Resolution, base: tuple[str | int, ...], context: dict[str, Any], value_context: dict[str, Any]
    ) -> OutputTarget:
        node: tuple[str | int, ...] = (*base, "path")
        path, real = r.check_path(r.render(self.path, context, node), self, node)
        source = r.template_file(self.template, (*base, "template"), self.allow_outside)
        r.dry_render(source, value_context, (*base, "template"), file=self.template)
        return self.file_target(path, real, node, {"kind": "template", "source": source}, template=self.template,
                                template_source=source, readers=DOTENV_READERS)  # fmt: skip
