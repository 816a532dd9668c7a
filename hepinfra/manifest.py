"""The manifest: models of desired state, loading with positions, and resolution per environment.

Owns: the schema of ``hepinfra.yaml`` (frozen pydantic models), turning every problem into
one ManifestError located as ``file:line:col: key.path: what is wrong (what is allowed)``,
and resolving declarations into ``DeclaredDatabase`` values per environment (platform names
and output paths rendered, templates compiled and dry-rendered).
Must not: do network I/O, or read anything but the manifest and the template files it names.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from hepinfra import yamlpos
from hepinfra.errors import ManifestError

DEFAULT_FILE = "hepinfra.yaml"
PLATFORM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
IDENT = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
ENV_VAR = r"^[A-Za-z_][A-Za-z0-9_]*$"
DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DB_FIELDS = ("id", "name", "engine", "db_name", "db_user", "user", "password", "connection_string", "host", "port")


def parse_duration(value: Any) -> int:
    """``30d`` -> seconds. Units s, m, h, d; a positive whole number."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a duration such as 30d, 12h, 90m or 3600s")
    match = DURATION.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"bad duration {value!r}: use a whole number and a unit s, m, h or d (e.g. 30d)")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("the duration must be more than zero")
    return seconds


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Ident = Annotated[str, StringConstraints(pattern=IDENT, max_length=63)]
EnvVarName = Annotated[str, StringConstraints(pattern=ENV_VAR)]
Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": r"^\s*\d+\s*[smhd]\s*$", "examples": ["30d", "12h"]}),
]
Mode = Annotated[str, StringConstraints(pattern=r"^0?[0-7]{3}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class _OutputBase(_Model):
    allow_tracked: bool = False
    allow_outside: bool = False
    mode: Mode = "0600"


class DotenvOutput(_OutputBase):
    """Manage some keys inside a dotenv file, keeping every other line."""

    dotenv: str = Field(min_length=1)
    keys: dict[EnvVarName, str] = Field(min_length=1)


class TemplateOutput(_OutputBase):
    """Render a Jinja2 template file to a path."""

    template: str = Field(min_length=1)
    path: str = Field(min_length=1)


def _output_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "dotenv" in value:
            return "dotenv"
        if "template" in value:
            return "template"
    return None


OutputSpec = Annotated[
    Annotated[DotenvOutput, Tag("dotenv")] | Annotated[TemplateOutput, Tag("template")],
    Discriminator(
        _output_kind,
        custom_error_type="output_kind",
        custom_error_message="an output needs a 'dotenv' or a 'template' key",
    ),
]


class DatabaseSpec(_Model):
    engine: Literal["mariadb", "postgres", "mongo"] = "mariadb"
    rotate_every: Duration | None = None
    name: str | None = Field(default=None, min_length=1)
    environments: list[Ident] | None = None
    outputs: list[OutputSpec] = []


class EnvironmentSpec(_Model):
    db_key_env: EnvVarName | None = None
    vars: dict[str, Any] = {}


class HepggSpec(_Model):
    url: str = "https://hep.gg"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value != "local" and not value.startswith(("http://", "https://")):
            raise ValueError("must be 'local' or an http(s) URL")
        return value.rstrip("/")


def _none_as_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ({} if v is None else v) for k, v in value.items()}
    return value


class ManifestModel(_Model):
    version: Literal[1]
    hepgg: HepggSpec = HepggSpec()
    environments: Annotated[dict[Ident, EnvironmentSpec], BeforeValidator(_none_as_empty)] = Field(min_length=1)
    databases: Annotated[dict[Ident, DatabaseSpec], BeforeValidator(_none_as_empty)] = {}


# --- resolved values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputTarget:
    """One output of one database in one environment, paths rendered, ready for a sink."""

    kind: Literal["dotenv", "template"]
    path: str  # relative to the project directory (or absolute with allow_outside), POSIX form
    keys: tuple[tuple[str, str], ...]  # dotenv: (name, value template source)
    template: str | None  # template: the file's path relative to the project directory
    template_source: str | None
    mode: int
    allow_tracked: bool
    allow_outside: bool
    definition_digest: str  # changes when what would be rendered changes (not the secret)


@dataclass(frozen=True)
class DeclaredDatabase:
    env: str
    key: str
    name: str
    engine: str
    rotate_every: int | None
    outputs: tuple[OutputTarget, ...]

    @property
    def address(self) -> str:
        return f"{self.env}/databases.{self.key}"


@dataclass(frozen=True)
class Manifest:
    """A loaded, validated and resolved manifest."""

    path: Path
    project_dir: Path
    model: ManifestModel
    declared: dict[str, tuple[DeclaredDatabase, ...]]  # env -> declarations
    digest: str  # sha256 of the manifest file and every template file it uses

    @property
    def environments(self) -> list[str]:
        return list(self.model.environments)

    def env_spec(self, env: str) -> EnvironmentSpec:
        return self.model.environments[env]

    def db_key_var(self, env: str) -> tuple[str, ...]:
        """Where the env's database key is read from, in order."""
        spec = self.env_spec(env)
        if spec.db_key_env:
            return (spec.db_key_env,)
        return (f"HEPGG_DB_KEY_{re.sub(r'[^A-Za-z0-9]', '_', env).upper()}", "HEPGG_DB_KEY")


# --- loading ---------------------------------------------------------------------------------------


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that owns the mapping at ``loc`` (for 'did you mean')."""
    current: Any = ManifestModel
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if isinstance(part, str) and part in current.model_fields:
                current = current.model_fields[part].annotation
                continue
            if part in ("dotenv", "template"):
                current = DotenvOutput if part == "dotenv" else TemplateOutput
                continue
            return None
        origin = typing.get_origin(current)
        if origin is dict:
            current = typing.get_args(current)[1]
        elif origin is list:
            current = typing.get_args(current)[0]
        elif part in ("dotenv", "template"):
            current = DotenvOutput if part == "dotenv" else TemplateOutput
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _friendly(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '').replace(' or ', ', ')}"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        if pattern == IDENT:
            return "must be letters, digits, '_' or '-', starting with a letter or digit"
        if pattern == ENV_VAR:
            return "must be an environment variable name (letters, digits, '_', not starting with a digit)"
        return "must be a file mode such as 0600" if "0-7" in str(pattern) else msg
    if kind == "missing":
        return "is required"
    if kind == "value_error":
        return str(ctx.get("error", msg))
    if kind == "too_short" and "min_length" in ctx:
        return "must not be empty"
    return str(msg[0].lower() + msg[1:] if msg else msg)


def _strip_union_tags(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Drop the discriminator tag pydantic puts after an output's index (it equals a field name)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if i >= 2 and loc[i - 2] == "outputs" and isinstance(loc[i - 1], int) and part in ("dotenv", "template"):
            continue
        out.append(part)
    return tuple(out)


def _error_from_validation(
    exc: ValidationError, data: Any, values: yamlpos.Positions, keys: yamlpos.Positions, filename: str
) -> ManifestError:
    err = exc.errors(include_url=False)[0]
    loc = _strip_union_tags(tuple(err["loc"]))
    path = yamlpos.locate(data, loc)
    if err["type"] == "extra_forbidden":
        parent = yamlpos.locate(data, loc[:-1])
        unknown = str(loc[-1])
        model = _model_at(tuple(err["loc"])[:-1])
        allowed = sorted(model.model_fields) if model else []
        guess = difflib.get_close_matches(unknown, allowed, n=1, cutoff=0.6)
        message = f"unknown key '{unknown}'" + (f" (did you mean '{guess[0]}'?)" if guess else "")
        if allowed:
            message += f"; allowed: {', '.join(allowed)}"
        line, col = keys.get((*parent, unknown), values.get(parent, (None, None)))
        return ManifestError(message, file=filename, line=line, column=col, path=yamlpos.dotted((*parent, unknown)))
    if err["type"] == "missing":
        line, col = values.get(path, (None, None))
        missing = str(loc[-1])
        return ManifestError(
            f"'{missing}' is required",
            file=filename,
            line=line,
            column=col,
            path=yamlpos.dotted(path) if path else None,
        )
    if "[key]" in loc:  # a mapping key broke its rule: point at the key itself
        line, col = keys.get(path, values.get(path, (None, None)))
        return ManifestError(f"key {_friendly(err)}", file=filename, line=line, column=col, path=yamlpos.dotted(path))
    line, col = values.get(path, (None, None))
    return ManifestError(_friendly(err), file=filename, line=line, column=col, path=yamlpos.dotted(path))


def load(path: str | Path) -> Manifest:
    """Read, validate and resolve a manifest; every problem is one located ManifestError."""
    file = Path(path)
    filename = str(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ManifestError("manifest not found (use -f FILE to choose one)", file=filename) from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest: {exc.strerror}", file=filename) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8 text (byte {exc.start})", file=filename) from None
    data, values, keys = yamlpos.load(text, filename)
    if not isinstance(data, dict):
        line, col = values.get((), (1, 1))
        raise ManifestError(
            "the manifest must be a mapping with 'version', 'environments' and 'databases'",
            file=filename,
            line=line,
            column=col,
        )
    try:
        model = ManifestModel.model_validate(data)
    except ValidationError as exc:
        raise _error_from_validation(exc, data, values, keys, filename) from None
    project_dir = file.resolve().parent
    resolver = _Resolver(model, project_dir, filename, values, keys)
    declared = {env: resolver.resolve_env(env) for env in model.environments}
    digest = hashlib.sha256(raw + b"".join(resolver.template_bytes[k] for k in sorted(resolver.template_bytes)))
    return Manifest(file, project_dir, model, declared, digest.hexdigest())


class _Resolver:
    """Renders names and paths per environment and dry-renders value templates."""

    def __init__(
        self, model: ManifestModel, project_dir: Path, filename: str, values: yamlpos.Positions, keys: yamlpos.Positions
    ) -> None:
        self.model, self.project_dir, self.filename = model, project_dir, filename
        self.values, self.keys = values, keys
        self.template_bytes: dict[str, bytes] = {}
        self._template_sources: dict[str, str] = {}
        self._checked: set[tuple[str, str]] = set()

    def error(self, path: tuple[str | int, ...], message: str, *, at_key: bool = False) -> ManifestError:
        pos = (self.keys.get(path) if at_key else None) or self.values.get(path) or (None, None)
        return ManifestError(message, file=self.filename, line=pos[0], column=pos[1], path=yamlpos.dotted(path))

    def render(self, source: str, context: dict[str, Any], path: tuple[str | int, ...]) -> str:
        from hepinfra.templates import render_string, template_error_message

        try:
            return render_string(source, context)
        except Exception as exc:  # jinja2 raises a family of errors; each becomes one located line
            raise self.error(path, template_error_message(exc)) from None

    def resolve_env(self, env: str) -> tuple[DeclaredDatabase, ...]:
        spec = self.model.environments[env]
        out: list[DeclaredDatabase] = []
        names: dict[str, str] = {}
        dotenv_keys: dict[tuple[str, str], str] = {}
        template_paths: dict[str, str] = {}
        for key, db in self.model.databases.items():
            base = ("databases", key)
            for i, wanted in enumerate(db.environments or []):
                if wanted not in self.model.environments:
                    guess = difflib.get_close_matches(wanted, list(self.model.environments), n=1)
                    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
                    raise self.error(
                        (*base, "environments", i),
                        f"unknown environment '{wanted}'{hint}; declared: {', '.join(self.model.environments)}",
                    )
            if db.environments is not None and env not in db.environments:
                continue
            context = {"env": env, "key": key, "vars": spec.vars}
            name_path = (*base, "name") if db.name else base
            name = self.render(db.name, context, name_path) if db.name else f"{key}-{env}"
            if not PLATFORM_NAME.fullmatch(name):
                raise self.error(
                    name_path,
                    f"platform name '{name}' (environment {env}) is not valid: 1 to 63 "
                    "letters, digits, '_' or '-', starting with a letter or digit",
                    at_key=not db.name,
                )
            if name in names:
                raise self.error(
                    name_path,
                    f"platform name '{name}' in environment {env} is also used by "
                    f"databases.{names[name]}; names are unique per account",
                    at_key=not db.name,
                )
            names[name] = key
            context["name"] = name
            outputs = []
            for i, output in enumerate(db.outputs):
                target = self.resolve_output(env, key, i, output, context)
                if target.kind == "dotenv":
                    if target.path in template_paths:
                        raise self.error(
                            (*base, "outputs", i, "dotenv"),
                            f"path '{target.path}' is also written "
                            f"by the template output of {template_paths[target.path]}",
                        )
                    for k, _ in target.keys:
                        owner = dotenv_keys.get((target.path, k))
                        if owner is not None:
                            raise self.error(
                                (*base, "outputs", i, "keys", k),
                                f"key {k} in '{target.path}' is also managed by {owner} (environment {env})",
                                at_key=True,
                            )
                        dotenv_keys[(target.path, k)] = f"databases.{key}"
                else:
                    owner = template_paths.get(target.path) or next(
                        (o for (p, _), o in dotenv_keys.items() if p == target.path), None
                    )
                    if owner is not None:
                        raise self.error(
                            (*base, "outputs", i, "path"),
                            f"path '{target.path}' is also written by {owner} (environment {env})",
                        )
                    template_paths[target.path] = f"databases.{key}"
                outputs.append(target)
            out.append(DeclaredDatabase(env, key, name, db.engine, db.rotate_every, tuple(outputs)))
        return tuple(out)

    def resolve_output(
        self, env: str, key: str, index: int, output: DotenvOutput | TemplateOutput, context: dict[str, Any]
    ) -> OutputTarget:
        base: tuple[str | int, ...] = ("databases", key, "outputs", index)
        fake_db = {field: f"<{field}>" for field in DB_FIELDS}
        value_context = {**context, "db": fake_db}
        if isinstance(output, DotenvOutput):
            path = self.check_path(self.render(output.dotenv, context, (*base, "dotenv")), output, (*base, "dotenv"))
            for k, source in output.keys.items():
                self.dry_render(source, value_context, (*base, "keys", k))
            definition: dict[str, Any] = {"kind": "dotenv", "keys": sorted(output.keys.items())}
            keys_tuple = tuple(output.keys.items())
            template, template_source = None, None
        else:
            path = self.check_path(self.render(output.path, context, (*base, "path")), output, (*base, "path"))
            template = output.template
            template_source = self.template_file(template, (*base, "template"))
            self.dry_render(template_source, value_context, (*base, "template"), file=template)
            definition = {"kind": "template", "source": template_source}
            keys_tuple = ()
        definition.update(path=path, mode=output.mode)
        digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:32]
        return OutputTarget(
            kind="dotenv" if isinstance(output, DotenvOutput) else "template",
            path=path,
            keys=keys_tuple,
            template=template,
            template_source=template_source,
            mode=int(output.mode, 8),
            allow_tracked=output.allow_tracked,
            allow_outside=output.allow_outside,
            definition_digest=digest,
        )

    def check_path(self, rendered: str, output: _OutputBase, path: tuple[str | int, ...]) -> str:
        if not rendered.strip() or rendered.endswith("/"):
            raise self.error(path, f"output path '{rendered}' does not name a file")
        candidate = PurePosixPath(rendered)
        if not output.allow_outside and (candidate.is_absolute() or ".." in candidate.parts):
            raise self.error(
                path, f"output path '{rendered}' leaves the manifest's directory; set allow_outside: true to allow it"
            )
        return str(candidate)

    def template_file(self, relative: str, path: tuple[str | int, ...]) -> str:
        if relative in self._template_sources:
            return self._template_sources[relative]
        file = self.project_dir / relative
        try:
            raw = file.read_bytes()
            source = raw.decode("utf-8")
        except FileNotFoundError:
            raise self.error(path, f"template file '{relative}' not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(path, f"template file '{relative}' cannot be read: {exc}") from None
        self.template_bytes[relative] = raw
        self._template_sources[relative] = source
        return source

    def dry_render(
        self, source: str, context: dict[str, Any], path: tuple[str | int, ...], file: str | None = None
    ) -> None:
        """Compile and render with placeholder values, so typos fail at validate time, not at apply."""
        from jinja2 import TemplateSyntaxError

        from hepinfra.templates import compile_string, template_error_message

        marker = (source, str(sorted(context["vars"].items())) if context.get("vars") else "")
        if marker in self._checked:
            return
        try:
            compile_string(source).render(context)
        except TemplateSyntaxError as exc:
            if file is not None:
                raise self.error(path, f"{file}:{exc.lineno}: {template_error_message(exc)}") from None
            raise self.error(path, template_error_message(exc)) from None
        except Exception as exc:  # any render failure, located at the manifest node
            where = f"{file}: " if file else ""
            raise self.error(path, where + template_error_message(exc)) from None
        self._checked.add(marker)


def schema() -> dict[str, Any]:
    """JSON Schema of the manifest, for editors (yaml-language-server)."""
    out = ManifestModel.model_json_schema(mode="validation")
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["title"] = "hepinfra manifest"
    return out
