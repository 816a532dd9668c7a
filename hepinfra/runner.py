"""Wiring for commands: open a project (manifest, state backend, hep.gg clients), select
environments, parse ``--rotate`` addresses, and make a plan. Saved plan files live here too.

Owns: the glue between the pure core and the I/O edges. Must not: decide changes (plan.py)
or print (cli.py).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from hepinfra import manifest as manifest_mod
from hepinfra.errors import HepinfraError, PlanError, StalePlanError, UsageError, first_validation_error
from hepinfra.fetch import EnvAccess, gather
from hepinfra.fsutil import atomic_write, ensure_hepinfra_dir
from hepinfra.hepgg import Hepgg
from hepinfra.manifest import Manifest
from hepinfra.plan import make_plan
from hepinfra.spec import IDENT
from hepinfra.state.model import State
from hepinfra.values import Plan, RotateRequest, TargetRequest

if TYPE_CHECKING:
    from hepinfra.apply import ApplyResult
    from hepinfra.state.backend import Backend
    from hepinfra.trust import Base


@dataclass
class Project:
    manifest: Manifest
    backend: Backend
    base: Base | None = None  # plan --base: the trusted baseline

    @classmethod
    def open(
        cls, manifest_path: str | Path, *, base_ref: str | None = None, skip_outputs: frozenset[str] = frozenset()
    ) -> Project:
        """``base_ref`` (plan --base): the manifest is a pull request's; REF's manifest decides where
        credentials go. A changed hep.gg URL or state block is refused here, before anything is read
        or contacted."""
        from hepinfra.state import open_backend

        base = outside_ok = None
        if base_ref is not None:
            from hepinfra import trust

            base = trust.open_base(manifest_path, base_ref)
            outside_ok = trust.outside_check(base)
        manifest = manifest_mod.load(manifest_path, outside_ok=outside_ok).without_outputs(skip_outputs)
        if base is not None:
            everywhere, _ = trust.credential_changes(manifest.model, base)
            if everywhere:
                raise UsageError(trust.refusal(everywhere[0]))
        return cls(manifest, open_backend(manifest.model.state, manifest.project_dir), base)

    def hepgg(self, *, parallelism: int = 16) -> Hepgg:
        return Hepgg.from_env(
            url=self.manifest.model.hepgg.url,
            project_dir=self.manifest.project_dir,
            max_connections=max(parallelism, 4),
        )

    def states(self, envs: Sequence[str]) -> dict[str, State | None]:
        return {env: self.backend.read(env) for env in envs}


def release(backend: Backend, env: str, lock_id: str) -> None:
    """Release a lock in a ``finally`` (``hepinfra.state.bounded.release``: never replaces the run's
    own result or error; says whether the lock was released when the backend stopped answering)."""
    from hepinfra.state.bounded import release as give_back

    give_back(backend, env, lock_id, sys.exc_info()[1])


IDENT_RE = re.compile(IDENT.strip("^$"))  # an environment name, as the manifest allows


def select_environments(manifest: Manifest, requested: Sequence[str]) -> list[str]:
    if not requested:
        return manifest.environments
    unknown = [e for e in requested if e not in manifest.model.environments]
    if unknown:
        raise UsageError(
            f"-e {unknown[0]}: no such environment in {manifest.path}; declared: {', '.join(manifest.environments)}"
        )
    return list(dict.fromkeys(requested))


def parse_rotate(
    manifest: Manifest, envs: Sequence[str], addresses: Sequence[str], limit: int | None = None
) -> RotateRequest:
    """``ENV/KIND.KEY``, ``KIND.KEY`` or ``KEY`` (a database; every selected environment); ``limit``:
    ``--max-rotations``."""
    from dataclasses import replace

    from hepinfra.addresses import rotate_request

    return replace(rotate_request(manifest, envs, addresses), limit=limit)


async def make(
    project: Project,
    hepgg: Hepgg,
    envs: Sequence[str],
    *,
    refresh: bool = True,
    rotate: RotateRequest | None = None,
    now: datetime | None = None,
    targets: TargetRequest | None = None,
) -> tuple[Plan, dict[str, EnvAccess], dict[str, State | None]]:
    states = project.states(envs)
    if now is None:
        from hepinfra.clock import now as clock

        now = clock()
    base = project.base
    if base is None:
        facts, access = await gather(
            project.manifest, states, envs, hepgg, refresh=refresh, now=now, rotate=rotate, targets=targets
        )
        plan = make_plan(project.manifest, states, facts, now=now, rotate=rotate, environments=envs, targets=targets)
        return plan, access, states
    from hepinfra import trust
    from hepinfra.values import Diagnostic, EnvFacts, ReviewItem

    model = project.manifest.model
    _, changed = trust.credential_changes(model, base)
    blocked = {e: Diagnostic(severity="error", env=e, message=trust.refusal(changed[e])) for e in envs if e in changed}
    contacted = [e for e in envs if e not in blocked]
    unreadable = trust.unread(model, base)
    facts, access = await gather(project.manifest, states, contacted, hepgg, refresh=refresh, now=now,
                                 rotate=rotate, unreadable=unreadable, blocked=frozenset(changed),
                                 targets=targets)  # fmt: skip
    facts.update({e: EnvFacts(e, None, refreshed=refresh, error=d) for e, d in blocked.items()})
    plan = make_plan(project.manifest, states, facts, now=now, rotate=rotate, environments=envs, targets=targets)
    notes = []
    for env in contacted:
        for decl in project.manifest.declared[env]:
            targeted = targets is None or targets.covers(env, decl.kind, decl.key)
            for index, target in enumerate(decl.outputs if targeted else ()):
                why = unreadable(decl, target, index)
                if why is not None and (refresh or target.kind not in trust.READ_REMOTELY):
                    message = f"{target.kind} output {target.path}: not read back ({why})"
                    notes.append(Diagnostic(severity="warning", env=env, address=decl.address, message=message))
    review = tuple(ReviewItem(where=r.where, what=r.what) for r in trust.review(project.manifest, base))
    plan = plan.model_copy(update={"base": base.ref, "review": review, "diagnostics": (*plan.diagnostics, *notes)})
    return plan, access, states


def check_plan_out(path: Path, project_dir: Path) -> None:
    """Where a plan file may go (checked before any remote call): never into .hepinfra/ or a Git
    directory, never over a file that is not a plan file (the manifest, a template, a state file)."""
    import os

    from hepinfra.safety.paths import Boundary, Refused, shown

    boundary = Boundary(project_dir)
    try:
        real = boundary.check_real(boundary.resolve(os.path.abspath(path), allow_outside=True))
    except Refused as exc:
        raise UsageError(f"--out {shown(str(path))}: {exc}") from None
    if real.exists():
        try:
            data = json.loads(real.read_bytes())
            is_plan = isinstance(data, dict) and "changes" in data and "manifest_digest" in data
        except (OSError, ValueError):
            is_plan = False
        if not is_plan:
            raise UsageError(
                f"--out {shown(str(path))}: the file exists and is not a hepinfra plan file; not overwritten"
            )


def save_plan(
    plan: Plan, path: Path, rotate: Sequence[str], access: dict[str, EnvAccess], states: dict[str, State | None]
) -> None:
    """The plan, with the options that shaped it (``--rotate``; ``-e`` is its environments), its
    manifest's path relative to the plan file's directory (the project's root, where a plan file
    belongs: never an absolute path or one with '..' for apply to follow), and a signature per
    environment keyed by that environment's secret (``plan_signatures``): whoever can write the file
    but holds no key cannot change what it asks for."""
    import os

    where = Path(os.path.relpath(Path(plan.manifest).resolve(), path.resolve().parent)).as_posix()
    saved = plan.model_copy(update={"manifest": where, "rotate": tuple(rotate), "signatures": {}})
    saved = saved.model_copy(update={"signatures": plan_signatures(saved, access, states)})
    atomic_write(path, saved.model_dump_json(indent=2).encode() + b"\n", 0o600)


def plan_signatures(plan: Plan, access: dict[str, EnvAccess], states: dict[str, State | None]) -> dict[str, str]:
    """env -> an HMAC of the whole plan (its signatures left out) under the environment's digest key,
    for environments that have a secret one (a database key or HEPINFRA_STATE_KEY)."""
    payload = json.dumps(plan.model_dump(mode="json", exclude={"signatures"}), sort_keys=True)
    found = {}
    for env in plan.environments:
        state = states.get(env) or State(environment=env, lineage="none")
        digester = access[env].digester(state) if env in access else None
        if digester is not None and digester.secret:
            found[env] = digester.sign("hepinfra-plan-v1\0" + payload)
    return found


def check_signatures(plan: Plan, access: dict[str, EnvAccess], states: dict[str, State | None], where: str) -> None:
    """A saved plan is applied only with the signature of every environment that has a secret key."""
    wanted = plan_signatures(plan, access, states)
    for env, signature in wanted.items():
        if plan.signatures.get(env) != signature:
            raise StalePlanError(
                f"{where}: the plan file is not signed for environment '{env}' by a runner holding its key "
                "(edited, or made with another key or by an older hepinfra); nothing was applied",
                hint="make a new plan",
            )


def saved_manifest(plan: Plan, path: Path) -> str:
    """The manifest a plan file names, for ``apply PLANFILE`` without -f: relative to the plan file's
    directory and inside it; anything else is refused (a plan file is data that others may write)."""
    from pathlib import PurePosixPath

    named = PurePosixPath(plan.manifest)
    if named.is_absolute() or ".." in named.parts or "\\" in plan.manifest or not plan.manifest.strip():
        raise PlanError(
            f"{path}: the plan names its manifest as {plan.manifest[:200]!r}, not a path inside the plan file's "
            "directory; apply it with -f MANIFEST"
        )
    return str(path.parent / named)


def load_plan(path: Path) -> Plan:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read plan file: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise PlanError(f"{path}: not a hepinfra plan file (not JSON, or nested too deeply)") from None
    if not isinstance(data, dict) or data.get("format_version") != 1:
        raise PlanError(f"{path}: not a hepinfra plan file of format 1")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        raise PlanError(f"{path}: {first_validation_error(exc)}") from None


def check_saved_credentials(manifest: Manifest, plan: Plan, hub: Hepgg) -> None:
    """A saved plan's mints and uploads need the ID Generator's and the Uploader's credentials of the
    runner that applies it: checked before any call (the plan was made where they may have been set)."""
    from hepinfra.fetch import missing_credentials
    from hepinfra.values import Action

    missing: dict[str, dict[str, str]] = {}
    for change in plan.changes:
        if change.action not in (Action.CREATE, Action.ROTATE):
            continue
        if change.env not in missing:
            missing[change.env] = missing_credentials(manifest, change.env, hub)
        problem = missing[change.env].get(change.kind)
        if problem is not None:
            raise UsageError(f"{change.address}: {problem}; nothing was applied")


def settle_seconds() -> float:
    """``HEPINFRA_ROTATE_SETTLE``: seconds after an interrupted rotation's request before hepinfra trusts
    that it never reached hep.gg (default 30: twice the HTTP timeout)."""
    import os

    from hepinfra.apply.executor import SETTLE_S

    raw = os.environ.get("HEPINFRA_ROTATE_SETTLE", "")
    try:
        return max(0.0, float(raw)) if raw.strip() else SETTLE_S
    except ValueError:
        raise UsageError(f"HEPINFRA_ROTATE_SETTLE must be a number of seconds, not {raw[:20]!r}") from None


def saved_skips(saved: Plan) -> frozenset[str]:
    """The output kinds a saved plan left out (``--skip-local-outputs``): only ones this hepinfra knows
    as local, so an edited file cannot hide a remote store's output from the re-plan at apply."""
    from hepinfra.outputs import local_kinds

    unknown = set(saved.skipped_outputs) - local_kinds()
    if unknown:
        raise StalePlanError(f"the plan leaves out output kind '{sorted(unknown)[0]}', which is not a local one")
    return frozenset(saved.skipped_outputs)


@dataclass
class ApplyOptions:
    plan_file: Path | None = None
    envs: Sequence[str] = ()
    rotate: Sequence[str] = ()
    targets: Sequence[str] = ()  # --target: a partial apply of only these resources
    max_rotations: int | None = None  # --max-rotations: due rotations past it are held
    parallelism: int = 8
    lock_timeout: float = 0.0
    refresh: bool = True
    expect_fingerprint: str | None = None  # apply only a plan with this change set (changeset.fingerprint)
    write_back: bool = False  # committed files (age) record what they replace: OutputRecord.write_back_from
    revoke: bool = False  # rotate --revoke: alternating databases disable their previous role


async def apply(
    project: Project,
    options: ApplyOptions,
    *,
    show_plan: Callable[[Plan], None],
    confirm: Callable[[Plan], bool],
    emit: Callable[[dict[str, Any]], None],
) -> tuple[Plan, ApplyResult | None]:
    """Lock, plan (or load and check a saved plan), confirm, execute, unlock."""
    from hepinfra.addresses import target_request
    from hepinfra.apply import Executor, Ledger, check_changes, check_pins, current_remote, remote_digests
    from hepinfra.apply.ledger import forget_replaced
    from hepinfra.fetch import env_access
    from hepinfra.state.backend import LockInfo

    saved: Plan | None = None
    if options.plan_file is not None:
        saved = load_plan(options.plan_file)
        if saved.manifest_digest != project.manifest.digest:
            raise StalePlanError(
                f"{options.plan_file}: the manifest or one of its templates changed since the plan was made",
                hint="make a new plan",
            )
        unknown = [e for e in saved.environments if e not in project.manifest.model.environments]
        if unknown:
            raise StalePlanError(f"{options.plan_file}: environment '{unknown[0]}' is not in the manifest")
        envs = list(saved.environments)
    else:
        envs = select_environments(project.manifest, options.envs)
    locks = {}
    ensure_hepinfra_dir(project.manifest.project_dir)
    async with project.hepgg(parallelism=options.parallelism) as hub:
        try:
            for env in sorted(envs):  # one order everywhere: no deadlock between two applies
                locks[env] = project.backend.lock(env, LockInfo(), options.lock_timeout)
            if saved is not None:
                plan = saved
                states = project.states(envs)
                access = {env: env_access(project.manifest, env, hub, states[env]) for env in envs}
                missing = [a for a in access.values() if a.needs_key and a.key is None]
                if missing:
                    raise UsageError(f"no database key for environment '{missing[0].env}': export {missing[0].source}")
                check_saved_credentials(project.manifest, saved, hub)
                rows = await current_remote(hub, access, envs)
                check_pins(plan, states, remote_digests(rows))
                check_changes(plan, project.manifest, states, rows)
                check_signatures(saved, access, states, str(options.plan_file))
                # the file is data, not orders: plan again as it was made (-e, --rotate, refresh) and
                # apply only if every change is the same; what is applied is the plan made now
                from hepinfra.apply.pins import check_same

                rotate = parse_rotate(project.manifest, envs, saved.rotate, saved.max_rotations)
                targets = target_request(project.manifest, envs, saved.targets, states.get, rotate)
                plan, access, states = await make(
                    project, hub, envs, refresh=saved.refreshed, rotate=rotate, targets=targets
                )
                check_same(saved, plan, str(options.plan_file))
                plan = plan.model_copy(update={"created_at": saved.created_at})
            else:
                rotate = parse_rotate(project.manifest, envs, options.rotate, options.max_rotations)
                rotate = rotate.revoking(options.revoke)
                targets = target_request(project.manifest, envs, options.targets, project.backend.read, rotate)
                plan, access, states = await make(
                    project, hub, envs, refresh=options.refresh, rotate=rotate, targets=targets
                )
                show_plan(plan)
                if options.expect_fingerprint is not None:
                    from hepinfra.changeset import check_fingerprint

                    check_fingerprint(plan, options.expect_fingerprint)
            if plan.errors:
                from hepinfra.render import error_lines

                lines = error_lines(plan)
                more = f" (and {len(lines) - 1} more error(s): run 'hepinfra plan')" if len(lines) > 1 else ""
                raise PlanError(f"{lines[0]}{more}; nothing was applied")
            if plan.settled_write_backs:  # merged write-backs: their records forget what they replaced
                await forget_replaced(project.backend, plan.settled_write_backs, states)
            if not plan.has_changes:
                return plan, None
            if saved is None and not confirm(plan):
                raise UsageError("apply cancelled; nothing was changed")
            ledgers = {env: Ledger(project.backend, env, states[env] or State(environment=env)) for env in envs}
            executor = Executor(
                plan,
                project.manifest,
                ledgers,
                hub,
                access,
                parallelism=options.parallelism,
                emit=emit,
                settle_s=settle_seconds(),
                write_back=options.write_back,
            )
            return plan, await executor.run()
        finally:
            for env, lock in locks.items():
                release(project.backend, env, lock.id)


# --- state repairs and explicit value requests ------------------------------------------------------


def remove_from_state(
    project: Project, targets: Sequence[tuple[str, str, str]], timeout: float
) -> list[tuple[str, str, str]]:
    """Stop managing (env, kind, key) resources under each environment's lock; nothing changes on hep.gg."""
    from hepinfra.state.backend import LockInfo
    from hepinfra.values import ref_of

    removed: list[tuple[str, str, str]] = []
    for env in dict.fromkeys(e for e, _, _ in targets):
        mine = [(kind, key) for e, kind, key in targets if e == env]
        refs = {ref_of(kind, key) for kind, key in mine}
        lock = project.backend.lock(env, LockInfo(), timeout)
        try:
            current = project.backend.read(env)
            missing = [(kind, key) for kind, key in mine if current is None or key not in getattr(current, kind)]
            if missing or current is None:
                kind, key = missing[0]
                raise UsageError(f"{env}/{kind}.{key}: not in the state of environment '{env}'")
            update: dict[str, object] = {
                kind: {k: v for k, v in getattr(current, kind).items() if (kind, k) not in mine}
                for kind in {kind for kind, _ in mine}
            }
            update["outputs"] = {k: v for k, v in current.outputs.items() if v.database not in refs}
            update["journal"] = tuple(j for j in current.journal if j.database not in refs)
            project.backend.write(env, current.model_copy(update=update))
        finally:
            release(project.backend, env, lock.id)
        removed.extend((env, kind, key) for kind, key in mine)
    return removed


def push_state(project: Project, env: str, path: Path, *, force: bool, timeout: float) -> State:
    """Replace an environment's state with a file: same environment, and (unless forced) the same
    lineage and a serial not older than the current one."""
    from hepinfra.errors import StateError
    from hepinfra.state import codec
    from hepinfra.state.backend import LockInfo

    try:
        incoming = codec.decode(path.read_bytes(), str(path))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    if incoming.environment != env:
        raise StateError(f"{path}: holds environment '{incoming.environment}', not '{env}'")
    ensure_hepinfra_dir(project.manifest.project_dir)
    lock = project.backend.lock(env, LockInfo(), timeout)
    try:
        current = project.backend.read(env)
        if current is not None and not force:
            if current.lineage != incoming.lineage:
                raise StateError(
                    f"{path}: lineage {incoming.lineage} differs from the current {current.lineage}; "
                    "use --force to replace it"
                )
            if incoming.serial < current.serial:
                raise StateError(
                    f"{path}: serial {incoming.serial} is older than the current {current.serial}; "
                    "use --force to go back"
                )
        if current is not None and current.lineage != incoming.lineage:
            return project.backend.replace(env, incoming)
        return project.backend.write(env, incoming)
    finally:
        release(project.backend, env, lock.id)


def migrate_state(project: Project, *, force: bool, timeout: float, report: Callable[[str, State, bool], None]) -> None:
    """Copy every environment's local state to the configured backend, holding both locks of each.

    Checked before anything is written: the target is not local, there is a local state, and
    (unless ``force``) the target holds no other state for any of those environments (one equal
    to the local state, lineage, serial and content, is already copied: a rerun after a failure
    resumes). Each copy keeps its lineage and serial (past the target's own serial when forced)
    and is read back to compare. ``report(env, stored, copied)`` follows each environment, as it
    goes, so a failure partway still tells what was copied.
    """
    from hepinfra.errors import StateError
    from hepinfra.state.backend import LockInfo
    from hepinfra.state.local import LocalBackend

    target = project.backend
    if isinstance(target, LocalBackend):
        raise UsageError(
            f"{project.manifest.path}: the state: block names the local backend; set backend: s3 or postgres, "
            "then migrate"
        )
    source = LocalBackend(project.manifest.project_dir / ".hepinfra" / "state")
    envs = [env for env in source.environments() if IDENT_RE.fullmatch(env)]  # file names: only real ones
    if not envs:
        raise UsageError(f"{source.directory}: no local state to migrate")
    held: list[tuple[Backend, str, str]] = []
    try:
        for env in envs:  # sorted: one order everywhere
            held.append((source, env, source.lock(env, LockInfo(), timeout).id))
            held.append((target, env, target.lock(env, LockInfo(), timeout).id))
        states = {env: source.read(env) for env in envs}
        there = {env: target.read(env) for env in envs}

        def copied_already(env: str) -> bool:
            mine, theirs = states[env], there[env]
            return mine is not None and theirs is not None and mine == theirs

        taken = [env for env in envs if there[env] is not None and not copied_already(env)]
        if taken and not force:
            first = there[taken[0]]
            raise StateError(
                f"{target.where} already holds the state of {', '.join(repr(e) for e in taken)} "
                f"('{taken[0]}': serial {first.serial if first else '?'}); nothing was copied",
                hint="use --force to overwrite it",
            )
        done: list[str] = []
        for env in envs:
            state = states[env]
            if state is None:
                continue
            if copied_already(env):
                report(env, state, False)
                continue
            try:
                stored = target.replace(env, state)
                again = target.read(env)
                if again != stored:
                    raise StateError(f"{target.where}: the state of '{env}' read back differs from what was written")
            except HepinfraError as exc:
                so_far = f"; copied before it: {', '.join(done)} (a rerun skips them)" if done else ""
                raise StateError(f"{env}: {exc}{so_far}") from None
            done.append(env)
            report(env, stored, True)
    finally:
        for backend, env, lock_id in reversed(held):
            release(backend, env, lock_id)


async def resource_values(project: Project, env: str, refs: Sequence[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """The values of managed resources, (kind, key) each, with their dotenv keys rendered (or standard
    fields): databases by Reveal, ids decrypted from state, uploads from state. Holds secrets: only
    for ``output`` and ``run``, which a person asks for explicitly."""
    from hepinfra.errors import OutputError
    from hepinfra.fetch import env_access
    from hepinfra.kinds import KINDS
    from hepinfra.templates import render_error, render_string

    current = project.backend.read(env)
    declared = {(d.kind, d.key): d for d in project.manifest.declared[env]}
    out: dict[str, dict[str, str]] = {}
    async with project.hepgg() as hub:
        access = env_access(project.manifest, env, hub, current)
        for kind, key in refs:
            managed = getattr(current, kind).get(key) if current is not None else None
            if managed is None:
                raise UsageError(f"{env}/{kind}.{key} is not managed yet: run 'hepinfra apply' first")
            decl = declared[(kind, key)]
            value, fields = await KINDS[kind].value_of(hub, access, managed, decl)
            context = {"env": env, "key": key, "name": decl.name, "vars": project.manifest.env_spec(env).vars,
                       KINDS[kind].var: value}  # fmt: skip
            values: dict[str, str] = {}
            for target in decl.outputs:
                if target.kind != "dotenv":
                    continue
                for name, source in target.keys:
                    try:
                        values[name] = render_string(source, context)
                    except Exception as exc:  # never the value: the placeholder render describes it
                        raise OutputError(
                            f"{decl.address}: {target.path}: {name}: {render_error(exc, source, context)}"
                        ) from None
            if not values:
                prefix = key.upper().replace("-", "_") + "_"
                values = {prefix + f.upper(): str(v) for f, v in fields.items()}
            out[decl.ref] = values
    return out
