"""The pgbouncer sink: a PostgreSQL database's upstream credentials as one PgBouncer ``[databases]``
entry, in a file hepinfra owns whole and PgBouncer's own ``pgbouncer.ini`` ``%include``-s; consumers
log in to PgBouncer with a credential of their own (its auth_file), which a rotation never changes.

Owns: rendering the entry (``NAME = host=… port=… dbname=… user=… password='…'``, every value
single-quoted with quotes doubled, as PgBouncer's connection-string parser reads it) and writing it
atomically (0600, the file rules of every file output), and the cut-over protocol (``before_rotate``
and ``after_outputs``, see ``outputs.base.CutOver``) through PgBouncer's admin console
(``pgbouncer_console``): PAUSE before hep.gg's rotate, then RELOAD, RECONNECT and RESUME once the file
holds the new password, so no server login ever uses a dead password and no client fails.
Retire leaves the file with its header and no entry (pgbouncer.ini still includes it).
The ``pgbouncer:`` output's schema and resolution live here too (``PgBouncerOutput``).
Must not: put a value in an exception; hold PgBouncer paused after an error it can act on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.fsutil import atomic_write
from hepinfra.outputs.base import existing_mode, observe_whole_file
from hepinfra.spec import Duration, EnvVarName, FileOutputBase, Ident
from hepinfra.values import ObservedOutput, OutputTarget

if TYPE_CHECKING:
    from hepinfra.resolution import Resolution

HEADER = "; written by hepinfra (a pgbouncer output): rewritten on every rotation, do not edit\n[databases]\n"
DEFAULT_ADMIN_URL_ENV = "PGBOUNCER_ADMIN_URL"


@dataclasses.dataclass(frozen=True)
class PgBouncerTarget(OutputTarget):
    """An output target with what the cut-over needs: the name consumers connect to, the variable
    holding the admin console's URL."""

    database: str = ""
    admin_url_env: str = DEFAULT_ADMIN_URL_ENV


def _quoted(value: str, what: str, target: OutputTarget) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise OutputError(f"{target.path}: the {what} holds a line break or NUL, which a PgBouncer file cannot hold")
    return "'" + value.replace("'", "''") + "'"


def upstream(db: dict[str, Any]) -> dict[str, Any]:
    """What PgBouncer's ``SHOW DATABASES`` lists for the entry (its password aside)."""
    return {"host": db["host"], "port": int(db["port"] or 5432), "database": db["db_name"], "force_user": db["user"]}


def render(target: OutputTarget, context: dict[str, Any]) -> bytes:
    db = context["db"]
    up = upstream(db)
    fields = [f"host={_quoted(str(up['host']), 'host', target)}", f"port={up['port']}",
              f"dbname={_quoted(up['database'], 'database name', target)}",
              f"user={_quoted(up['force_user'], 'user', target)}",
              f"password={_quoted(db['password'], 'password', target)}"]  # fmt: skip
    return f"{HEADER}{_database(target)} = {' '.join(fields)}\n".encode()


def _database(target: OutputTarget) -> str:
    return target.database if isinstance(target, PgBouncerTarget) else target.keys[0][0]


class PgBouncerSink:
    kind = "pgbouncer"

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
        data = render(target, context)
        atomic_write(file, data, existing_mode(file, target.mode), sync_dir=False)
        return digest(data)

    def retire(self, file: Path, keys: tuple[str, ...]) -> None:
        """The header alone: PgBouncer's ``%include`` of it keeps working (it serves no entry after its
        next RELOAD)."""
        if file.exists():
            atomic_write(file, HEADER.encode(), existing_mode(file, 0o600))

    # --- the cut-over (outputs.base.CutOver) ---------------------------------------------------------

    def before_rotate(self, target: OutputTarget) -> None:
        from hepinfra.outputs import pgbouncer_console

        assert isinstance(target, PgBouncerTarget)
        pgbouncer_console.hold(target.admin_url_env, target.database, target.timeout)

    def after_outputs(self, target: OutputTarget, context: dict[str, Any] | None) -> None:
        from hepinfra.outputs import pgbouncer_console

        assert isinstance(target, PgBouncerTarget)
        if context is None:
            pgbouncer_console.release(target.admin_url_env, target.database)
        else:
            pgbouncer_console.cut_over(target.admin_url_env, target.database, upstream(context["db"]))


# --- the manifest's ``pgbouncer:`` output -----------------------------------------------------------


class PgBouncerOutput(FileOutputBase):
    """A PostgreSQL database's upstream credentials as a PgBouncer [databases] entry (whole file), and
    PgBouncer cut over through its admin console on every rotation."""

    kind: ClassVar[str] = "pgbouncer"
    review_fields: ClassVar[tuple[str, ...]] = ("pgbouncer", "database", "admin_url_env", "mode", "allow_tracked")
    claims: ClassVar[str] = "whole"  # keys inside a file, a whole file, or nothing of the project
    remote: ClassVar[bool] = False
    local: ClassVar[bool] = True  # plaintext for the machine PgBouncer runs on
    credential_fields: ClassVar[tuple[str, ...]] = ("admin_url_env",)  # variables holding a credential

    pgbouncer: str = Field(min_length=1)  # the file's path, a template
    database: Ident | None = None  # the name consumers connect to (default: the database's key)
    admin_url_env: EnvVarName = DEFAULT_ADMIN_URL_ENV
    pause_timeout: Duration = 10  # how long PAUSE may wait for server logins in flight

    def resolve(
        self, r: Resolution, base: tuple[str | int, ...], context: dict[str, Any], value_context: dict[str, Any]
    ) -> OutputTarget:
        node: tuple[str | int, ...] = (*base, "pgbouncer")
        db = value_context.get("db")
        if not isinstance(db, dict):
            raise r.error(node, "a pgbouncer output serves databases only")
        if db.get("engine") != "postgres":
            raise r.error(node, f"a pgbouncer output serves postgres databases only (this one is {db.get('engine')})")
        self._check_admin_url_env(r, (*base, "admin_url_env"))
        path, real = r.check_path(r.render(self.pgbouncer, context, node), self, node)
        name = self.database or context["key"]
        definition = {"kind": "pgbouncer", "database": name, "admin_url_env": self.admin_url_env}
        plain = self.file_target(path, real, node, definition, keys=((name, ""),), timeout=self.pause_timeout)
        fields = {f.name: getattr(plain, f.name) for f in dataclasses.fields(OutputTarget)}
        return PgBouncerTarget(**fields, database=name, admin_url_env=self.admin_url_env)

    def _check_admin_url_env(self, r: Resolution, node: tuple[str | int, ...]) -> None:
        """Never one of hepinfra's own credentials (a hep.gg key, the state's): it is dialled as a URL."""
        from hepinfra.safety.credentials import OWN_PREFIXES

        name = self.admin_url_env
        source = r.credential_sources().get(name, "")
        if name.startswith(OWN_PREFIXES) or ".outputs[" not in source:  # else first named by another setting
            raise r.error(
                node,
                f"admin_url_env: {name} is "
                + (f"a credential hepinfra reads ({source})" if source else "hepinfra's own variable")
                + "; name a variable of its own (PGBOUNCER_ADMIN_URL)",
            )
