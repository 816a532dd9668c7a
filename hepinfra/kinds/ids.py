"""The ``ids`` kind: values minted by the ID Generator (POST https://id.hep.gg/), kept for the life
of the resource.

Owns: the plan rules of ids (mint when missing, mint again when due, asked for, or when the type
or its options change; render; forget) and the ``id`` template variable (``id.value``;
``id.private`` for a keypair; ``id.type``). hep.gg has no Reveal for ids, so the value lives in
state as AES-256-GCM ciphertext (``state.crypto``). Minting again never invalidates the old
value on hep.gg's side: an interrupted mint is simply minted again. Apply steps: ``kinds.ids_apply``.
Must not: do I/O or see a value (only keyed digests).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hepinfra.kinds.base import Kind
from hepinfra.manifest import Declared
from hepinfra.plan import (
    Action,
    Change,
    Diagnostic,
    EnvInput,
    all_outputs,
    base_fields,
    credential_error,
    due,
    forgotten,
)

SECTION = "ids"


def options_digest(decl: Declared) -> str:
    """The type and options a value was minted with: a change of either mints a new value."""
    return hashlib.sha256(json.dumps([decl.engine, list(decl.options)], sort_keys=True).encode()).hexdigest()[:32]


def missing_credentials(manifest: Any, env: str, hepgg: Any) -> str | None:
    """The ID Generator's username and token variables of ``env`` that are not set."""
    from hepinfra.fetch import id_vars

    unset = [v for v in id_vars(manifest, env, hepgg) if not (hepgg.environ.get(v) or "").strip()]
    if not unset:
        return None
    return " and ".join(unset) + (" are" if len(unset) > 1 else " is") + " not set"


def _headline(change: Change) -> str:
    return {
        Action.CREATE: f"will be minted ({change.engine})",
        Action.ADOPT: "will be adopted",
        Action.ROTATE: f"will be minted again ({change.engine}); the outputs get the new value",
        Action.RENDER: "outputs will be rendered",
        Action.FORGET: "will no longer be managed: its value is dropped from state",
        Action.NOOP: "is up to date",
    }[change.action]


def plan(here: EnvInput) -> tuple[list[Change], list[Diagnostic], set[str]]:
    changes: list[Change] = []
    diags: list[Diagnostic] = []
    declared = here.declared(SECTION)
    for decl in declared:
        managed = here.state.ids.get(decl.key)
        pending = {j.op for j in here.state.pending(decl.ref)}
        reasons: list[str] = []
        if managed is None:
            action = Action.CREATE
            reasons.append(
                "an interrupted mint: its value was never recorded or written, so a new one is minted"
                if "create" in pending
                else "not minted yet"
            )
            if here.rotate.wants(here.env, decl.ref):
                reasons.append("requested rotation not needed: a new value is minted anyway")
        else:
            action = Action.ROTATE
            if "rotate" in pending:
                reasons.append(
                    "an interrupted rotation: the value minted then was never recorded or written, so a new one is "
                    "minted (the current value stays valid meanwhile)"
                )
            elif here.rotate.wants(here.env, decl.ref):
                reasons.append("requested")
            elif managed.options_digest != options_digest(decl):
                reasons.append("its type or options changed: a new value is minted")
            elif when := due(decl, managed.rotated_at, here.now):
                reasons.append(when)
        if reasons:
            change = Change(**base_fields(decl), action=action, reasons=tuple(reasons), outputs=all_outputs(
                decl, "with the new value"), retire=here.retired(decl))  # fmt: skip
            changes.append(change)
            diags += credential_error(
                here,
                decl,
                "minting needs the ID Generator's credentials",
                "export them (from the dashboard: ID Generator -> API Keys)",
            )
            continue
        assert managed is not None
        changes.append(here.render_or_noop(decl, managed.value_digest))
    keys = {d.key for d in declared}
    for key, managed in sorted(here.state.ids.items()):
        if key in keys:
            continue
        changes.append(
            forgotten(
                here,
                SECTION,
                key,
                managed.type,
                (
                    "no longer declared: its encrypted value is dropped from state (hep.gg keeps no copy of an id); "
                    "its outputs are left in place"
                ),
            )
        )
    return changes, diags, set()


KIND = Kind(
    section=SECTION,
    var="id",
    plan=plan,
    headline=_headline,
    steps="hepinfra.kinds.ids_apply",
    forgotten="no longer managed; its value is gone from state",
    needs_state_key=True,
    credentials=missing_credentials,
)
