"""The manifest's ``state:`` block: where each environment's state lives.

Owns: the shape and offline checks of the block (``validate`` runs them with no network), and
a one-line description of each place for messages. Must not: import a backend's library, or
hold a credential: AWS credentials come from boto3's default chain, the PostgreSQL URL from
the variable ``url_env`` names (never from the manifest).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # the manifest's ENV_VAR (its errors read the same)
# S3's rules for bucket names: 3-63 characters of lower-case letters, digits, '.' and '-',
# starting and ending with a letter or digit, no '..', not an IP address.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# A prefix of S3's "safe" key characters; objects are <prefix><env>.json, .json.backup and .lock.
_PREFIX = re.compile(r"[A-Za-z0-9!_.*'()/-]{0,512}")
_REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+){1,4}")


def _duration(value: Any) -> Any:
    from hepinfra.values import parse_duration

    seconds = parse_duration(value)
    if not 5 <= seconds <= 7 * 86400:
        raise ValueError("lock_ttl must be between 5s and 7d")
    return seconds


_S = TypeVar("_S")


def _installed(spec: _S, module: str, backend: str) -> _S:
    """The backend's library is installed (offline: found, not imported), else the extra to install."""
    from hepinfra.extras import missing

    problem = missing(module, f"the {backend} state backend", backend)
    if problem:
        raise ValueError(problem)
    return spec


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class LocalState(_Spec):
    """``.hepinfra/state/<env>.json`` next to the manifest (the default)."""

    backend: Literal["local"] = "local"

    @model_validator(mode="before")
    @classmethod
    def _stray(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                owner = _OWNERS.get(str(key))
                if owner:
                    raise ValueError(f"'{key}' is a setting of 'backend: {owner}'; add that line to the state: block")
        return data

    def where(self) -> str:
        return "local (.hepinfra/state)"


class S3State(_Spec):
    """Objects ``<prefix><env>.json`` (and ``.json.backup``, ``.lock``) in one bucket."""

    backend: Literal["s3"]
    bucket: str
    prefix: str = ""
    region: str | None = None
    # a lock whose holder stopped refreshing it this long ago (its runner was killed) is taken over
    lock_ttl: Annotated[
        int,
        BeforeValidator(_duration),
        WithJsonSchema({"type": "string", "pattern": r"^\s*\d+\s*[smhd]\s*$", "examples": ["10m"]}),
    ] = 600

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET.fullmatch(value) or ".." in value or re.fullmatch(r"[0-9.]+", value):
            raise ValueError(
                "not a valid S3 bucket name (3-63 lower-case letters, digits, '.' and '-', "
                "starting and ending with a letter or digit)"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX.fullmatch(value) or value.startswith("/") or "//" in value or ".." in value:
            raise ValueError(
                "a key prefix such as 'prod-infra/': letters, digits and !_.*'()/- only, no leading '/', "
                "no '//' or '..', at most 512 characters"
            )
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.fullmatch(value):
            raise ValueError("not an AWS region name (such as eu-west-1)")
        return value

    @model_validator(mode="after")
    def _library(self) -> S3State:
        return _installed(self, "boto3", "s3")

    def where(self) -> str:
        return f"s3 (s3://{self.bucket}/{self.prefix})"


class PostgresState(_Spec):
    """Rows of ``<schema>.states`` and ``<schema>.locks`` in the database ``$url_env`` points to."""

    backend: Literal["postgres"]
    url_env: Annotated[str, Field(pattern=ENV_NAME, max_length=128)] = "HEPINFRA_STATE_PG"
    schema_: Annotated[str, Field(alias="schema")] = "hepinfra"

    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _no_url(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("url", "dsn", "conninfo", "password", "host", "user"):
                if key in data:
                    raise ValueError(
                        f"'{key}' does not go in the manifest (a URL holds a password): export the libpq URL in "
                        "the variable that url_env names (HEPINFRA_STATE_PG by default)"
                    )
        return data

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value) or value.startswith("pg_"):
            raise ValueError("a schema name of lower-case letters, digits and '_' (at most 63, not starting with pg_)")
        return value

    @model_validator(mode="after")
    def _library(self) -> PostgresState:
        return _installed(self, "psycopg", "postgres")

    def where(self) -> str:
        return f"postgres (schema {self.schema_})"


_OWNERS = {
    "bucket": "s3",
    "prefix": "s3",
    "region": "s3",
    "lock_ttl": "s3",
    "url_env": "postgres",
    "schema": "postgres",
}


def _backend_of(value: Any) -> str | None:
    if isinstance(value, dict):
        backend = value.get("backend", "local")
        return backend if backend in ("local", "s3", "postgres") else None
    return None


StateSpec = Annotated[
    Annotated[LocalState, Tag("local")] | Annotated[S3State, Tag("s3")] | Annotated[PostgresState, Tag("postgres")],
    Discriminator(
        _backend_of,
        custom_error_type="state_backend",
        custom_error_message="'backend' must be one of: local, s3, postgres",
    ),
]
