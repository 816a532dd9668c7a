"""Seeding the local hep.gg: accounts, keys, tokens and databases from flags or a YAML file.

Owns: the seed file format (docs/emulator.md) and its validation, and the throwaway database
key of a world started without ``--db-key`` (minted once into ``DATA/db-key``, mode 0600, so a
restart accepts the same key). Seeding is idempotent, so a restart with the same flags over the
same data directory changes nothing.
Must not: print any key or token (``hepinfra emulator`` prints the minted key, once, on purpose).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hepinfra.emulator.store import Store, account_tag
from hepinfra.errors import first_validation_error


class _Seed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class DbKeySeed(_Seed):
    key: str = Field(min_length=1)
    disabled: bool = False


class IdKeySeed(_Seed):
    username: str = Field(min_length=1)
    token: str = Field(min_length=1)


class UploadTokenSeed(_Seed):
    token: str = Field(min_length=1)
    revoked: bool = False


class DatabaseSeed(_Seed):
    name: str = Field(min_length=1, max_length=63)
    engine: Literal["mariadb", "postgres", "mongo"] = "mariadb"
    status: Literal["active", "over_quota", "disabled"] = "active"
    size_bytes: int = 0


class AccountSeed(_Seed):
    id: str | None = None
    status: Literal["active", "suspended", "not_allowed"] = "active"
    slots: int | None = Field(default=None, ge=0)
    uploader: Literal["allowed", "forbidden", "revoked"] = "allowed"
    db_keys: list[DbKeySeed | str] = []
    id_keys: list[IdKeySeed] = []
    upload_tokens: list[UploadTokenSeed | str] = []
    databases: list[DatabaseSeed] = []


class SeedFile(_Seed):
    accounts: list[AccountSeed] = []


class SeedError(ValueError):
    pass


def load_seed(path: Path) -> SeedFile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise SeedError(f"{path}: cannot read seed file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SeedError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise SeedError(f"{path}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SeedError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    try:
        return SeedFile.model_validate(data)
    except ValidationError as exc:
        raise SeedError(f"{path}: {first_validation_error(exc)}") from None


def apply_seed(store: Store, seed: SeedFile, *, default_slots: int, create: Callable[..., object]) -> None:
    """Apply ``seed``; each missing database is made by ``create(account, name, engine, status=,
    size_bytes=)`` (the emulator's own create: real where a server is configured)."""
    for index, acct in enumerate(seed.accounts):
        first_key = next((k if isinstance(k, str) else k.key for k in acct.db_keys), None)
        account_id = account_tag(acct.id or first_key or f"seed-account-{index}")
        store.ensure_account(
            account_id,
            slots=acct.slots if acct.slots is not None else default_slots,
            status=acct.status,
            uploader=acct.uploader,
        )
        for k in acct.db_keys:
            k = DbKeySeed(key=k) if isinstance(k, str) else k
            store.add_db_key(k.key, account_id, disabled=k.disabled)
        for idk in acct.id_keys:
            store.add_id_key(idk.username, idk.token, account_id)
        for t in acct.upload_tokens:
            t = UploadTokenSeed(token=t) if isinstance(t, str) else t
            store.add_upload_token(t.token, account_id, revoked=t.revoked)
        existing = {row["name"] for row in store.list_databases(account_id)}
        for db in acct.databases:
            if db.name not in existing:
                create(account_id, db.name, db.engine, status=db.status, size_bytes=db.size_bytes)


DEFAULT_KEY_FILE = "db-key"


def default_db_key(data_dir: Path) -> str:
    """The database key of a world started without ``--db-key``: minted on first use and kept in
    ``data_dir`` (mode 0600), so every restart over the same data accepts the same key."""
    path = data_dir / DEFAULT_KEY_FILE
    try:
        key = path.read_text().strip()
    except OSError:
        key = ""
    if key:
        return key
    key = "hepgg_db_" + secrets.token_hex(16)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{DEFAULT_KEY_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return key


def seed_from_flags(
    db_keys: list[str],
    id_keys: list[tuple[str, str]],
    upload_tokens: list[str],
    *,
    slots: int,
    default_key: str | None = None,
) -> SeedFile:
    """Each --db-key is its own account; --id-key and --upload-token join the first account.
    Without --db-key, the first account (``flags``) accepts ``default_key`` when one is given."""
    flags = AccountSeed(id="flags", slots=slots, db_keys=[default_key] if default_key else [])
    accounts = [AccountSeed(db_keys=[k], slots=slots) for k in db_keys] or [flags]
    first = accounts[0].model_copy(
        update={
            "id_keys": [IdKeySeed(username=u, token=t) for u, t in id_keys],
            "upload_tokens": list(upload_tokens),
        }
    )
    return SeedFile(accounts=[first, *accounts[1:]])
