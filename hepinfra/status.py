"""``hepinfra status``: one row per resource, from state alone (or with a refreshing plan): when it
was last rotated, when it is due (or overdue), what an interrupted apply still owes, the last
``verify:`` check, and its outputs' health.

Owns: the rows. Pure: state, the manifest's declarations and (``--refresh``) a plan in, rows out.
Must not: hold or show a secret (state has none in plain text; paths and names are shown escaped).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hepinfra.state.model import State
from hepinfra.values import Declared, Plan


@dataclass
class Row:
    address: str
    kind: str
    name: str
    managed: bool
    last_rotated: datetime | None = None
    rotations: int = 0
    next_due: datetime | None = None
    overdue: bool = False
    owed: list[str] = field(default_factory=list)  # journal: create, rotate, render, verify, hook
    verified_at: datetime | None = None
    verify_ok: bool | None = None
    verify_ms: float | None = None
    outputs: list[dict[str, str]] = field(default_factory=list)  # path, kind, health
    declared: bool = True

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        return data


def _output_health(state: State, decl: Declared, refreshed: dict[str, str] | None) -> list[dict[str, str]]:
    owed = {p for j in state.pending(decl.ref) if j.op == "render" for p in j.outputs}
    found = []
    for target in decl.outputs:
        record = state.outputs.get(State.output_id(decl.ref, target.path))
        if refreshed is not None and target.path in refreshed:
            health = refreshed[target.path]
        elif target.path in owed:
            health = "owed by an interrupted apply"
        elif record is None:
            health = "never written"
        elif record.definition_digest != target.definition_digest:
            health = "its definition changed"
        elif refreshed is None:
            health = f"written {record.written_at.isoformat(timespec='seconds')}"
        else:
            health = "ok"
        found.append({"path": target.path, "kind": target.kind, "health": health})
    return found


def rows(declared: dict[str, tuple[Declared, ...]], states: dict[str, State | None], now: datetime,
         plan: Plan | None = None) -> list[Row]:  # fmt: skip
    """The status of every declared resource of ``declared``'s environments (and of every resource
    state still holds that is no longer declared). ``plan``: a refreshing plan, whose output reasons
    replace what state alone can say."""
    from hepinfra.kinds import KINDS

    reasons: dict[str, dict[str, str]] = {}
    if plan is not None:
        for change in plan.changes:
            reasons[change.address] = {o.path: o.reason for o in change.outputs}
    out: list[Row] = []
    for env, decls in declared.items():
        state = states.get(env) or State(environment=env)
        seen: set[tuple[str, str]] = set()
        for decl in decls:
            kind = KINDS[decl.kind]
            managed = getattr(state, kind.section, {}).get(decl.key)
            seen.add((decl.kind, decl.key))
            row = Row(decl.address, decl.kind, decl.name, managed is not None)
            if managed is not None:
                row.last_rotated, row.rotations = kind.history(managed)
                row.verified_at = getattr(managed, "verified_at", None)
                row.verify_ok = getattr(managed, "verify_ok", None)
                row.verify_ms = getattr(managed, "verify_ms", None)
            if decl.rotate_every is not None and row.last_rotated is not None:
                row.next_due = row.last_rotated + timedelta(seconds=decl.rotate_every)
                row.overdue = row.next_due <= now
            row.owed = sorted({j.op for j in state.pending(decl.ref)})
            refreshed = None
            if plan is not None:
                refreshed = reasons.get(decl.address, {})
            row.outputs = _output_health(state, decl, refreshed)
            out.append(row)
        for section, kind in KINDS.items():
            for key, managed in getattr(state, section, {}).items():
                if (section, key) in seen:
                    continue
                last, count = kind.history(managed)
                name = str(getattr(managed, "name", key))
                out.append(Row(f"{env}/{section}.{key}", section, name, True, last, count, declared=False))
    return out


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    seconds = (now - value).total_seconds()
    ahead = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{int(seconds // size)}{unit}"
            break
    else:
        text = f"{int(seconds)}s"
    return f"in {text}" if ahead else f"{text} ago"


def columns(row: Row, now: datetime) -> list[str]:
    """The table's cells for ``row`` (plain text; the CLI styles them)."""
    from hepinfra.safety.paths import shown

    due = "-" if row.next_due is None else ("OVERDUE " if row.overdue else "") + _when(row.next_due, now)
    if row.verify_ok is None:
        verify = "-"
    elif row.verify_ok:
        verify = f"ok {_when(row.verified_at, now)} ({row.verify_ms or 0:.0f} ms)"
    else:
        verify = f"FAILED {_when(row.verified_at, now)}"
    bad = [o for o in row.outputs if not o["health"].startswith(("written", "ok"))]
    if not row.outputs:
        outputs = "-"
    elif bad:
        outputs = "; ".join(f"{shown(o['path'], 60)}: {o['health']}" for o in bad)
    else:
        outputs = f"{len(row.outputs)} ok"
    state = "" if row.managed else "not created "
    if not row.declared:
        state = "not declared "
    return [
        shown(row.address, 80),
        state + (_when(row.last_rotated, now) if row.last_rotated else "-"),
        due,
        ", ".join(row.owed) or "-",
        verify,
        outputs,
    ]


HEADERS = ["address", "last rotated", "next due", "owed", "last verify", "outputs"]
