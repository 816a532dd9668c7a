"""The apply steps of ``rotation: alternating`` (plan rules and names: ``kinds.alternating``; SQL: ``verify.roles``).

A rotation, each step durable before the next (``HEPINFRA_TEST_KILL_AT=step:NAME`` kills at the named
points):
1. a new password for the idle role, sealed under ``HEPINFRA_STATE_KEY``, recorded with the role as
   ``incoming`` (journal: ``role-password``) -> the server sets it (the first time: the privilege is
   checked with a real login, then the roles are made) -> ``role-password`` -> a real login as the
   role -> recorded as its password (journal: ``role-activate``) -> ``role-verified``;
2. every output written with the role, verify, the after_rotate hook (``databases_apply``'s sequence)
   -> ``role-activate`` -> the role recorded active;
3. ``--revoke``: the previous role disabled -> recorded (journal: ``role-revoke`` until then).
A killed run resumes at the first unfinished step: the same password is set again (never a second
one), outputs are written again with the incoming role. The role the outputs carry never has its
password changed, and the previous one stays valid until the next rotation (unless revoked once
its successor is published), so two roles are never invalid at once.
Must not: let a role's password reach an event, an error, a log or state in plain text.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from hepinfra.apply.executor import Outcome, Tracker
from hepinfra.apply.executor import now as _now
from hepinfra.apply.ledger import with_entry
from hepinfra.crashpoints import kill_point
from hepinfra.daemon import in_daemon_thread
from hepinfra.errors import HepinfraError
from hepinfra.hepgg.models import DatabaseCredentials
from hepinfra.kinds.alternating import carried, role_names
from hepinfra.safety.redact import register
from hepinfra.state.model import AlternatingRole, AlternatingRoles, JournalEntry, ManagedDatabase, State
from hepinfra.values import Change

if TYPE_CHECKING:
    from hepinfra.apply.executor import Executor
    from hepinfra.state.crypto import Cipher

ROLE_OPS = ("role-password", "role-activate", "role-revoke")


@dataclass(frozen=True)
class Steps:
    """``databases_apply``'s sequence after a remote step, handed in (that module imports this one):
    ``finish`` (outputs, then verify and hook), ``after`` (verify and hook alone), ``outcome``."""

    finish: Callable[..., Awaitable[tuple[list[Any], Any, float]]]
    after: Callable[..., Awaitable[Any]]
    outcome: Callable[..., Outcome]
    nothing_after: Callable[[], Any]


# --- sealing the roles' passwords -----------------------------------------------------------------


def _binding(lineage: str, database_id: str, role: str) -> str:
    """A role password's associated data: this state, this database, this role (a copy opens nowhere else)."""
    return f"hepinfra-role-v1\x00{lineage}\x00{database_id}\x00{role}"


def seal(cipher: Cipher, password: str, lineage: str, database_id: str, role: str) -> str:
    return cipher.seal(password.encode(), _binding(lineage, database_id, role))


def unseal(cipher: Cipher, token: str, lineage: str, database_id: str, role: str) -> str:
    password = cipher.open(token, _binding(lineage, database_id, role)).decode()
    register(password)
    return password


def with_role(creds: DatabaseCredentials, user: str, password: str) -> DatabaseCredentials:
    """hep.gg's credentials of the database with ``user`` and ``password`` in place of its own user's."""
    url = urlsplit(creds.connection_string.get_secret_value())
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{url.netloc.rpartition('@')[2]}"
    return creds.model_copy(
        update={
            "db_user": user,
            "password": type(creds.password)(password),
            "connection_string": type(creds.connection_string)(urlunsplit(url._replace(netloc=netloc))),
        }
    )


def carried_creds(
    cipher: Cipher | None, lineage: str, managed: ManagedDatabase | None, creds: DatabaseCredentials
) -> DatabaseCredentials:
    """What the outputs carry: the carried role's credentials, or hep.gg's own (a single database)."""
    roles = managed.roles if managed is not None else None
    index = carried(roles)
    if roles is None or index is None or managed is None:
        return creds
    role = roles.roles[index]
    if cipher is None or role.ciphertext is None:
        raise HepinfraError(f"databases.{managed.key}: its role's password needs HEPINFRA_STATE_KEY, which opens it")
    return with_role(creds, role.name, unseal(cipher, role.ciphertext, lineage, managed.id, role.name))


# --- the steps ----------------------------------------------------------------------------------------


def _replace(roles: AlternatingRoles, index: int, **update: Any) -> AlternatingRoles:
    changed = list(roles.roles)
    changed[index] = changed[index].model_copy(update=update)
    return roles.model_copy(update={"roles": (changed[0], changed[1])})


class _Run:
    """One alternating rotation of one database (see the module docstring for its steps)."""

    def __init__(self, ex: Executor, change: Change, steps: Steps) -> None:
        assert change.database_id is not None
        self.ex, self.change, self.steps, self.decl = ex, change, steps, ex.decl(change)
        self.ledger = ex.ledgers[change.env]
        cipher = ex.access[change.env].cipher
        assert cipher is not None  # fetch.env_access opened it (or refused) before any API call
        self.cipher, self.database_id = cipher, change.database_id
        self.timeout = self.decl.verify_timeout

    @property
    def held(self) -> ManagedDatabase:
        found = self.ledger.state.databases.get(self.change.key)
        if found is None:
            raise HepinfraError(f"{self.change.address}: not in state any more; make a new plan")
        return found

    def _entry(self, op: str) -> JournalEntry:
        return JournalEntry(op=op, database=self.change.key, name=self.decl.name, database_id=self.database_id,
                            started_at=_now(), outputs=tuple(t.path for t in self.decl.outputs))  # fmt: skip

    async def _commit(self, roles: AlternatingRoles, *, add: str | None = None, drop: tuple[str, ...] = (),
                      extra: dict[str, Any] | None = None, urgent: bool = False) -> None:  # fmt: skip
        key, cipher = self.change.key, self.cipher

        def update(s: State) -> State:
            db = s.databases.get(key)
            if db is None:
                return s
            s = s.model_copy(update={
                "databases": {**s.databases, key: db.model_copy(update={"roles": roles, **(extra or {})})},
                "journal": tuple(j for j in s.journal if not (j.database == key and j.op in drop)),
                "crypto": s.crypto or cipher.crypto,
            })  # fmt: skip
            return with_entry(s, self._entry(add)) if add else s

        await self.ledger.commit(update, urgent=urgent)

    def _open(self, token: str, role: str) -> str:
        return unseal(self.cipher, token, self.ledger.state.lineage, self.database_id, role)

    async def run(self) -> Outcome:
        from hepinfra.verify import roles as sql

        ex, change = self.ex, self.change
        ex.rotated.add(self.database_id)
        ex.trackers.setdefault(change.address, Tracker()).in_flight = True
        hepgg = await ex.calls(change).reveal(self.database_id)  # the managing credential
        m = sql.managing(self.decl.engine, hepgg.connection_string.get_secret_value(), self.decl.name)
        roles = self.held.roles
        said: list[str] = []
        if roles is not None and roles.incoming is None and roles.revoke is not None:  # owed by an earlier run
            roles = await self._revoke(m, roles, said)
            if change.finish_rotation:
                return self.steps.outcome(ex, change, "; ".join(said), [], ran=self.steps.nothing_after())
        switching = roles is None or roles.active is None
        if roles is None or roles.incoming is None:
            roles = await self._start(m, roles, hepgg)
        elif change.revoke_previous and roles.revoke is None and roles.active is not None:
            roles = roles.model_copy(update={"revoke": roles.active})
        assert roles.incoming is not None
        incoming = roles.incoming
        role = roles.roles[incoming]
        if role.pending is not None:
            roles = await self._set_password(m, roles, hepgg)
            role = roles.roles[incoming]
        assert role.ciphertext is not None
        creds = with_role(hepgg, role.name, self._open(role.ciphertext, role.name))
        failures, after = await self._publish(creds, role)
        previous = roles.roles[1 - incoming].name
        note = (
            f"switched to alternating roles: the outputs carry {role.name}"
            if switching
            else f"rotated: {role.name} has a new password and is active; {previous} stays valid until the next "
            "rotation"
        )
        if change.finish_rotation:
            note = "finished an interrupted rotation (no second password): " + note
        if failures:
            return self.steps.outcome(ex, change, note, failures, after=after)
        kill_point("role-activate")
        done = {"rotated_at": _now(), "rotations": self.held.rotations + 1}
        roles = roles.model_copy(update={"active": incoming, "incoming": None})
        await self._commit(roles, drop=ROLE_OPS, add="role-revoke" if roles.revoke is not None else None, extra=done)
        if roles.revoke is not None:
            roles = await self._revoke(m, roles, said)
        if said:
            note += "; " + "; ".join(said)
        return self.steps.outcome(ex, change, note, [], after=after)

    async def _start(self, m: Any, roles: AlternatingRoles | None, hepgg: DatabaseCredentials) -> AlternatingRoles:
        """A new password for the idle role (the first role, when the roles are not made yet: after
        checking the privilege with a real login), sealed and recorded before the server is asked."""
        from hepinfra.verify import roles as sql

        if roles is None or not roles.ready:
            await in_daemon_thread(sql.check_privilege, m, self.timeout)  # nothing made if it is missing
            logins, group = role_names(hepgg.db_user or m.user, self.decl.engine)
            roles = AlternatingRoles(
                group=group, roles=(AlternatingRole(name=logins[0]), AlternatingRole(name=logins[1]))
            )
            incoming = 0
        else:
            assert roles.active is not None
            incoming = 1 - roles.active
        password = secrets.token_urlsafe(24)
        register(password)
        name = roles.roles[incoming].name
        sealed = seal(self.cipher, password, self.ledger.state.lineage, self.database_id, name)
        revoke = roles.active if self.change.revoke_previous and roles.active is not None else None
        roles = _replace(roles, incoming, pending=sealed).model_copy(update={"incoming": incoming, "revoke": revoke})
        await self._commit(roles, add="role-password", urgent=True)
        return roles

    async def _set_password(self, m: Any, roles: AlternatingRoles, hepgg: DatabaseCredentials) -> AlternatingRoles:
        """Set the recorded password on the server (the roles made first, if they are not yet), log in
        as the role, and record it as the role's password."""
        from hepinfra.verify import check_all
        from hepinfra.verify import roles as sql

        assert roles.incoming is not None
        role = roles.roles[roles.incoming]
        assert role.pending is not None
        password = self._open(role.pending, role.name)
        if not roles.ready:
            logins = (roles.roles[0].name, roles.roles[1].name)
            await in_daemon_thread(sql.setup, m, logins, roles.group, password, self.timeout)
        else:
            await in_daemon_thread(sql.set_password, m, role.name, password, self.timeout)
        kill_point("role-password")
        official = hepgg.connection_string.get_secret_value()
        url = with_role(hepgg, role.name, password).connection_string.get_secret_value()
        await check_all(self.decl.engine, [url], official, self.timeout)  # a real login as the role
        digest = self.ex.digester(self.change)(password)
        roles = _replace(roles, roles.incoming, ciphertext=role.pending, pending=None, digest=digest, login=True)
        roles = roles.model_copy(update={"ready": True})
        await self._commit(roles, drop=("role-password",), add="role-activate")
        kill_point("role-verified")
        return roles

    async def _publish(self, creds: DatabaseCredentials, role: AlternatingRole) -> tuple[list[Any], Any]:
        """Every output with the incoming role, verify, the hook; outputs an earlier run wrote with it
        already are not written again (only its owed verify and hook run)."""
        state, key = self.ledger.state, self.change.key
        pending = state.pending(key)
        written = all(
            (r := state.outputs.get(State.output_id(key, t.path))) is not None and r.password_digest == role.digest
            for t in self.decl.outputs
        ) and not any(j.op == "render" for j in pending)
        if not written:
            entry = self._entry("role-activate")
            failures, after, _ = await self.steps.finish(self.ex, self.change, creds, entry, lambda db: db, hook=True)
            return failures, after
        wanted = {"verify": self.decl.verify, "hook": bool(self.decl.after_rotate)}
        owed = tuple(s for s in ("verify", "hook") if wanted[s] and any(j.op == s for j in pending))
        failed: list[Any] = []
        after = await self.steps.after(self.ex, self.change, creds, owed, failed) if owed else None
        return failed, after or self.steps.nothing_after()

    async def _revoke(self, m: Any, roles: AlternatingRoles, said: list[str]) -> AlternatingRoles:
        from hepinfra.verify import roles as sql

        assert roles.revoke is not None
        name = roles.roles[roles.revoke].name
        kill_point("role-revoke")
        sessions = await in_daemon_thread(sql.disable, m, name, self.timeout)
        roles = _replace(roles, roles.revoke, login=False).model_copy(update={"revoke": None})
        await self._commit(roles, drop=("role-revoke",))
        said.append(f"{name} disabled (--revoke); {sessions}")
        return roles


async def rotate(ex: Executor, change: Change, steps: Steps) -> Outcome:
    """Switch a database to alternating roles, rotate them, or finish either (see the module docstring)."""
    return await _Run(ex, change, steps).run()


def rekeyed(old: Cipher, new: Cipher, managed: ManagedDatabase, address: str, lineage: str) -> ManagedDatabase:
    """``state rekey``: every role password (set, or pending) opened under the old key (one that does not
    open stops the environment's rekey before anything is written) and sealed under the new one."""
    roles = managed.roles
    if roles is None:
        return managed
    sealed = []
    for role in roles.roles:
        update = {
            field: seal(new, unseal(old, token, lineage, managed.id, role.name), lineage, managed.id, role.name)
            for field in ("ciphertext", "pending")
            if (token := getattr(role, field)) is not None
        }
        sealed.append(role.model_copy(update=update))
    return managed.model_copy(update={"roles": roles.model_copy(update={"roles": (sealed[0], sealed[1])})})
