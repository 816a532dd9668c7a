"""A plan's change set and its fingerprint: what a plan would do, as two plans of the same changes
give it (a pull request's ``plan --base`` and the plan made again at merge), with nothing of when
or in which order it was planned.

Owns: ``change_set`` (saved plans are checked against it at apply) and ``fingerprint`` (``plan
--json``'s ``fingerprint``, ``apply --expect-fingerprint``). Imports only plain values.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from hepinfra.values import Action, Plan

_QUANTITY = re.compile(r"\d+(?:\.\d+)?")


def reason_code(reason: str) -> str:
    """A reason without its quantities (ages, counts, sizes): what it says, not when it was said."""
    return _QUANTITY.sub("#", reason)


def change_set(plan: Plan, *, read_back: bool = True) -> list[dict[str, Any]]:
    """What a plan would do, in one order, as two plans of the same change set give it: addresses,
    actions, reason codes, output targets, retires; never times, ages, serials or the order of
    environments. ``read_back=False`` leaves out why each output is rendered (what a refreshing plan
    read back), keeping which outputs are."""
    items = []
    for c in plan.actionable:
        outputs = sorted([o.path, o.kind, reason_code(o.reason) if read_back else ""] for o in c.outputs)
        items.append(
            {
                "address": c.address,
                "action": c.action.value,
                "name": c.name,
                "engine": c.engine,
                "database_id": c.database_id,
                "reasons": sorted(reason_code(r) for r in c.reasons) if read_back else [],
                "outputs": outputs,
                "retire": sorted(c.retire),
                "retire_left": sorted(c.retire_left),
                "finish_rotation": c.finish_rotation,
                "rotate_after_adopt": c.rotate_after_adopt,
                **({"revoke_previous": True} if c.revoke_previous else {}),
                **({"moved_to": c.moved_to} if c.moved_to is not None else {}),
            }
        )
    return sorted(items, key=lambda item: item["address"])


def fingerprint(plan: Plan) -> str:
    """``sha256:HEX`` of the change set as a pull request's plan and the merge-time plan both compute
    it: addresses, actions, names, engines, database ids, output targets (path and kind), retires,
    and the reason codes of changes other than ``render``; never what was read back (why an output
    is rendered: missing, edited, holding an old value), serials, times, ages or the order of
    environments. Two plans with equal fingerprints make the same remote changes and write the same
    outputs."""
    items = change_set(plan, read_back=False)
    codes = {c.address: sorted(reason_code(r) for r in c.reasons) for c in plan.actionable if c.action != Action.RENDER}
    for item in items:
        item["reasons"] = codes.get(item["address"], [])
    body = json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


NO_CHANGES = "sha256:" + hashlib.sha256(b"[]").hexdigest()  # the fingerprint of a plan with no changes


def check_fingerprint(plan: Plan, expected: str) -> None:
    """``apply --expect-fingerprint``: refuse (changing nothing) a plan whose change set is not the one
    reviewed."""
    from hepinfra.errors import PlanChangedError

    found = fingerprint(plan)
    if found != expected:
        raise PlanChangedError(
            f"plan-changed: the plan made now (fingerprint {found}) is not the one reviewed ({expected[:80]}); "
            "nothing was applied",
            hint="plan again and have the new plan reviewed",
        )
