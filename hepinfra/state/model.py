"""State values: managed databases, output digests, the journal, lineage and serial.

Owns: the shape of one environment's state and small pure helpers on it.
Must not: hold a secret (passwords live in hep.gg's Reveal; outputs are kept as keyed
digests only), or do I/O.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = 1


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


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


class OutputRecord(_Value):
    """What hepinfra last wrote to one output of one database, as keyed digests."""

    database: str  # manifest key
    path: str
    kind: Literal["dotenv", "template", "exec", "aws_secretsmanager", "aws_ssm", "age"]
    digest: str  # keyed digest of the managed content as written
    password_digest: str  # keyed digest of the password it holds
    definition_digest: str  # what the manifest asked for (changes when the template does)
    keys: tuple[str, ...] = ()  # dotenv: the keys hepinfra manages in that file
    key_digests: dict[str, str] = {}  # keyed digest of each key's value, where the sink reads keys back
    written_at: datetime


class JournalEntry(_Value):
    """An intent recorded before a remote mutation; removed once its result is recorded."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    op: Literal["create", "rotate", "render"]
    database: str  # manifest key
    name: str  # platform name
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
    outputs: dict[str, OutputRecord] = {}
    journal: tuple[JournalEntry, ...] = ()

    @staticmethod
    def output_id(database: str, path: str) -> str:
        return f"{database}:{path}"

    def same_content(self, other: State) -> bool:
        """Equal but for the serial: a write of this needs no new serial."""
        return self.model_copy(update={"serial": other.serial}) == other

    def pending(self, database: str) -> list[JournalEntry]:
        return [j for j in self.journal if j.database == database]
