"""The resolution context: what resolving a manifest's declarations needs, shared by every kind
and every output (``Kind.declare``, an output spec's ``resolve``).

Owns: located errors (``file:line:col: path: what``), rendering names and argv items, dry-rendering
value templates with placeholder values, reading template and upload sources on their real paths,
checking output paths, and the credential variables no command may receive.
Must not: know a kind or an output, or do network I/O.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from hepinfra import yamlpos
from hepinfra.errors import ManifestError
from hepinfra.safety.paths import Boundary, Refused, shown
from hepinfra.spec import ARGV_VARIABLES, SECRET_VARIABLES, FileOutputBase

# control, format (bidi overrides, zero-width), line and paragraph separators: never in an argv item
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


class Resolution:
    """Shared by the loader's resolver and the kinds and outputs it asks. ``model`` is the loader's
    ``ManifestModel`` (typed loosely here: this layer sits below the loader)."""

    def __init__(
        self, model: Any, project_dir: Path, filename: str, values: yamlpos.Positions, keys: yamlpos.Positions
    ) -> None:
        self.model, self.project_dir, self.filename = model, project_dir, filename
        self.values, self.keys = values, keys
        self.template_bytes: dict[str, bytes] = {}
        self._template_sources: dict[str, str] = {}
        self.boundary = Boundary(project_dir)
        self._checked: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
        self.uploads: dict[str, tuple[str, str, int]] = {}  # file -> (real path, sha256, size), read once
        self.outside_ok: Callable[[str], str | None] | None = None  # plan --base: see load()

    def may_read_outside(self, relative: str, allow_outside: bool, node: tuple[str | int, ...]) -> bool:
        """``allow_outside`` as this load honours it: refused (one located line) where ``outside_ok`` says."""
        if allow_outside and self.outside_ok is not None:
            why = self.outside_ok(relative)
            if why is not None:
                raise self.error(node, f"'{shown(relative)}' has allow_outside: {why}")
        return allow_outside

    def error(self, path: tuple[str | int, ...], message: str, *, at_key: bool = False) -> ManifestError:
        pos = (self.keys.get(path) if at_key else None) or self.values.get(path) or (None, None)
        message = yamlpos.clip_quoted(message)  # a quoted name or template message never echoes huge input
        return ManifestError(message, file=self.filename, line=pos[0], column=pos[1], path=yamlpos.dotted(path))

    def render(self, source: str, context: dict[str, Any], path: tuple[str | int, ...]) -> str:
        from hepinfra.templates import render_string, template_error_message

        try:
            return render_string(source, context)
        except Exception as exc:  # jinja2 raises a family of errors; each becomes one located line
            raise self.error(path, template_error_message(exc)) from None

    def credential_vars(self) -> list[str]:
        """Every variable hepinfra reads as a credential (``safety.credentials``): kept from every
        command hepinfra runs."""
        return sorted(self.credential_sources())

    def credential_sources(self) -> dict[str, str]:
        """Computed once per load (a manifest has many outputs)."""
        from hepinfra.safety.credentials import credential_sources

        if not hasattr(self, "_credential_sources"):
            self._credential_sources = credential_sources(self.model)
        return self._credential_sources

    def pass_env(self, names: list[str], node: tuple[str | int, ...]) -> tuple[str, ...]:
        """``pass_env`` / ``after_rotate_pass_env``: never a credential or a HEPGG_*/HEPINFRA_* variable."""
        from hepinfra.safety.credentials import refused_pass_env

        sources = self.credential_sources()
        for i, name in enumerate(names):
            why = refused_pass_env(name, sources, str(node[-1]))
            if why:
                raise self.error((*node, i), why)
        return tuple(names)

    def argv(
        self, items: list[str], node: tuple[str | int, ...], context: dict[str, Any], what: str
    ) -> tuple[str, ...]:
        """argv templates rendered now (env, key, name, vars only: no secret can be in them)."""
        out = []
        for i, item in enumerate(items):
            where = (*node, i)
            self.refuse_secrets_in_argv(item, where, what=what)
            rendered = self.render(item, {k: context[k] for k in ARGV_VARIABLES if k in context}, where)
            if not rendered or any(unicodedata.category(ch) in _INVISIBLE for ch in rendered):
                # a line break would forge lines of the plan, its review and a pull request's comment
                raise self.error(where, "an argv item must not be empty or hold a control character (a line break...)")
            out.append(rendered)
        return tuple(out)

    def refuse_secrets_in_argv(self, source: str, node: tuple[str | int, ...], what: str = "an exec argv") -> None:
        """An argv template may use env, key, name and vars only: anything of ``db`` (its password,
        its connection string) would be readable by every user of the machine while it runs."""
        from jinja2 import TemplateSyntaxError, nodes

        from hepinfra.templates import environment, template_error_message

        try:
            tree = environment().parse(source)
        except TemplateSyntaxError as exc:
            raise self.error(node, template_error_message(exc)) from None
        used = {n.name for n in tree.find_all(nodes.Name)}
        secret = next((v for v in SECRET_VARIABLES if v in used), None)
        if secret is not None and what == "an exec argv":
            raise self.error(
                node,
                f"an exec argv must not use {secret}: a value in argv is visible to every user of the machine while "
                "the command runs; send it in keys:, which reach the command on its stdin",
            )
        if secret is not None and what == "an after_rotate argv":
            raise self.error(
                node,
                f"an after_rotate argv must not use {secret}: a value in argv is visible to every user of the "
                "machine while the command runs; the hook reads the new credentials from the outputs, and gets "
                "HEPINFRA_ENV, HEPINFRA_ADDRESS and HEPINFRA_NAME in its environment",
            )
        if secret is not None:
            raise self.error(
                node, f"{what} must not use {secret}: names are not secret (they appear in plans and logs)"
            )

    def check_path(self, rendered: str, output: FileOutputBase, path: tuple[str | int, ...]) -> tuple[str, Path]:
        """The output path as written (POSIX form) and its real path, checked (see safety.paths)."""
        try:
            real = self.boundary.resolve(rendered, allow_outside=output.allow_outside)
        except Refused as exc:
            raise self.error(path, f"output path '{shown(rendered)}' {exc}") from None
        return str(PurePosixPath(rendered)), real

    def template_file(self, relative: str, path: tuple[str | int, ...], allow_outside: bool = False) -> str:
        """A template source: same path rules as outputs, a regular file of at most 1 MiB, UTF-8."""
        allow_outside = self.may_read_outside(relative, allow_outside, path)
        try:
            if relative in self._template_sources:
                self.boundary.resolve(relative, allow_outside=allow_outside)
                return self._template_sources[relative]
            real, raw = self.boundary.read_source(relative, allow_outside=allow_outside)
        except Refused as exc:
            raise self.error(path, f"template file '{shown(relative)}' {exc}") from None
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(path, f"template file '{shown(relative)}' is not UTF-8 text (byte {exc.start})") from None
        self.boundary.protect(real, f"the template source '{shown(relative)}'")
        self.template_bytes[relative] = raw
        self._template_sources[relative] = source
        return source

    def dry_render(
        self, source: str, context: dict[str, Any], path: tuple[str | int, ...], file: str | None = None
    ) -> None:
        """Compile and render with placeholder values, so typos fail at validate time, not at apply; a
        template ``file``'s error names the file and its line."""
        from hepinfra.templates import compile_string, render_template, template_error_message

        marker = (
            source,
            str(sorted(context["vars"].items())) if context.get("vars") else "",
            # the shape of the value variable (an engine's db, a type's id), not its per-environment names
            tuple(
                (k, str(context[k].get("engine", context[k].get("type", "")))) for k in SECRET_VARIABLES if k in context
            ),
        )
        if marker in self._checked:
            return
        try:
            render_template(compile_string(source), context)
        except Exception as exc:  # any compile or render failure, located at the manifest node (and the
            raise self.error(path, template_error_message(exc, file)) from None  # template file's line)
        self._checked.add(marker)
