"""The ``databases`` kind: hep.gg's database management API (List, Create, Reveal, Rotate).

Owns: the plan rules of databases (create, adopt by name, rotate when due or asked, render,
forget; engine and name checks against List), which databases need a Reveal to plan, and the
``db`` template variable. The apply steps are in ``kinds.databases_apply``.
Must not: do I/O (the fetch step gathers List and Reveal results) or see a password.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from hepinfra.kinds.alternating import SWITCH, needs_reveal
from hepinfra.kinds.alternating import plan as plan_alternating
from hepinfra.kinds.base import Kind
from hepinfra.kinds.rules import EnvInput, all_outputs, base_fields, due, output_reason, render_headline
from hepinfra.outputs import OutputSpec
from hepinfra.spec import PLATFORM_NAME, Duration, EnvVarName, Ident, RotationSpec, SpecModel
from hepinfra.state.model import State
from hepinfra.values import Action, Change, DatabaseSummary, Declared, Diagnostic, EnvFacts, RotateRequest
from hepinfra.windows import RotateWindowSpec, hold, rotation_settings

if TYPE_CHECKING:
    from hepinfra.resolution import Resolution


def _headline(change: Change) -> str:
    return {
        Action.CREATE: f"will be created as '{change.name}' ({change.engine})",
        Action.ADOPT: f"will be adopted: '{change.name}' ({change.engine}, {change.database_id})",
        Action.ROTATE: (
            f"rotation of '{change.name}' will be finished"
            if change.finish_rotation
            else f"password of '{change.name}' will be rotated"
        ),
        Action.RENDER: render_headline(change, f"outputs of '{change.name}'"),
        Action.FORGET: f"will no longer be managed: '{change.name}' stays on hep.gg",
        Action.NOOP: "is up to date",
    }[change.action]


def reveal_candidates(
    manifest: Any,
    states: Mapping[str, State | None],
    facts: Mapping[str, EnvFacts],
    *,
    now: datetime,
    rotate: RotateRequest | None = None,
) -> dict[str, list[str]]:
    """Database ids per env whose outputs look current on disk, so only Reveal can tell if they are stale.

    Databases the plan rotates (due or requested) are left out: their outputs are rewritten anyway.
    """
    wanted: dict[str, list[str]] = {}
    for env, env_facts in facts.items():
        state = states.get(env)
        if state is None or env_facts.databases is None:
            continue
        remote_ids = {d.id for d in env_facts.databases}
        for decl in manifest.declared[env]:
            if decl.kind != KIND.section:
                continue
            managed = state.databases.get(decl.key)
            if managed is None or managed.id not in remote_ids or not decl.outputs or state.pending(decl.key):
                continue
            if rotate and rotate.wants(env, decl.key):
                continue  # rotated anyway: every output is written with the new password
            when = due(decl, managed.rotated_at or managed.managed_since, now)
            capped = rotate is not None and rotate.limit is not None  # --max-rotations may hold any due one
            if when and not capped and not hold(decl, when, managed.failed_rotations, now):
                continue  # due and not held (a closed window, failures in a row): rotated anyway
            if not needs_reveal(managed):
                continue  # its outputs carry one of hepinfra's roles: state holds its password's digest
            if all(
                output_reason(decl, t.path, t.definition_digest, state, env_facts, None) is None for t in decl.outputs
            ):
                wanted.setdefault(env, []).append(managed.id)
    return wanted


def plan(here: EnvInput) -> tuple[list[Change], list[Diagnostic], set[str]]:
    """Create, adopt, rotate, render or forget each database of one environment."""
    env, state, facts, rotate = here.env, here.state, here.facts, here.rotate
    assert facts.databases is not None
    by_id = {d.id: d for d in facts.databases}
    by_name = {d.name: d for d in facts.databases}
    changes: list[Change] = []
    diags: list[Diagnostic] = []
    declared = here.declared(KIND.section)
    claimed: set[str] = set()  # remote ids accounted for
    declared_keys = {d.key for d in declared}
    # databases state holds under a key no longer declared, by id: one adopted again by name under another
    # key is a rename (kept by this plan: never advised for deletion)
    undeclared = {m.id: k for k, m in state.databases.items() if k not in declared_keys}
    renamed: dict[str, str] = {}  # old key -> the key that adopts its database

    for decl in declared:
        managed = state.databases.get(decl.key)
        pending = {j.op for j in state.pending(decl.key)}
        every_output = all_outputs(decl)
        base = base_fields(decl)
        remote = by_id.get(managed.id) if managed else None
        if remote is None and decl.name in by_name and (managed is None or by_name[decl.name].id != managed.id):
            remote_named = by_name[decl.name]
        else:
            remote_named = None
        retire = here.retired(decl)

        if remote is not None:  # managed and still there
            claimed.add(remote.id)
            if remote.name != decl.name:
                diags.append(
                    Diagnostic(
                        severity="error",
                        env=env,
                        address=decl.address,
                        message=(
                            f"the platform name changed from '{remote.name}' to '{decl.name}', "
                            "but hep.gg cannot rename a database"
                        ),
                        hint=f"restore the old name in the manifest, or run 'hepinfra state rm {decl.address}' to "
                        f"manage '{decl.name}' as a new database (the old one stays on the account)",
                    )
                )
                continue
            if not _engine_ok(decl, remote, diags):
                continue
            _status_warning(decl, remote, diags)
            assert managed is not None
            chosen = plan_alternating(here, decl, managed, remote.id, pending)
            if isinstance(chosen, Diagnostic):
                diags.append(chosen)
                continue
            if chosen is not None:
                changes.append(chosen)
                continue
            reasons: list[str] = []
            finish = "rotate" in pending
            if finish:
                reasons.append("finishing an interrupted rotation (Reveal decides: a second rotate never happens)")
            elif rotate.wants(env, decl.key):
                reasons.append("requested")
            elif when := here.rotation_due(
                decl,
                managed.rotated_at or managed.managed_since if managed else None,
                managed.failed_rotations if managed else 0,
            ):
                reasons.append(when)
            if reasons:
                changes.append(
                    Change(
                        **base,
                        action=Action.ROTATE,
                        reasons=tuple(reasons),
                        database_id=remote.id,
                        outputs=every_output,
                        retire=retire,
                        finish_rotation=finish,
                    )
                )
                continue
            changes.append(here.render_or_noop(decl, facts.password_digests.get(remote.id), database_id=remote.id))
            continue

        if remote_named is not None:  # exists on the account, not (or no longer) in state: take it over
            claimed.add(remote_named.id)
            if not _engine_ok(decl, remote_named, diags):
                continue
            _status_warning(decl, remote_named, diags)
            if remote_named.id in undeclared:
                renamed[undeclared[remote_named.id]] = decl.key
                why = (
                    f"held in state as databases.{undeclared[remote_named.id]}, no longer declared: taken over "
                    "under this key without rotating (looks like a rename: a moved: entry keeps its history)"
                )
            elif "create" in pending:
                why = "finishing an interrupted create: found by name"
            elif managed is not None:
                why = "the managed database is gone; another with this name exists on the account"
            else:
                why = "exists on the account but not in state: taken over without rotating"
            reasons = [why]
            rotate_after = rotate.wants(env, decl.key)
            if decl.rotation == "alternating":
                reasons.append("then " + SWITCH)
            elif rotate_after:
                reasons.append("rotation requested: rotated right after adoption")
            changes.append(
                Change(
                    **base,
                    action=Action.ADOPT,
                    reasons=tuple(reasons),
                    database_id=remote_named.id,
                    outputs=every_output,
                    retire=retire,
                    rotate_after_adopt=rotate_after,
                )
            )
            continue

        reasons = ["not on hep.gg yet"]
        if managed is not None:
            reasons = ["the managed database no longer exists on hep.gg (deleted in the dashboard?): created again"]
        if rotate.wants(env, decl.key):
            reasons.append("requested rotation not needed: a new database gets a fresh password")
        if decl.rotation == "alternating":
            reasons.append("then " + SWITCH)
        changes.append(
            Change(**base, action=Action.CREATE, reasons=tuple(reasons), outputs=every_output, retire=retire)
        )

    for key, managed in sorted(state.databases.items()):
        if key in declared_keys:
            continue
        claimed.add(managed.id)
        if key in renamed:
            diags.append(_rename_hint(env, key, renamed[key], managed.name))
        changes.append(
            Change(
                address=f"{env}/databases.{key}",
                env=env,
                key=key,
                name=managed.name,
                engine=managed.engine,
                database_id=managed.id,
                action=Action.FORGET,
                reasons=(_forget_reason(key, renamed.get(key), managed.name),),
            )
        )

    return changes, diags, claimed


def _forget_reason(key: str, kept_as: str | None, name: str) -> str:
    """Why a database no longer declared is forgotten. Deleting it is suggested only when no declaration
    of this plan keeps it: one that adopts it by its platform name under another key is a rename."""
    if kept_as is not None:
        return (
            f"no longer declared under this key; databases.{kept_as} declares its platform name '{name}' and "
            "this plan adopts it there: the database stays in use, hepinfra forgets only this key"
        )
    return (
        "no longer declared: hep.gg cannot delete databases, so it stays on the account "
        "(delete it in the dashboard if it is unused); hepinfra stops managing it "
        "and leaves its outputs in place"
    )


def _rename_hint(env: str, old: str, new: str, name: str) -> Diagnostic:
    return Diagnostic(
        severity="warning",
        env=env,
        address=f"{env}/databases.{old}",
        message=f"looks like a rename: add a moved: entry; databases.{new} declares its platform name '{name}', "
        "so without one this plan forgets it and adopts it again, losing its rotation history",
        hint=f"add to the manifest: moved: [{{from: databases.{old}, to: databases.{new}}}] (or hepinfra state mv "
        f"{env}/databases.{old} {env}/databases.{new})",
    )


def _engine_ok(decl: Declared, remote: DatabaseSummary, diags: list[Diagnostic]) -> bool:
    if remote.engine == decl.engine:
        return True
    diags.append(
        Diagnostic(
            severity="error",
            env=decl.env,
            address=decl.address,
            message=f"'{remote.name}' is a {remote.engine} database on hep.gg, but the manifest declares {decl.engine}",
            hint=f"no API changes an engine: set engine: {remote.engine}, or give this declaration another name "
            "to create a new database",
        )
    )
    return False


def _status_warning(decl: Declared, remote: DatabaseSummary, diags: list[Diagnostic]) -> None:
    if remote.status in ("over_quota", "disabled"):
        hint = (
            "free storage or buy more in the dashboard (Top Up)"
            if remote.status == "over_quota"
            else "the database is disabled on hep.gg; see the dashboard"
        )
        diags.append(
            Diagnostic(
                severity="warning",
                env=decl.env,
                address=decl.address,
                message=f"'{remote.name}' has status {remote.status}",
                hint=hint,
            )
        )


# --- the manifest's ``databases:`` section ----------------------------------------------------------

VERIFY_DRIVERS = {"postgres": ("psycopg", "psycopg 3"), "mariadb": ("pymysql", "PyMySQL")}  # engine -> module


class DatabaseSpec(SpecModel):
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
    after_rotate_once: bool | None = None  # identical hooks of one run's rotations run once (else defaults')
    rotate_window: RotateWindowSpec | None = None  # due rotations wait for it (else defaults'; null: any time)
    max_failed_rotations: int | None = Field(default=None, ge=0)  # else defaults' (3); 0: always retried
    rotation: RotationSpec | None = None  # else defaults.rotation, else single


def declare(r: Resolution, env: str, key: str, context: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    from hepinfra.templates import placeholder_db

    db = r.model.section("databases")[key]
    assert isinstance(db, DatabaseSpec)
    base = ("databases", key)
    name_path = (*base, "name") if db.name else base
    name = r.render(db.name, context, name_path) if db.name else f"{key}-{env}"
    if not PLATFORM_NAME.fullmatch(name):
        raise r.error(
            name_path,
            f"platform name '{name}' (environment {env}) is not valid: 1 to 63 "
            "letters, digits, '_' or '-', starting with a letter or digit",
            at_key=not db.name,
        )
    if name in names:
        raise r.error(
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
        "verify": verify_setting(r, key, db),
        "verify_timeout": db.verify_timeout,
        "after_rotate": hook_argv(r, key, db, {**context, "name": name}),
        "after_rotate_timeout": db.after_rotate_timeout,
        "hook_scrub": tuple(r.credential_vars()) if db.after_rotate else (),
        "hook_pass_env": r.pass_env(db.after_rotate_pass_env, ("databases", key, "after_rotate_pass_env")),
        "hook_once": bool(db.after_rotate)
        and (db.after_rotate_once if db.after_rotate_once is not None else r.model.defaults.after_rotate_once),
        **rotation_settings(r.model.defaults, db, failures=True),
        "rotation": rotation_setting(r, key, db),
    }


def rotation_setting(r: Resolution, key: str, db: DatabaseSpec) -> str:
    """The strategy as declared, else ``defaults.rotation``'s; checked offline: ``alternating`` needs an
    engine with login roles (postgres, mariadb) and its driver (hepinfra logs in to make them)."""
    from hepinfra.extras import missing

    node: tuple[str | int, ...] = ("databases", key, "rotation", "strategy")
    chosen = db.rotation
    if chosen is None:
        chosen, node = r.model.defaults.rotation, ("defaults", "rotation", "strategy")
    strategy = chosen.strategy if chosen is not None else "single"
    if strategy != "alternating":
        return strategy
    if db.engine not in VERIFY_DRIVERS:
        if db.rotation is None:
            return "single"  # a default leaves out the engines it cannot apply to (as defaults.verify does)
        raise r.error(
            node,
            f"rotation: alternating needs login roles hepinfra can make (postgres, mariadb); a {db.engine} "
            "database rotates with hep.gg's single user: set strategy: single",
        )
    problem = missing(VERIFY_DRIVERS[db.engine][0], f"rotation: alternating of a {db.engine} database", "verify")
    if problem:
        raise r.error(node, problem)
    return strategy


def verify_setting(r: Resolution, key: str, db: DatabaseSpec) -> bool:
    """``verify`` as declared, else ``defaults.verify`` (which leaves mongo out); checked offline:
    an engine hepinfra cannot connect to, or a driver that is not installed, is an error."""
    from hepinfra.extras import missing

    node: tuple[str | int, ...] = ("databases", key, "verify")
    if db.verify is None:
        wanted = r.model.defaults.verify and db.engine in VERIFY_DRIVERS
        node = ("defaults", "verify")
    else:
        wanted = db.verify
    if not wanted:
        return False
    if db.engine not in VERIFY_DRIVERS:
        raise r.error(
            node,
            f"verify: a {db.engine} database cannot be verified: hepinfra connects with psycopg (postgres) "
            "and PyMySQL (mariadb) only, and hep.gg's mongo needs a driver hepinfra does not ship; set "
            "verify: false",
        )
    problem = missing(VERIFY_DRIVERS[db.engine][0], f"verify of a {db.engine} database", "verify")
    if problem:
        raise r.error(node, problem)
    return True


def hook_argv(r: Resolution, key: str, db: DatabaseSpec, context: dict[str, Any]) -> tuple[str, ...]:
    return r.argv(db.after_rotate or [], ("databases", key, "after_rotate"), context, "an after_rotate argv")


KIND = Kind(
    section="databases",
    var="db",
    plan=plan,
    headline=_headline,
    steps="hepinfra.kinds.databases_apply",
    needs_database_key=True,
    value_noun="password",
    engine_field="engine",
    in_flight=lambda change: (
        "a database being created is found by name, never created twice"
        if change.action is Action.CREATE
        else "a database being rotated is settled by Reveal, never rotated twice"
    ),
    spec=DatabaseSpec,
    declare=declare,
    review_fields=("verify", "after_rotate", "after_rotate_pass_env", "after_rotate_timeout", "after_rotate_once"),
    history=lambda m: (m.rotated_at or m.managed_since, m.rotations),
)
