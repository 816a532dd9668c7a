"""The manifest: models of desired state, loading with positions, and resolution per environment.

Owns: the schema of ``hepinfra.yaml`` (frozen pydantic models), turning every problem into
one ManifestError located as ``file:line:col: key.path: what is wrong (what is allowed)``,
and resolving declarations of every resource kind (databases, ids, uploads) into ``Declared``
values per environment (platform names
and output paths rendered, templates compiled and dry-rendered).
Must not: do network I/O, or read anything but the manifest and the template files it names.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import re
import types
import typing
from collections.abc import Callable
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
    model_validator,
)

from hepinfra import yamlpos
from hepinfra.errors import ManifestError
from hepinfra.safety.paths import MANIFEST_LIMIT, Boundary, Refused, read_regular, shown
from hepinfra.state.spec import LocalState, PostgresState, S3State, StateSpec
from hepinfra.values import (
    DOTENV_READERS,
    RESOURCE_SECTIONS,
    Declared,
    DotenvReader,
    OutputTarget,
    clip,
    format_duration,
    parse_duration,
)

DEFAULT_FILE = "hepinfra.yaml"
log = logging.getLogger("hepinfra.manifest")
PLATFORM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
IDENT = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
ENV_VAR = r"^[A-Za-z_][A-Za-z0-9_]*$"
Ident = Annotated[str, StringConstraints(pattern=IDENT, max_length=63)]
EnvVarName = Annotated[str, StringConstraints(pattern=ENV_VAR)]
Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": r"^\s*\d+\s*[smhd]\s*$", "examples": ["30d", "12h"]}),
]
MODE_HELP = "must be a file mode such as 0600 (octal; the owner reads it: 0600, 0400 or 0700)"


def check_mode(value: Any) -> Any:
    """A secret file's mode: the owner can read it and nobody else has any access.

    ``0600``, ``"0600"``, ``600`` and ``0o600`` all mean 0600 (an unquoted mode reaches here as
    its source text, see ``load``). Returns the digits as written, without a ``0o`` prefix.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(MODE_HELP)
    text = str(value)
    digits = text[2:] if text[:2] in ("0o", "0O") else text
    if not re.fullmatch(r"0?[0-7]{3}", digits):
        raise ValueError(MODE_HELP)
    bits = int(digits, 8)
    if bits & 0o077:
        raise ValueError(
            f"mode {bits:04o} gives group or other users access to the file, which would expose the secret; "
            "use 0600 (or 0400)"
        )
    if not bits & 0o400:
        raise ValueError(f"mode {bits:04o} does not let the owner read the file; use 0600 (or 0400)")
    return digits


Mode = Annotated[str, StringConstraints(pattern=r"^0?[0-7]{3}$"), BeforeValidator(check_mode)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False, defer_build=True)


class _OutputBase(_Model):
    allow_tracked: bool = False
    allow_outside: bool = False
    mode: Mode = "0600"


class DotenvOutput(_OutputBase):
    """Manage some keys inside a dotenv file, keeping every other entry."""

    dotenv: str = Field(min_length=1)
    keys: dict[EnvVarName, str] = Field(min_length=1)
    # the programs that read the file: every value is quoted so that each reads it back exactly
    readers: list[DotenvReader] = Field(default=list(DOTENV_READERS), min_length=1)


class TemplateOutput(_OutputBase):
    """Render a Jinja2 template file to a path."""

    template: str = Field(min_length=1)
    path: str = Field(min_length=1)


class ExecOutput(_Model):
    """Send the keys, as one JSON object on stdin, to a command (a secret store's CLI)."""

    exec: list[str] = Field(min_length=1)  # argv templates: env, key, name, vars; never a secret
    keys: dict[EnvVarName, str] = Field(min_length=1)
    read: list[str] | None = Field(default=None, min_length=1)  # prints the same JSON object back
    timeout: Duration = 30
    pass_env: list[EnvVarName] = []  # variables hepinfra would otherwise keep from the command


_AWS_REGION = r"^[a-z]{2}(-[a-z0-9]+){1,4}$"


class _AwsOutput(_Model):
    region: Annotated[str, StringConstraints(pattern=_AWS_REGION)] | None = None  # else the default chain
    kms_key_id: str | None = Field(default=None, min_length=1, max_length=2048)


class AwsSecretsManagerOutput(_AwsOutput):
    """One secret: a JSON object of the keys (merged with keys that are not hepinfra's), or one value."""

    aws_secretsmanager: str = Field(min_length=1)  # the secret's name, a template (env, key, name, vars)
    keys: dict[EnvVarName, str] | None = Field(default=None, min_length=1)
    value: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_of(self) -> AwsSecretsManagerOutput:
        if (self.keys is None) == (self.value is None):
            raise ValueError("give either keys: (a JSON object) or value: (a plain string), not both or neither")
        return self


class AwsSsmOutput(_AwsOutput):
    """One SecureString parameter per key: <prefix><KEY>."""

    aws_ssm: str = Field(min_length=1)  # the name prefix, a template (env, key, name, vars)
    keys: dict[EnvVarName, str] = Field(min_length=1)


class AgeOutput(_OutputBase):
    """A dotenv body encrypted to recipients with age: a file that is safe to commit."""

    age: str = Field(min_length=1)  # the file's path, a template
    keys: dict[EnvVarName, str] = Field(min_length=1)
    recipients: list[str] | None = Field(default=None, min_length=1)  # age1... or ssh-ed25519/ssh-rsa keys
    recipients_file: str | None = Field(default=None, min_length=1)  # one per line, # comments
    allow_tracked: bool = True  # an encrypted file is meant to be committed

    @model_validator(mode="after")
    def _one_of(self) -> AgeOutput:
        if (self.recipients is None) == (self.recipients_file is None):
            raise ValueError("give either recipients: or recipients_file:, not both or neither")
        return self


OUTPUT_KINDS = ("dotenv", "template", "exec", "aws_secretsmanager", "aws_ssm", "age")  # the key naming each kind


def _output_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for kind in OUTPUT_KINDS:
            if kind in value:
                return kind
    return None


OutputSpec = Annotated[
    Annotated[DotenvOutput, Tag("dotenv")]
    | Annotated[TemplateOutput, Tag("template")]
    | Annotated[ExecOutput, Tag("exec")]
    | Annotated[AwsSecretsManagerOutput, Tag("aws_secretsmanager")]
    | Annotated[AwsSsmOutput, Tag("aws_ssm")]
    | Annotated[AgeOutput, Tag("age")],
    Discriminator(
        _output_kind,
        custom_error_type="output_kind",
        custom_error_message=(
            "an output needs one of the keys: dotenv, template, age, exec, aws_secretsmanager, aws_ssm"
        ),
    ),
]
# output kinds whose target is no file of the project (observed only by a refreshing plan)
REMOTE_KINDS = frozenset({"exec", "aws_secretsmanager", "aws_ssm"})
_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
_PARAMETER_PREFIX = re.compile(r"[A-Za-z0-9_./-]{1,1000}")
# what an exec argv may use: a secret in argv is visible to every user of the machine (ps, /proc)
ARGV_VARIABLES = ("env", "key", "name", "vars")
SECRET_VARIABLES = ("db", "id", "upload")  # the resources' values: never in argv or a name
VERIFY_DRIVERS = {"postgres": ("psycopg", "psycopg 3"), "mariadb": ("pymysql", "PyMySQL")}  # engine -> module


class DatabaseSpec(_Model):
    engine: Literal["mariadb", "postgres", "mongo"] = "mariadb"
    rotate_every: Duration | None = None
    name: str | None = Field(default=None, min_length=1)
    environments: list[Ident] | None = None
    outputs: list[OutputSpec] = []
    verify: bool | None = None  # connect with the rendered credentials after every change (else defaults.verify)
    verify_timeout: Annotated[Duration, Field(le=600)] = 10  # at most 10m: a check never holds an apply longer
    after_rotate: list[str] | None = Field(default=None, min_length=1)  # argv templates: env, key, name, vars
    after_rotate_timeout: Annotated[Duration, Field(le=3600)] = 60  # at most 1h
    after_rotate_pass_env: list[EnvVarName] = []  # variables the hook is given besides the minimal environment


class DefaultsSpec(_Model):
    """Settings every database gets unless it says otherwise."""

    verify: bool = False  # databases of engines hepinfra can connect to (postgres, mariadb); mongo is left out


_ID_FIELDS = ("type", "rotate_every", "environments", "outputs")
_ID_RESERVED = ("username", "token")  # the request's own fields: never an option
UPLOAD_LIMIT = 100 * 1024 * 1024  # an upload's file is read (and digested) whole at every load


class IdSpec(_Model):
    """A value minted by the ID Generator; every other key is an option of its type, sent as written."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True)

    type: Literal["uuid", "nanoid", "2fa", "license", "words", "word", "snowflake", "keypair", "cuid"]
    rotate_every: Duration | None = None
    environments: list[Ident] | None = None
    outputs: list[OutputSpec] = []

    @model_validator(mode="after")
    def _options(self) -> IdSpec:
        for name, value in (self.model_extra or {}).items():
            if name in _ID_RESERVED:
                raise ValueError(f"'{name}' is not an option: the ID Generator's credentials come from the environment")
            guess = difflib.get_close_matches(name, _ID_FIELDS, n=1, cutoff=0.8) if len(name) < 100 else []
            if guess:
                raise ValueError(f"unknown field '{clip(name)}' (did you mean '{guess[0]}'?)")
            if not isinstance(value, str | int | float) or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"option '{clip(name)}' must be a string, a finite number or true/false")
        if self.type == "nanoid" and (self.model_extra or {}).get("length") in (None, ""):
            raise ValueError("a nanoid needs length: (hep.gg answers 'Please specify the length')")
        return self

    @property
    def options(self) -> dict[str, str | int | float | bool]:
        return dict(sorted((self.model_extra or {}).items()))


class UploadSpec(_Model):
    """A file published through the Uploader; re-uploaded when its content changes."""

    file: str = Field(min_length=1)  # relative to the manifest, the same path rules as template sources
    allow_outside: bool = False
    allow_ignored: bool = False  # publish a file Git ignores (refused by default: often a key or a .env)
    environments: list[Ident] | None = None
    outputs: list[OutputSpec] = []


class EnvironmentSpec(_Model):
    db_key_env: EnvVarName | None = None
    id_username_env: EnvVarName | None = None  # else HEPGG_ID_USERNAME
    id_token_env: EnvVarName | None = None  # else HEPGG_ID_TOKEN
    upload_token_env: EnvVarName | None = None  # else HEPGG_UPLOAD_TOKEN
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


def _bool_as_text(value: Any) -> Any:
    """``version: true`` is not ``1`` (Python's True == 1 would let it through)."""
    return str(value).lower() if isinstance(value, bool) else value


class ManifestModel(_Model):
    version: Annotated[Literal[1], BeforeValidator(_bool_as_text)]
    hepgg: HepggSpec = HepggSpec()
    state: StateSpec = LocalState()
    defaults: DefaultsSpec = DefaultsSpec()
    environments: Annotated[dict[Ident, EnvironmentSpec], BeforeValidator(_none_as_empty)] = Field(min_length=1)
    databases: Annotated[dict[Ident, DatabaseSpec], BeforeValidator(_none_as_empty)] = {}
    ids: Annotated[dict[Ident, IdSpec], BeforeValidator(_none_as_empty)] = {}
    uploads: Annotated[dict[Ident, UploadSpec], BeforeValidator(_none_as_empty)] = {}

    def section(self, name: str) -> dict[str, DatabaseSpec | IdSpec | UploadSpec]:
        """A resource kind's declarations (``databases``, ``ids``, ``uploads``), by key."""
        found: dict[str, DatabaseSpec | IdSpec | UploadSpec] = getattr(self, name)
        return found


@dataclass(frozen=True)
class Manifest:
    """A loaded, validated and resolved manifest."""

    path: Path
    project_dir: Path
    model: ManifestModel
    declared: dict[str, tuple[Declared, ...]]  # env -> declarations
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
            if part in OUTPUT_KINDS:
                current = _TAGGED[str(part)]
                continue
            return None
        origin = typing.get_origin(current)
        if origin is dict:
            current = typing.get_args(current)[1]
        elif origin is list:
            current = typing.get_args(current)[0]
        elif part in _TAGGED:  # a tagged union: the tag names the member
            current = _TAGGED[part]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


_TAGGED: dict[str, type[BaseModel]] = {
    "dotenv": DotenvOutput,
    "template": TemplateOutput,
    "exec": ExecOutput,
    "aws_secretsmanager": AwsSecretsManagerOutput,
    "aws_ssm": AwsSsmOutput,
    "age": AgeOutput,
    "local": LocalState,
    "s3": S3State,
    "postgres": PostgresState,
}


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


# pydantic's error types -> plain words (its own messages name Python types and echo input)
_KIND_WORDS = {
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "iterable_type": "must be a list",
    "string_type": "must be text",
    "string_unicode": "must be text",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "none_required": "must be null",
    "missing": "is required",
}


def _friendly(err: Any) -> str:
    """One plain phrase for a pydantic error: never pydantic's wording, never the input."""
    kind, msg = err["type"], err["msg"]
    ctx = err.get("ctx") or {}
    if kind in _KIND_WORDS:
        return _KIND_WORDS[kind]
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected', '').replace(' or ', ', ')}"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        if pattern == IDENT:
            return "must be letters, digits, '_' or '-', starting with a letter or digit"
        if pattern == ENV_VAR:
            return "must be an environment variable name (letters, digits, '_', not starting with a digit)"
        return MODE_HELP if "0-7" in str(pattern) else "is not in the expected form"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", msg))  # our own validators' words
    if kind in ("output_kind", "state_backend"):  # our own discriminators' words
        return str(msg)
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind in ("too_short", "string_too_short"):
        return f"must have at least {ctx.get('min_length')} {'characters' if kind.startswith('string') else 'items'}"
    if kind in ("too_long", "string_too_long"):
        return f"must have at most {ctx.get('max_length')} {'characters' if kind.startswith('string') else 'items'}"
    if kind == "less_than_equal" and isinstance(ctx.get("le"), int):  # the manifest's bounded numbers are durations
        return f"must be at most {format_duration(ctx['le'])}"
    return "is not valid here"


def _strip_union_tags(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Drop the discriminator tag pydantic puts after an output's index (it equals a field name)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if i >= 2 and loc[i - 2] == "outputs" and isinstance(loc[i - 1], int) and part in OUTPUT_KINDS:
            continue
        if i == 1 and loc[0] == "state" and part in ("local", "s3", "postgres"):
            continue
        out.append(part)
    return tuple(out)


def _error_from_validation(
    exc: ValidationError, data: Any, values: yamlpos.Positions, keys: yamlpos.Positions, filename: str
) -> ManifestError:
    errors = exc.errors(include_url=False)
    # a misspelt key is both unknown and, under its right name, missing: name the typo ("did you mean")
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _strip_union_tags(tuple(err["loc"]))
    if err["type"] == "state_backend" and isinstance(data.get("state"), dict) and "backend" in data["state"]:
        loc = ("state", "backend")
    path = yamlpos.locate(data, loc)
    if err["type"] == "extra_forbidden":
        parent = yamlpos.locate(data, loc[:-1])
        unknown = str(loc[-1])
        model = _model_at(tuple(err["loc"])[:-1])
        allowed = sorted(f.alias or name for name, f in model.model_fields.items()) if model else []
        guess = difflib.get_close_matches(unknown, allowed, n=1, cutoff=0.6) if len(unknown) < 100 else []
        message = f"unknown key '{clip(unknown)}'" + (f" (did you mean '{guess[0]}'?)" if guess else "")
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


def _check_names_are_text(doc: yamlpos.Document, filename: str) -> None:
    """Environment and resource names YAML reads as null, true, a number or a date are refused
    (``null`` would otherwise become the name ``None``)."""
    for path, (source, what) in doc.typed_keys.items():
        if len(path) == 2 and path[0] in ("environments", *RESOURCE_SECTIONS):
            kind = {"environments": "environment", "databases": "database", "ids": "id", "uploads": "upload"}[path[0]]
            line, col = doc.keys[path]
            raise ManifestError(
                f"{kind} name must be text; quote it (YAML reads {clip(source) or 'an empty key'} as {what})",
                file=filename,
                line=line,
                column=col,
                path=path[0],
            )


def _modes_as_written(doc: yamlpos.Document) -> None:
    """An unquoted output ``mode`` is checked as written: YAML reads ``0600`` as the number 384."""
    for path, source in doc.spellings.items():
        at_mode = len(path) == 5 and path[0] in RESOURCE_SECTIONS and path[2] == "outputs" and path[4] == "mode"
        if at_mode and yamlpos.locate(doc.data, path) == path:
            output = doc.data[path[0]][path[1]]["outputs"][path[3]]
            if not isinstance(output["mode"], str):
                output["mode"] = source


def load(path: str | Path, *, outside_ok: Callable[[str], str | None] | None = None) -> Manifest:
    """Read, validate and resolve a manifest; every problem is one located ManifestError.
    ``outside_ok(path)`` (``plan --base``): None where a source file with ``allow_outside`` may be read,
    else why not (a pull request's plan reads nothing outside the project that the base does not)."""
    file = Path(path)
    filename = str(path)
    if not file.exists():
        raise ManifestError("manifest not found (use -f FILE to choose one)", file=filename)
    try:
        raw = read_regular(file, MANIFEST_LIMIT)
    except Refused as exc:
        raise ManifestError(f"cannot read the manifest: it {exc}", file=filename) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8")
        line, col = before.count("\n") + 1, len(before) - before.rfind("\n")
        raise ManifestError(
            f"not UTF-8 text (byte {exc.start}: 0x{raw[exc.start]:02x})", file=filename, line=line, column=col
        ) from None
    doc = yamlpos.load(text, filename)
    data, values, keys = doc.data, doc.values, doc.keys
    if not isinstance(data, dict):
        line, col = values.get((), (1, 1))
        raise ManifestError(
            "the manifest must be a mapping with 'version', 'environments' and 'databases'",
            file=filename,
            line=line,
            column=col,
        )
    _check_names_are_text(doc, filename)
    _modes_as_written(doc)
    try:
        model = ManifestModel.model_validate(data)
    except ValidationError as exc:
        raise _error_from_validation(exc, data, values, keys, filename) from None
    project_dir = file.resolve().parent
    resolver = _Resolver(model, project_dir, filename, values, keys)
    resolver.outside_ok = outside_ok
    declared = {env: resolver.resolve_env(env) for env in model.environments}
    resolver.boundary.protect(project_dir / file.name, "the manifest")
    resolver.boundary.protect(file.resolve(), "the manifest")
    resolver.check_uploads(declared)
    resolver.check_outputs(declared)
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
        self.boundary = Boundary(project_dir)
        self._checked: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
        self._by_env: dict[str, dict[str, list[str]]] = {}
        self._uploads: dict[str, tuple[str, str, int]] = {}  # file -> (real path, sha256, size), read once
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

    def resources_in(self, section: str, env: str) -> list[str]:
        """The keys of the resources of ``section`` declared in ``env``, in manifest order.

        The first call per section checks each resource's ``environments`` list once and indexes
        them, so resolving every environment costs the size of the manifest, not environments x lists.
        """
        if section not in self._by_env:
            declared = self.model.environments
            by_env: dict[str, list[str]] = {name: [] for name in declared}
            for key, spec in self.model.section(section).items():
                if spec.environments is None:
                    for members in by_env.values():
                        members.append(key)
                    continue
                for i, wanted in enumerate(spec.environments):
                    if wanted not in declared:
                        guess = difflib.get_close_matches(wanted, list(declared), n=1) if len(wanted) < 100 else []
                        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
                        names = ", ".join(list(declared)[:10]) + (
                            f", … ({len(declared)} in all)" if len(declared) > 10 else ""
                        )
                        raise self.error(
                            (section, key, "environments", i),
                            f"unknown environment '{clip(wanted)}'{hint}; declared: {names}",
                        )
                for wanted in dict.fromkeys(spec.environments):
                    by_env[wanted].append(key)
            self._by_env[section] = by_env
        return self._by_env[section][env]

    def resolve_env(self, env: str) -> tuple[Declared, ...]:
        """Every resource of every kind in ``env``: databases, then ids, then uploads (manifest order
        within a kind). Dotenv keys and whole files are claimed across kinds."""
        spec = self.model.environments[env]
        out: list[Declared] = []
        names: dict[str, str] = {}
        dotenv_keys: dict[tuple[str, str], str] = {}
        dotenv_paths: dict[str, str] = {}  # path -> the first resource managing keys in it
        template_paths: dict[str, str] = {}
        for section in RESOURCE_SECTIONS:
            for key in self.resources_in(section, env):
                base: tuple[str | int, ...] = (section, key)
                context: dict[str, Any] = {"env": env, "key": key, "vars": spec.vars}
                fields = _DECLARE[section](self, env, key, context, names)
                context["name"] = fields["name"]
                resource = self.model.section(section)[key]
                outputs = []
                for i, output in enumerate(resource.outputs):
                    target = self.resolve_output(env, key, i, output, context, section=section, value=fields["value"])
                    owner_label = f"{section}.{key}"
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
                            dotenv_keys[(target.path, k)] = owner_label
                            dotenv_paths.setdefault(target.path, owner_label)
                    elif target.kind in ("template", "age"):
                        owner = template_paths.get(target.path) or dotenv_paths.get(target.path)
                        if owner is not None:
                            raise self.error(
                                (*base, "outputs", i, "path"),
                                f"path '{target.path}' is also written by {owner} (environment {env})",
                            )
                        template_paths[target.path] = owner_label
                    outputs.append(target)
                del fields["value"]
                out.append(Declared(env=env, key=key, outputs=tuple(outputs), kind=section, **fields))
        return tuple(out)

    def declare_database(self, env: str, key: str, context: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
        from hepinfra.templates import placeholder_db

        db = self.model.databases[key]
        base = ("databases", key)
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
        return {
            "name": name,
            "engine": db.engine,
            "rotate_every": db.rotate_every,
            "value": {"db": placeholder_db(db.engine, name)},
            "verify": self.verify_setting(key, db),
            "verify_timeout": db.verify_timeout,
            "after_rotate": self.hook_argv(key, db, {**context, "name": name}),
            "after_rotate_timeout": db.after_rotate_timeout,
            "hook_scrub": tuple(self.credential_vars()) if db.after_rotate else (),
            "hook_pass_env": self.pass_env(db.after_rotate_pass_env, ("databases", key, "after_rotate_pass_env")),
        }

    def verify_setting(self, key: str, db: DatabaseSpec) -> bool:
        """``verify`` as declared, else ``defaults.verify`` (which leaves mongo out); checked offline:
        an engine hepinfra cannot connect to, or a driver that is not installed, is an error."""
        import importlib.util

        node: tuple[str | int, ...] = ("databases", key, "verify")
        if db.verify is None:
            wanted = self.model.defaults.verify and db.engine in VERIFY_DRIVERS
            node = ("defaults", "verify")
        else:
            wanted = db.verify
        if not wanted:
            return False
        if db.engine not in VERIFY_DRIVERS:
            raise self.error(
                node,
                f"verify: a {db.engine} database cannot be verified: hepinfra connects with psycopg (postgres) "
                "and PyMySQL (mariadb) only, and hep.gg's mongo needs a driver hepinfra does not ship; set "
                "verify: false",
            )
        module, label = VERIFY_DRIVERS[db.engine]
        if importlib.util.find_spec(module) is None:
            raise self.error(node, f"verify needs {label}, not installed: pip install 'hepinfra[verify]'")
        return True

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

    def hook_argv(self, key: str, db: DatabaseSpec, context: dict[str, Any]) -> tuple[str, ...]:
        out = []
        for i, item in enumerate(db.after_rotate or ()):
            node = ("databases", key, "after_rotate", i)
            self.refuse_secrets_in_argv(item, node, what="an after_rotate argv")
            rendered = self.render(item, {k: context[k] for k in ARGV_VARIABLES if k in context}, node)
            if not rendered or "\x00" in rendered:
                raise self.error(node, "an argv item must not be empty or hold a NUL character")
            out.append(rendered)
        return tuple(out)

    def declare_id(self, env: str, key: str, context: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
        from hepinfra.templates import placeholder_id

        spec = self.model.ids[key]
        return {
            "name": key,
            "engine": spec.type,
            "rotate_every": spec.rotate_every,
            "options": tuple(spec.options.items()),
            "value": {"id": placeholder_id(spec.type)},
        }

    def declare_upload(self, env: str, key: str, context: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
        from hepinfra.templates import placeholder_upload

        spec = self.model.uploads[key]
        node = ("uploads", key, "file")
        if spec.file not in self._uploads:
            try:
                outside = self.may_read_outside(spec.file, spec.allow_outside, node)
                real, raw = self.boundary.read_source(spec.file, allow_outside=outside, limit=UPLOAD_LIMIT)
            except Refused as exc:
                raise self.error(node, f"upload file '{shown(spec.file)}' {exc}") from None
            self.boundary.protect(real, f"the upload source '{shown(spec.file)}'")
            self._uploads[spec.file] = (str(real), hashlib.sha256(raw).hexdigest(), len(raw))
        real_path, digest, size = self._uploads[spec.file]
        self.template_bytes[f"upload:{spec.file}"] = digest.encode()  # a changed file makes saved plans stale
        return {
            "name": key,
            "engine": "file",
            "rotate_every": None,
            "file": spec.file,
            "file_real": real_path,
            "file_digest": digest,
            "allow_outside": spec.allow_outside,
            "value": {"upload": placeholder_upload(spec.file, digest, size)},
        }

    def check_uploads(self, declared: dict[str, tuple[Declared, ...]]) -> None:
        """An upload is public and permanent: its source (real path) is never an output of this manifest
        (any environment's), nor a file Git ignores (often a key or a .env) unless ``allow_ignored``."""
        from hepinfra.safety.git import GitUnavailable, GitView

        outputs = {t.real: t.path for decls in declared.values() for d in decls for t in d.outputs if t.real}
        git = GitView()
        for key, spec in self.model.uploads.items():
            if spec.file not in self._uploads:
                continue  # declared in no environment
            real = self._uploads[spec.file][0]
            node = ("uploads", key, "file")
            shown_as = shown(spec.file)
            if real != str(self.project_dir / spec.file):
                where = Path(real)
                target = where.relative_to(self.project_dir) if where.is_relative_to(self.project_dir) else where
                shown_as += f" (it resolves to '{shown(str(target))}')"
            if real in outputs:
                raise self.error(
                    node,
                    f"{shown_as} is the output '{shown(outputs[real])}' of this manifest: an upload is public and "
                    "permanent; upload a file that holds no secret",
                )
            if spec.allow_ignored:
                continue
            try:
                ignored = False
                for repo in git.repos_of(Path(real)):
                    relative = repo.relative(Path(real))
                    if relative is not None and repo.ignored([relative]):
                        ignored = True
                        break
            except GitUnavailable as exc:
                raise self.error(node, f"cannot tell whether Git ignores {shown_as}: {exc}") from None
            if ignored:
                raise self.error(
                    node,
                    f"{shown_as} is ignored by Git (often a key or a .env): an upload is public and permanent; "
                    "set allow_ignored: true if it is meant to be published",
                )

    def resolve_output(
        self,
        env: str,
        key: str,
        index: int,
        output: DotenvOutput | TemplateOutput | ExecOutput | AwsSecretsManagerOutput | AwsSsmOutput | AgeOutput,
        context: dict[str, Any],
        *,
        section: str = "databases",
        value: dict[str, Any],
    ) -> OutputTarget:
        """``value``: the resource's template variable with placeholder values shaped as the real ones
        (``db`` of the declared engine, with an int port; ``id``; ``upload``), for dry renders."""
        base: tuple[str | int, ...] = (section, key, "outputs", index)
        value_context = {**context, **value}
        if isinstance(output, ExecOutput):
            return self.resolve_exec(base, output, context, value_context)
        if isinstance(output, AwsSecretsManagerOutput | AwsSsmOutput):
            return self.resolve_aws(base, output, context, value_context)
        if isinstance(output, AgeOutput):
            return self.resolve_age(base, output, context, value_context)
        if isinstance(output, DotenvOutput):
            node: tuple[str | int, ...] = (*base, "dotenv")
            path, real = self.check_path(self.render(output.dotenv, context, node), output, node)
            for k, source in output.keys.items():
                self.dry_render(source, value_context, (*base, "keys", k))
            definition: dict[str, Any] = {"kind": "dotenv", "keys": sorted(output.keys.items())}
            readers = tuple(r for r in DOTENV_READERS if r in output.readers)
            if readers != DOTENV_READERS:  # the default leaves the digest as it always was
                definition["readers"] = list(readers)
            keys_tuple = tuple(output.keys.items())
            template, template_source = None, None
        else:
            node = (*base, "path")
            path, real = self.check_path(self.render(output.path, context, node), output, node)
            template = output.template
            template_source = self.template_file(template, (*base, "template"), output.allow_outside)
            self.dry_render(template_source, value_context, (*base, "template"), file=template)
            definition = {"kind": "template", "source": template_source}
            keys_tuple, readers = (), DOTENV_READERS
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
            real=str(real),
            node=node,
            readers=readers,
        )

    def resolve_exec(
        self, base: tuple[str | int, ...], output: ExecOutput, context: dict[str, Any], value_context: dict[str, Any]
    ) -> OutputTarget:
        """An exec output: its argv rendered now (no secret can be in it), its keys dry-run."""
        import shlex

        def argv(items: list[str], field: str) -> tuple[str, ...]:
            out = []
            for i, item in enumerate(items):
                node = (*base, field, i)
                self.refuse_secrets_in_argv(item, node)
                rendered = self.render(item, {k: context[k] for k in ARGV_VARIABLES if k in context}, node)
                if not rendered or "\x00" in rendered:
                    raise self.error(node, "an argv item must not be empty or hold a NUL character")
                out.append(rendered)
            return tuple(out)

        command = argv(output.exec, "exec")
        read = argv(output.read, "read") if output.read else ()
        for k, source in output.keys.items():
            self.dry_render(source, value_context, (*base, "keys", k))
        path = "exec:" + shlex.join(command)
        definition = {"kind": "exec", "argv": command, "read": read, "keys": sorted(output.keys.items()),
                      "pass_env": sorted(output.pass_env), "timeout": output.timeout}  # fmt: skip
        scrub = self.credential_vars()
        pass_env = self.pass_env(output.pass_env, (*base, "pass_env"))
        return OutputTarget(
            kind="exec",
            path=path,
            keys=tuple(output.keys.items()),
            template=None,
            template_source=None,
            mode=0o600,
            allow_tracked=False,
            allow_outside=False,
            definition_digest=hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:32],
            node=(*base, "exec"),
            argv=command,
            read_argv=read,
            timeout=output.timeout,
            pass_env=pass_env,
            scrub=tuple(scrub),
            cwd=str(self.project_dir),
        )

    def resolve_aws(
        self,
        base: tuple[str | int, ...],
        output: AwsSecretsManagerOutput | AwsSsmOutput,
        context: dict[str, Any],
        value_context: dict[str, Any],
    ) -> OutputTarget:
        """An AWS output: its secret name or parameter prefix rendered now, its values dry-run."""
        import importlib.util

        kind = "aws_secretsmanager" if isinstance(output, AwsSecretsManagerOutput) else "aws_ssm"
        node = (*base, kind)
        if importlib.util.find_spec("boto3") is None:
            raise self.error(node, f"the {kind} output needs boto3, not installed: pip install 'hepinfra[aws]'")
        source = output.aws_secretsmanager if isinstance(output, AwsSecretsManagerOutput) else output.aws_ssm
        self.refuse_secrets_in_argv(source, node, what="a secret or parameter name")
        name = self.render(source, {k: context[k] for k in ARGV_VARIABLES if k in context}, node)
        if kind == "aws_secretsmanager" and not _SECRET_NAME.fullmatch(name):
            raise self.error(
                node, f"secret name '{shown(name)}' is not valid: 1 to 512 letters, digits and /_+=.@- only"
            )
        if kind == "aws_ssm":
            longest = max(len(k) for k in (output.keys or {}))
            if (
                not _PARAMETER_PREFIX.fullmatch(name)
                or ("/" in name and not name.startswith("/"))
                or (name.lower().lstrip("/").startswith(("aws", "ssm")) or len(name) + longest > 1011)
            ):
                raise self.error(
                    node,
                    f"parameter prefix '{shown(name)}' is not valid: letters, digits and _.-/ only, starting with '/' "
                    "when it has one, not starting with aws or ssm (reserved), names at most 1011 characters",
                )
        plain = output.value if isinstance(output, AwsSecretsManagerOutput) else None
        keys = tuple(output.keys.items()) if output.keys else (("SecretString", plain or ""),)
        for k, value_source in keys:
            where = (*base, "keys", k) if output.keys else (*base, "value")
            self.dry_render(value_source, value_context, where)
        path = f"{kind}:{output.region + ':' if output.region else ''}{name}"
        definition = {"kind": kind, "name": name, "region": output.region, "keys": sorted(keys),
                      "kms_key_id": output.kms_key_id}  # fmt: skip
        return OutputTarget(
            kind=kind,  # type: ignore[arg-type]
            path=path,
            keys=keys,
            template=None,
            template_source=None,
            mode=0o600,
            allow_tracked=False,
            allow_outside=False,
            definition_digest=hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:32],
            node=node,
            kms_key_id=output.kms_key_id,
            plain=plain is not None,
        )

    def resolve_age(
        self, base: tuple[str | int, ...], output: AgeOutput, context: dict[str, Any], value_context: dict[str, Any]
    ) -> OutputTarget:
        """An age output: a file like a dotenv one, its recipients parsed now (offline)."""
        from hepinfra.outputs.age import recipients as parse_recipients

        node: tuple[str | int, ...] = (*base, "age")
        path, real = self.check_path(self.render(output.age, context, node), output, node)
        if output.recipients_file is not None:
            where = (*base, "recipients_file")
            source = self.template_file(output.recipients_file, where, output.allow_outside)
            found = tuple(ln.strip() for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#"))
        else:
            where, found = (*base, "recipients"), tuple(r.strip() for r in output.recipients or ())
        try:
            parse_recipients(found)
        except ValueError as exc:
            raise self.error(where, str(exc)) from None
        for k, source_text in output.keys.items():
            self.dry_render(source_text, value_context, (*base, "keys", k))
        definition = {"kind": "age", "keys": sorted(output.keys.items()), "recipients": sorted(found),
                      "path": path, "mode": output.mode}  # fmt: skip
        return OutputTarget(
            kind="age",
            path=path,
            keys=tuple(output.keys.items()),
            template=None,
            template_source=None,
            mode=int(output.mode, 8),
            allow_tracked=output.allow_tracked,
            allow_outside=output.allow_outside,
            definition_digest=hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:32],
            real=str(real),
            node=node,
            recipients=found,
        )

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

    def check_path(self, rendered: str, output: _OutputBase, path: tuple[str | int, ...]) -> tuple[str, Path]:
        """The output path as written (POSIX form) and its real path, checked (see safety.paths)."""
        try:
            real = self.boundary.resolve(rendered, allow_outside=output.allow_outside)
        except Refused as exc:
            raise self.error(path, f"output path '{shown(rendered)}' {exc}") from None
        return str(PurePosixPath(rendered)), real

    def check_outputs(self, declared: dict[str, tuple[Declared, ...]]) -> None:
        """Checks across every environment, on real paths (so a link cannot alias two paths):
        no output overwrites the manifest, a template source or a non-regular file; no output
        writes a Git-tracked file unless allowed; no two declarations write the same dotenv key,
        or a file another writes whole. Warns about outputs Git would pick up (untracked, not
        ignored)."""
        from hepinfra.safety.git import GitUnavailable, GitView

        git = GitView()
        whole: dict[str, str] = {}  # real path -> the address writing it whole (template output)
        keyed: dict[tuple[str, str], str] = {}  # (real path, dotenv key) -> the address writing it
        by_file: dict[str, set[str]] = {}  # real path -> addresses writing it
        checked: set[str] = set()
        exposed: dict[Path, OutputTarget] = {}
        remote: dict[tuple[str, ...], str] = {}  # what an AWS output writes -> the address writing it
        for decls in declared.values():
            for decl in decls:
                for target in decl.outputs:
                    if target.kind in REMOTE_KINDS:
                        self._claim_remote(decl, target, remote)
                        continue  # no file of the project
                    real = Path(target.real)
                    if target.real not in checked:
                        try:
                            self.boundary.check_real(real)
                        except Refused as exc:
                            raise self.error(target.node, f"output path '{shown(target.path)}' {exc}") from None
                        checked.add(target.real)
                    try:
                        tracked = git.is_tracked(real)
                    except GitUnavailable as exc:
                        raise self.error(
                            target.node, f"cannot tell whether Git tracks '{shown(target.path)}': {exc}"
                        ) from None
                    if tracked and not target.allow_tracked:
                        raise self.error(
                            target.node,
                            f"output path '{shown(target.path)}' is a file tracked by Git; writing a secret into it "
                            "would commit the secret (run 'git rm --cached' on it and add it to .gitignore, or set "
                            "allow_tracked: true)",
                        )
                    if not tracked and not target.allow_tracked:
                        exposed.setdefault(real, target)
                    self._claim(decl, target, whole, keyed, by_file)
        try:
            for real in git.exposed(exposed):
                log.warning(
                    "%s: output '%s' is not ignored by Git, so 'git add' would commit a secret; add it to .gitignore",
                    decl_where(self, exposed[real]),
                    shown(exposed[real].path),
                )
        except GitUnavailable as exc:
            log.warning("cannot tell whether Git ignores the outputs: %s", exc)

    def _claim_remote(self, decl: Declared, target: OutputTarget, claims: dict[tuple[str, ...], str]) -> None:
        """No two declarations write one SSM parameter, one key of a secret, or a plain secret another
        writes keys of: each apply would overwrite the other's value (regions aside: the same name
        with and without ``region:`` may be one secret)."""
        if target.kind not in ("aws_secretsmanager", "aws_ssm"):
            return
        name = target.path.split(":")[-1]
        rival: str | None = None
        if target.kind == "aws_ssm":
            wanted: list[tuple[str, ...]] = [("ssm", name + key) for key, _ in target.keys]
            checks = wanted
        elif target.plain:
            wanted = [("sm-plain", name)]
            checks = [("sm-plain", name), ("sm-keyed", name)]
        else:
            wanted = [("sm", name, key) for key, _ in target.keys]
            checks = [*wanted, ("sm-plain", name)]
        for claim in checks:
            if claim in claims:
                rival = claims[claim]
                what = "/".join(claim[1:])
                raise self.error(
                    target.node,
                    f"{shown(target.path)}: {shown(what)} is also written by {rival}; two declarations writing one "
                    "value would overwrite each other on every apply",
                )
        for claim in wanted:
            claims[claim] = decl.address
        if target.kind == "aws_secretsmanager" and not target.plain:
            claims.setdefault(("sm-keyed", name), decl.address)

    def _claim(
        self,
        decl: Declared,
        target: OutputTarget,
        whole: dict[str, str],
        keyed: dict[tuple[str, str], str],
        by_file: dict[str, set[str]],
    ) -> None:
        real, me = target.real, decl.address
        others = by_file.setdefault(real, set())
        if me in others:
            raise self.error(
                target.node, f"'{shown(target.path)}' is the same file as another output of {me}; merge the two outputs"
            )
        if target.kind in ("template", "age") and others:
            raise self.error(
                target.node,
                f"'{shown(target.path)}' is also written by {sorted(others)[0]}; a template output writes the whole "
                "file, so the two would overwrite each other on every apply",
            )
        if real in whole:
            raise self.error(
                target.node,
                f"'{shown(target.path)}' is written whole by the template output of {whole[real]}; the two would "
                "overwrite each other on every apply",
            )
        for key, _ in target.keys:
            owner = keyed.setdefault((real, key), me)
            if owner != me:
                raise self.error(
                    (*target.node[:-1], "keys", key),
                    f"key {key} in '{shown(target.path)}' is also written by {owner}; two declarations writing one "
                    "key would overwrite each other's value on every apply",
                    at_key=True,
                )
        if target.kind in ("template", "age"):
            whole[real] = me
        others.add(me)

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
        """Compile and render with placeholder values, so typos fail at validate time, not at apply."""
        from jinja2 import TemplateSyntaxError

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
        except TemplateSyntaxError as exc:
            if file is not None:
                raise self.error(path, f"{file}:{exc.lineno}: {template_error_message(exc)}") from None
            raise self.error(path, template_error_message(exc)) from None
        except Exception as exc:  # any render failure, located at the manifest node
            where = f"{file}: " if file else ""
            raise self.error(path, where + template_error_message(exc)) from None
        self._checked.add(marker)


_DECLARE = {
    "databases": _Resolver.declare_database,
    "ids": _Resolver.declare_id,
    "uploads": _Resolver.declare_upload,
}


def decl_where(resolver: _Resolver, target: OutputTarget) -> str:
    line, col = resolver.values.get(target.node) or (None, None)
    return f"{resolver.filename}:{line}:{col}" if line else resolver.filename


def schema() -> dict[str, Any]:
    """JSON Schema of the manifest, for editors (yaml-language-server)."""
    out = ManifestModel.model_json_schema(mode="validation")
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["title"] = "hepinfra manifest"
    return out
