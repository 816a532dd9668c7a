"""Typed models of what the hep.gg APIs return.

Owns: the documented response fields, parsed leniently (unknown fields are ignored) but
strictly where hepinfra depends on them (id, name, engine). Secrets are ``SecretStr``.
Must not: do I/O, or echo response values into error messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.alias_generators import to_camel

from hepinfra.errors import ProtocolError
from hepinfra.safety.redact import register

ENGINES = ("mariadb", "postgres", "mongo")
STATUSES = ("active", "over_quota", "disabled")
ID_TYPES = ("uuid", "nanoid", "2fa", "license", "words", "word", "snowflake", "keypair", "cuid")


class _ApiModel(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, alias_generator=to_camel, defer_build=True
    )


# what hep.gg's ids and names look like: ids go into request paths and state, names into messages,
# so an answer outside these shapes is refused as a protocol error, never stored or printed
API_ID = r"^[A-Za-z0-9_-]{1,128}$"
API_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"


class DatabaseSummary(_ApiModel):
    """One entry of List: no secrets."""

    id: str = Field(pattern=API_ID)
    name: str = Field(pattern=API_NAME)
    engine: str = "mariadb"
    db_name: str | None = None
    db_user: str | None = None
    size_bytes: int | None = None
    size_refreshed_at: datetime | None = None
    status: str | None = None
    created_at: datetime | None = None


class DatabaseCredentials(DatabaseSummary):
    """Create, Reveal or Rotate: the summary plus the current password and connection string.

    ``recovered`` is hepinfra's own flag: True when the call's answer was lost and the
    value was recovered by List/Reveal instead (see ``DatabasesClient``); ``taken`` is True when a
    create met 409 and the database that holds the name was found by List (a create that landed
    late, or one made elsewhere after the plan).
    """

    password: SecretStr
    connection_string: SecretStr
    recovered: bool = Field(default=False, exclude=True)
    taken: bool = Field(default=False, exclude=True)

    def model_post_init(self, context: Any) -> None:
        register(self.password.get_secret_value(), self.connection_string.get_secret_value())


class GeneratedId(_ApiModel):
    """One ID Generator result. Both parts are treated as secrets."""

    id: SecretStr = Field(min_length=1)
    private_id: SecretStr | None = Field(default=None, alias="privateID", min_length=1)

    def model_post_init(self, context: Any) -> None:
        register(self.id.get_secret_value(), self.private_id.get_secret_value() if self.private_id else None)


class Upload(_ApiModel):
    url: str = Field(min_length=1)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any, *, service: str, what: str) -> M:
    """Validate ``data`` as ``model``; a mismatch is a ProtocolError naming fields, never values."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise ProtocolError(f"hep.gg {service}: unexpected {what} response: {problems}", service=service) from None
