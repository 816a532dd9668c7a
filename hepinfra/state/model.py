"""State values: managed resources (databases, ids, uploads), output digests, the journal,
lineage and serial.

Owns: the shape of one environment's state and small pure helpers on it.
Must not: hold a secret in plain text (passwords live in hep.gg's Reveal; minted ids only as
AES-256-GCM ciphertext under ``HEPINFRA_STATE_KEY``, see ``state.crypto``; outputs are kept as
keyed digests only), or do I/O.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

FORMAT_VERSION = 1


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


# fields of ManagedDatabase written only when set (older state files read and write back byte for byte)
_ABSENT_DATABASE_FIELDS: tuple[tuple[str, Any], ...] = (("failed_rotations", 0), ("roles", None))


class ManagedDatabase(_Value):
    key: str
    name: str
    id: str
    engine: str
    created_at: datetime | None = None  # on the platform
    managed_since: datetime
    rotated_at: datetime | None = None  # last rotation hepinfra made (or finished)
    rotations: int = 0
    adopted: bool = False
    # the last ``verify:`` check (apply): when, whether it passed, how long it took
    verified_at: datetime | None = None
    verify_ok: bool | None = None
    verify_ms: float | None = None
    # rotations that failed in a row (reset by one that succeeds): at ``max_failed_rotations`` a due one is
    # held. Absent from the file when 0, so an older state file reads and writes back byte for byte
    failed_rotations: int = Field(default=0, ge=0)
    # ``rotation: {strategy: alternating}``: the login roles hepinfra made (``kinds.alternating``). Absent
    # from the file when None, so a state of single-user databases reads and writes back byte for byte
    roles: AlternatingRoles | None = None

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """One serializer per model (pydantic uses only one): every field absent from the file at its default."""
        data: dict[str, Any] = handler(self)
        for name, absent in _ABSENT_DATABASE_FIELDS:
            if name in data and data[name] == absent and type(data[name]) is type(absent):
                del data[name]
        return data


class AlternatingRole(_Value):
    """One login role of an alternating database. Its password has no Reveal (hepinfra made it): it is
    kept here only as AES-256-GCM ciphertext under ``HEPINFRA_STATE_KEY`` (``state.crypto``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]{1,63}$")
    ciphertext: str | None = None  # its password as set on the server (None: it never had one)
    digest: str | None = None  # keyed digest of that password (compared with what an output holds)
    # a new password about to be set (sealed): durable before the server is asked, so a killed run sets
    # the same one again and never a second one
    pending: str | None = None
    login: bool = False  # it may log in (False: never given a password yet, or disabled by --revoke)


class AlternatingRoles(_Value):
    """Two login roles that take turns: the outputs carry ``active``; a rotation sets a new password on
    the other one, publishes it, and only then makes it active (``incoming`` meanwhile). The hep.gg user
    becomes the managing credential that only hepinfra uses."""

    group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]{1,63}$")  # postgres: owns the objects
    roles: tuple[AlternatingRole, AlternatingRole]
    ready: bool = False  # the roles and their grants exist on the server
    active: Literal[0, 1] | None = None  # the role the outputs carry (None: still the hep.gg user)
    incoming: Literal[0, 1] | None = None  # a rotation in progress: the role being given a password, published
    revoke: Literal[0, 1] | None = None  # --revoke: the role disabled once ``incoming`` is active


class ManagedId(_Value):
    """A value minted by the ID Generator. hep.gg has no Reveal for ids: the value is kept here,
    encrypted (``state.crypto``), with a keyed digest to tell whether an output holds it."""

    key: str
    type: str
    options_digest: str  # the type and options it was minted with (a change mints a new value)
    ciphertext: str  # AES-256-GCM of {"id": ..., "privateID": ...}; never the value itself
    value_digest: str  # keyed digest of the value (compared with what an output holds)
    managed_since: datetime
    rotated_at: datetime  # when this value was minted
    rotations: int = 0
    # what the ciphertext's associated data binds: "lineage+address" (this state's lineage and the id's
    # address: it opens in no other state and under no other address). None: sealed before, bound to the
    # address only; opened that way once, and sealed again bound to both at the next write of the id.
    # Absent from the file when None, so an older state file reads and writes back byte for byte.
    bound: Literal["lineage+address"] | None = None

    @model_serializer(mode="wrap")
    def _without_unbound(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("bound", "") is None:
            del data["bound"]
        return data


class ManagedUpload(_Value):
    """A file published through the Uploader. Nothing here is secret: its URL is public."""

    key: str
    file: str  # as declared, relative to the manifest
    url: str
    digest: str  # sha256 of the content uploaded
    size: int
    value_digest: str  # keyed digest of the URL (compared with what an output holds)
    managed_since: datetime
    uploaded_at: datetime
    uploads: int = 1


class StateCrypto(_Value):
    """How this state's ids are encrypted: the key derivation (scrypt of a passphrase with this
    state's salt, or a raw 32-byte key) and a check value that tells a wrong key at once. State is
    input: the scrypt cost is bounded (an edited one must not hang every run)."""

    kdf: Literal["scrypt", "raw"]
    salt: str = Field(pattern=r"^[A-Za-z0-9+/]{22,88}={0,2}$")  # base64 of 16 to 64 random bytes, per state
    n: int = Field(default=2**15, ge=2**14, le=2**17)
    r: int = Field(default=8, ge=8, le=8)
    p: int = Field(default=1, ge=1, le=1)
    check: str = Field(pattern=r"^[A-Za-z0-9+/]{40,200}={0,2}$")  # AES-256-GCM of a fixed text
    # ``state rekey``: the digest key of the key that first sealed this state, sealed under this one (the
    # environment's keyed digests outlive the key). None: derived from this key. Absent from the file
    # when None, so a state never rekeyed reads and writes back byte for byte
    digest_key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9+/]{40,400}={0,2}$")

    @model_serializer(mode="wrap")
    def _without_digest_key(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("digest_key", "") is None:
            del data["digest_key"]
        return data

    @field_validator("n")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value


def _registered_output(kind: str) -> str:
    """An output record names an output kind that has a sink: state that others can write never
    reaches code by a kind it made up."""
    from hepinfra.values import OUTPUT_KINDS

    if kind not in OUTPUT_KINDS:
        raise ValueError(f"'{kind[:40]}' is not an output kind")
    return kind


WRITE_BACK_ABSENT = "absent"  # OutputRecord.write_back_from: no file was there


class OutputRecord(_Value):
    """What hepinfra last wrote to one output of one resource, as keyed digests."""

    database: str  # the resource's reference: its key for a database, ``ids.KEY`` / ``uploads.KEY`` else
    path: str
    kind: Annotated[str, AfterValidator(_registered_output)]  # a registered output kind (its sink retires it)
    digest: str  # keyed digest of the managed content as written
    password_digest: str  # keyed digest of the secret it holds (password, id value, upload URL)
    definition_digest: str  # what the manifest asked for (changes when the template does)
    keys: tuple[str, ...] = ()  # dotenv: the keys hepinfra manages in that file
    key_digests: dict[str, str] = {}  # keyed digest of each key's value, where the sink reads keys back
    # apply --write-back: the keyed digest of the file this write replaced (``absent``: there was
    # none). The file is committed later by a write-back pull request; until then a checkout that
    # still holds the replaced file is a pending write-back, not a change
    write_back_from: str | None = None
    written_at: datetime


class JournalEntry(_Value):
    """An intent recorded before a remote mutation; removed once its result is recorded."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    # create/rotate/render: a remote step or outputs owed; verify: a connection check owed; hook: the
    # after_rotate command owed (both after the outputs of a change were written)
    # role-password/role-activate/role-revoke: an alternating database's rotation (``kinds.alternating``):
    # a new password being set on the idle role, its publication, disabling the previous role
    op: Literal["create", "rotate", "render", "verify", "hook", "role-password", "role-activate", "role-revoke"]
    database: str  # the resource's reference (see OutputRecord.database)
    name: str  # platform name (a database), else the key
    database_id: str | None = None
    started_at: datetime
    outputs: tuple[str, ...] = ()  # paths that must be rendered again if this is interrupted
    password_digest: str | None = None  # rotate: keyed digest of the password before rotating


class State(_Value):
    format_version: int = FORMAT_VERSION
    lineage: str = Field(default_factory=lambda: str(uuid.uuid4()))
    serial: int = 0
    environment: str
    databases: dict[str, ManagedDatabase] = {}
    ids: dict[str, ManagedId] = {}
    uploads: dict[str, ManagedUpload] = {}
    crypto: StateCrypto | None = None
    outputs: dict[str, OutputRecord] = {}
    journal: tuple[JournalEntry, ...] = ()
    # database id -> platform name: databases hepinfra managed here until the manifest stopped declaring
    # them (forgotten at apply); the plan does not warn about them as unmanaged databases on the account.
    # Absent from the file when empty, so an older state file reads and writes back byte for byte
    forgotten: dict[str, str] = {}

    @staticmethod
    def output_id(database: str, path: str) -> str:
        return f"{database}:{path}"

    def same_content(self, other: State) -> bool:
        """Equal but for the serial: a write of this needs no new serial."""
        return self.model_copy(update={"serial": other.serial}) == other

    def pending(self, database: str) -> list[JournalEntry]:
        return [j for j in self.journal if j.database == database]

    def sealed(self) -> bool:
        """Whether it holds values sealed under the state key: ids, or an alternating database's roles."""
        return bool(self.ids) or any(db.roles is not None for db in self.databases.values())
