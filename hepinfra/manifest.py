"""The manifest loader: YAML with positions, the top-level model, error translation, and the order
of resolution.

Owns: the top-level blocks (``version``, ``hepgg``, ``state``, ``defaults``, ``environments``, ``moved``), the
model made from the registries (each kind's section is its ``Kind.spec``; each output is one of the
registered output specs), turning every problem into one ManifestError located as
``file:line:col: key.path: what is wrong (what is allowed)``, and resolving every environment: each
kind in registry order declares its resources (``Kind.declare``), each output resolves itself
(``spec.resolve``), then the checks across environments (``Kind.check``, ``claims``).
Must not: hold a kind's or an output's schema or rules, do network I/O, or read anything but the
manifest and the files it names.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
    field_validator,
)

from hepinfra import yamlpos
from hepinfra.claims import check_outputs
from hepinfra.errors import ManifestError
from hepinfra.moves import Move, MovedSpec
from hepinfra.moves import check as check_moves
from hepinfra.resolution import Resolution
from hepinfra.safety.paths import MANIFEST_LIMIT, Refused, read_regular
from hepinfra.spec import ENV_VAR, IDENT, MODE_HELP, EnvVarName, Ident, RotationSpec, SpecModel
from hepinfra.state.spec import LocalState, PostgresState, S3State, StateSpec
from hepinfra.values import Declared, clip, format_duration
from hepinfra.windows import DEFAULT_MAX_FAILED, RotateWindowSpec

DEFAULT_FILE = "hepinfra.yaml"
log = logging.getLogger("hepinfra.manifest")


# a platform name, or a glob of them (fnmatch: * ? [seq]), that the unmanaged-database warning leaves out
NamePattern = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class DefaultsSpec(SpecModel):
    """Settings every database gets unless it says otherwise."""

    verify: bool = False  # databases of engines hepinfra can connect to (postgres, mariadb); mongo is left out
    after_rotate_once: bool = False  # identical after_rotate hooks of one run's rotations run once, after all
    ignore_unmanaged: list[NamePattern] = []  # every environment's account: not warned about
    # every database's and id's rotation window unless it sets its own (``rotate_window: null``: none)
    rotate_window: RotateWindowSpec | None = None
    max_failed_rotations: int = Field(default=DEFAULT_MAX_FAILED, ge=0)  # 0: a failing rotation is always retried
    rotation: RotationSpec | None = None  # every database's rotation strategy unless it says otherwise


class EnvironmentSpec(SpecModel):
    db_key_env: EnvVarName | None = None
    ignore_unmanaged: list[NamePattern] = []  # added to defaults.ignore_unmanaged
    id_username_env: EnvVarName | None = None  # else HEPGG_ID_USERNAME
    id_token_env: EnvVarName | None = None  # else HEPGG_ID_TOKEN
    upload_token_env: EnvVarName | None = None  # else HEPGG_UPLOAD_TOKEN
    vars: dict[str, Any] = {}


class HepggSpec(SpecModel):
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


def _version(value: Any) -> Any:
    """Only 1 (``version: true`` is not ``1``, though Python's True == 1); anything else is said plainly."""
    if value == 1 and not isinstance(value, bool):
        return value
    from hepinfra.safety.paths import shown

    got = str(value).lower() if isinstance(value, bool) else shown(str(value), 20)
    raise ValueError(f"this hepinfra reads manifest version 1; got {got}")


class ManifestModel(SpecModel):
    """The top-level blocks; each resource kind's section (``databases``, ``ids``, ``uploads``, and any
    registered kind) is added from the registry by ``manifest_model``."""

    version: Annotated[Literal[1], BeforeValidator(_version)]
    hepgg: HepggSpec = HepggSpec()
    state: StateSpec = LocalState()
    defaults: DefaultsSpec = DefaultsSpec()
    environments: Annotated[dict[Ident, EnvironmentSpec], BeforeValidator(_none_as_empty)] = Field(min_length=1)
    moved: list[MovedSpec] = []  # renames, as Terraform's moved {} blocks (``hepinfra.moves``)

    def section(self, name: str) -> dict[str, Any]:
        """A resource kind's declarations (``databases``, ``ids``, ``uploads``), by key."""
        found: dict[str, Any] = getattr(self, name)
        return found


def manifest_model() -> type[ManifestModel]:
    """The manifest's model: the top-level blocks, then one section per registered kind (its spec's
    ``outputs`` made of every registered output kind). Built once per registry."""
    from hepinfra.kinds import KINDS
    from hepinfra.outputs import SPECS

    signature = (tuple(KINDS), tuple(SPECS))
    if _MODELS.get(signature) is None:
        fields: dict[str, Any] = {}
        for section, kind in KINDS.items():
            spec = kind.spec
            assert spec is not None, f"kind {section} declares no spec"
            mapping = dict.__class_getitem__((Ident, _with_outputs(spec)))
            fields[section] = (Annotated[mapping, BeforeValidator(_none_as_empty)], {})
        _MODELS.clear()
        _MODELS[signature] = create_model("ManifestModel", __base__=ManifestModel, **fields)
    return _MODELS[signature]


_MODELS: dict[tuple[tuple[str, ...], tuple[str, ...]], type[ManifestModel]] = {}


def _with_outputs(spec: type[Any]) -> type[Any]:
    """``spec`` itself while its ``outputs`` hold every registered output kind, else a subclass that does."""
    from hepinfra.outputs import SPECS, output_spec

    member = typing.get_args(spec.model_fields["outputs"].annotation)[0]
    union = typing.get_args(typing.get_args(member)[0]) if typing.get_origin(member) is Annotated else ()
    if len(union) == len(SPECS):
        return spec
    outputs: Any = (list.__class_getitem__(output_spec()), [])
    return create_model(spec.__name__, __base__=spec, outputs=outputs)


@dataclass(frozen=True)
class Manifest:
    """A loaded, validated and resolved manifest."""

    path: Path
    project_dir: Path
    model: ManifestModel
    declared: dict[str, tuple[Declared, ...]]  # env -> declarations
    digest: str  # sha256 of the manifest file and every template file it uses
    sources: tuple[str, ...] = ()  # the files it reads besides itself (templates, recipients, uploads), as named
    skipped_outputs: frozenset[str] = frozenset()  # output kinds left out (--skip-local-outputs)
    moves: tuple[Move, ...] = ()  # the ``moved:`` entries, checked, chains followed

    def without_outputs(self, kinds: frozenset[str]) -> Manifest:
        """This manifest with no output of these kinds: neither observed, written nor retired (their
        records in state are left as they are, for the machine that writes them)."""
        if not kinds:
            return self
        declared = {
            env: tuple(
                dataclasses.replace(d, outputs=tuple(t for t in d.outputs if t.kind not in kinds)) for d in decls
            )
            for env, decls in self.declared.items()
        }
        return dataclasses.replace(self, declared=declared, skipped_outputs=self.skipped_outputs | kinds)

    @property
    def environments(self) -> list[str]:
        return list(self.model.environments)

    def env_spec(self, env: str) -> EnvironmentSpec:
        return self.model.environments[env]

    def ignore_unmanaged(self, env: str) -> tuple[str, ...]:
        """Platform names or glob patterns (fnmatch, case-sensitive) of databases on the environment's
        account that the plan does not warn about: ``defaults:``'s, then the environment's own."""
        return (*self.model.defaults.ignore_unmanaged, *self.env_spec(env).ignore_unmanaged)

    def db_key_var(self, env: str) -> tuple[str, ...]:
        """Where the env's database key is read from, in order."""
        spec = self.env_spec(env)
        if spec.db_key_env:
            return (spec.db_key_env,)
        from hepinfra.safety.credentials import db_key_default

        return (db_key_default(env), "HEPGG_DB_KEY")


# --- loading ---------------------------------------------------------------------------------------


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that owns the mapping at ``loc`` (for 'did you mean')."""
    from hepinfra.outputs import SPECS

    tagged = _tagged()
    current: Any = manifest_model()
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if isinstance(part, str) and part in current.model_fields:
                current = current.model_fields[part].annotation
                continue
            if part in SPECS:
                current = tagged[str(part)]
                continue
            return None
        origin = typing.get_origin(current)
        if origin is dict:
            current = typing.get_args(current)[1]
        elif origin is list:
            current = typing.get_args(current)[0]
        elif part in tagged:  # a tagged union: the tag names the member
            current = tagged[str(part)]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _tagged() -> dict[str, type[BaseModel]]:
    """The members of the manifest's tagged unions, by tag: output kinds and state backends."""
    from hepinfra.outputs import SPECS

    return {**SPECS, "local": LocalState, "s3": S3State, "postgres": PostgresState}


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
    from hepinfra.outputs import SPECS

    out: list[str | int] = []
    for i, part in enumerate(loc):
        if i >= 2 and loc[i - 2] == "outputs" and isinstance(loc[i - 1], int) and part in SPECS:
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
    from hepinfra.kinds import KINDS

    for path, (source, what) in doc.typed_keys.items():
        if len(path) == 2 and path[0] in ("environments", *KINDS):
            kind = str(path[0]).removesuffix("s")  # environment, database, id, upload
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
        at_mode = len(path) == 5 and path[2] == "outputs" and path[4] == "mode" and isinstance(path[3], int)
        if at_mode and yamlpos.locate(doc.data, path) == path:
            output = doc.data[path[0]][path[1]]["outputs"][path[3]]
            if not isinstance(output["mode"], str):
                output["mode"] = source


def _times_as_written(doc: yamlpos.Document) -> None:
    """An unquoted ``rotate_window`` time is checked as written: YAML reads ``23:30`` as the number 1410."""
    for path, source in doc.spellings.items():
        if len(path) < 2 or path[-2] != "rotate_window" or path[-1] not in ("start", "end"):
            continue
        if yamlpos.locate(doc.data, path) == path:
            parent = doc.data
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = source


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
    _times_as_written(doc)
    try:
        model = manifest_model().model_validate(data)
    except ValidationError as exc:
        raise _error_from_validation(exc, data, values, keys, filename) from None
    project_dir = file.resolve().parent
    resolver = _Resolver(model, project_dir, filename, values, keys)
    resolver.outside_ok = outside_ok
    declared = {env: resolver.resolve_env(env) for env in model.environments}
    resolver.boundary.protect(project_dir / file.name, "the manifest")
    resolver.boundary.protect(file.resolve(), "the manifest")
    for kind in _kinds().values():
        if kind.check is not None:
            kind.check(resolver, declared)
    check_outputs(resolver, declared)
    moves = check_moves(resolver, declared)
    digest = hashlib.sha256(raw + b"".join(resolver.template_bytes[k] for k in sorted(resolver.template_bytes)))
    sources = tuple(sorted({k.removeprefix("upload:") for k in resolver.template_bytes}))
    return Manifest(file, project_dir, model, declared, digest.hexdigest(), sources, moves=moves)


class _Resolver(Resolution):
    """The order of resolution: every environment, every kind in registry order, every output."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._by_env: dict[str, dict[str, list[str]]] = {}

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
        """Every resource of every kind in ``env``, in registry order (databases, ids, uploads; manifest
        order within a kind). Keys inside a file and whole files are claimed across kinds."""
        from hepinfra.outputs import SPECS

        spec = self.model.environments[env]
        out: list[Declared] = []
        names: dict[str, str] = {}
        dotenv_keys: dict[tuple[str, str], str] = {}
        dotenv_paths: dict[str, str] = {}  # path -> the first resource managing keys in it
        template_paths: dict[str, str] = {}
        for section, kind in _kinds().items():
            for key in self.resources_in(section, env):
                base: tuple[str | int, ...] = (section, key)
                context: dict[str, Any] = {"env": env, "key": key, "vars": spec.vars}
                fields = kind.declare(self, env, key, context, names)
                context["name"] = fields["name"]
                resource = self.model.section(section)[key]
                outputs = []
                for i, output in enumerate(resource.outputs):
                    # value: the kind's template variable with placeholder values shaped as the real ones
                    # (db of the declared engine, with an int port; id; upload), for dry renders
                    target = output.resolve(self, (*base, "outputs", i), context, {**context, **fields["value"]})
                    owner_label = f"{section}.{key}"
                    claims = SPECS[target.kind].claims
                    if claims == "keys":
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
                    elif claims == "whole":
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


def _kinds() -> dict[str, Any]:
    from hepinfra.kinds import KINDS

    return KINDS


def schema() -> dict[str, Any]:
    """JSON Schema of the manifest, for editors (yaml-language-server)."""
    out = manifest_model().model_json_schema(mode="validation")
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["title"] = "hepinfra manifest"
    return out
