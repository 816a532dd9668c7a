"""``rotation: {strategy: alternating}`` of a database: its plan rules and the names of its roles.

Two login roles take turns: the outputs carry the active one; a rotation gives the idle one a new
password, publishes it, and only then makes it active, so the previous password stays valid until
the next rotation (``rotate --revoke`` disables it at once). The hep.gg user becomes the managing
credential that only hepinfra uses. The apply steps are in ``kinds.alternating_apply``; the SQL in
``verify.roles``.
Must not: do I/O or see a password (state holds the roles' passwords sealed, and keyed digests).
"""

from __future__ import annotations

import hashlib
from collections.abc import Set as AbstractSet

from hepinfra.kinds.rules import EnvInput, all_outputs, base_fields
from hepinfra.state.model import AlternatingRoles, ManagedDatabase
from hepinfra.values import Action, Change, Declared, Diagnostic

MAX_ROLE = {"postgres": 63, "mariadb": 80}  # bytes of a role (user) name the server keeps
SUFFIXES = ("_a", "_b")
GROUP_SUFFIX = "_g"

SWITCH = (
    "switching to rotation: alternating: two login roles are made (the hep.gg user becomes hepinfra's "
    "managing credential) and the outputs move to one of them"
)
FINISH = (
    "finishing an interrupted rotation of the alternating roles (the same new password is set again on "
    "the idle role; the role the outputs carry is never changed)"
)
REVOKE = "--revoke: the previous role is disabled once the new one is published"


def role_names(db_user: str, engine: str) -> tuple[tuple[str, str], str | None]:
    """The two login roles and (postgres) the group, named after the database's hep.gg user (roles are
    server-wide in PostgreSQL); a user name too long for its suffixes is cut and given a short hash."""
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in db_user) or "db"
    room = MAX_ROLE[engine] - 2
    if len(stem) > room:
        stem = stem[: room - 9] + "_" + hashlib.sha256(db_user.encode()).hexdigest()[:8]
    logins = (stem + SUFFIXES[0], stem + SUFFIXES[1])
    return logins, (stem + GROUP_SUFFIX if engine == "postgres" else None)


def carried(roles: AlternatingRoles | None) -> int | None:
    """The role the outputs carry (or are being moved to): a rotation's incoming role once its password
    is set and recorded, else the active one; None while they carry the hep.gg user."""
    if roles is None:
        return None
    if roles.incoming is not None and roles.roles[roles.incoming].pending is None and roles.ready:
        return roles.incoming
    return roles.active


def current_digest(roles: AlternatingRoles) -> str | None:
    """The keyed digest of the password the outputs should hold (the carried role's)."""
    index = carried(roles)
    return None if index is None else roles.roles[index].digest


def in_progress(roles: AlternatingRoles | None) -> bool:
    return roles is not None and (roles.incoming is not None or roles.revoke is not None)


def plan(
    here: EnvInput, decl: Declared, managed: ManagedDatabase, database_id: str, pending: AbstractSet[str]
) -> Change | Diagnostic | None:
    """The change of a managed database that uses (or used) alternating roles, or None when the single
    rules decide (a single database; a single rotation to finish first)."""
    roles = managed.roles
    if decl.rotation != "alternating":
        if roles is None:
            return None
        return Diagnostic(
            severity="error",
            env=here.env,
            address=decl.address,
            message="rotation: single on a database that uses alternating roles: switching back is not supported "
            "(its outputs carry one of hepinfra's roles, whose password hep.gg's rotate does not change)",
            hint="keep rotation: {strategy: alternating}",
        )
    base = {**base_fields(decl), "database_id": database_id, "outputs": all_outputs(decl), "retire": here.retired(decl)}
    if in_progress(roles):
        return Change(**base, action=Action.ROTATE, reasons=(FINISH,), finish_rotation=True)
    if "rotate" in pending and (roles is None or roles.active is None):
        return None  # a single rotation was interrupted: it is finished first, then the switch
    if roles is None or roles.active is None:
        return Change(**base, action=Action.ROTATE, reasons=(SWITCH,))
    reasons: list[str] = []
    if here.rotate.wants(here.env, decl.key):
        reasons.append("requested")
    elif when := here.rotation_due(decl, managed.rotated_at or managed.managed_since, managed.failed_rotations):
        reasons.append(when)
    if reasons:
        revoke = here.rotate.revoke and here.rotate.wants(here.env, decl.key)
        reasons.append(
            "alternating: the idle role gets a new password, is published and then made active; the previous "
            "one stays valid until the next rotation"
        )
        if revoke:
            reasons.append(REVOKE)
        return Change(**base, action=Action.ROTATE, reasons=tuple(reasons), revoke_previous=revoke)
    return here.render_or_noop(decl, current_digest(roles), database_id=database_id)


def needs_reveal(managed: ManagedDatabase) -> bool:
    """Whether only a Reveal tells if its outputs are stale: not once the outputs carry a role (state
    holds the digest of its password)."""
    return carried(managed.roles) is None
