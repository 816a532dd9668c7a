"""The apply steps of the ``ids`` kind: mint (create and rotate) and render.

Mint: intent durable -> POST to the ID Generator -> the value sealed (AES-256-GCM) and recorded in
state, with the outputs owed, in one durable write -> every output, each on its own -> records.
Killed before the value is recorded, nothing holds the minted value: the next apply mints again
(a mint never invalidates anything on hep.gg). Killed after, the value is in state and the
outputs still owed are written from it: a minted value that was recorded is never lost.
Must not: let the value or its private part reach state in plain text, an event or an error.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hepinfra.apply.executor import Outcome, now
from hepinfra.apply.ledger import with_entry
from hepinfra.apply.moves import move
from hepinfra.errors import AuthError, HepinfraError, ProtocolError
from hepinfra.kinds.ids import options_digest
from hepinfra.kinds.rules import render_note
from hepinfra.state.crypto import Cipher
from hepinfra.state.model import JournalEntry, ManagedId, State
from hepinfra.values import Action, Change

if TYPE_CHECKING:
    from hepinfra.apply.executor import Executor


def _cipher(ex: Executor, change: Change) -> Cipher:
    cipher = ex.access[change.env].cipher
    assert cipher is not None  # fetch.env_access opened it (or refused) before any API call
    return cipher


def opened(cipher: Cipher, managed: ManagedId, address: str, lineage: str) -> dict[str, Any]:
    """The decrypted value (bound to this state's lineage and ``address``), registered with the redactor
    before anything can quote it."""
    from hepinfra.safety.redact import register

    payload: dict[str, Any] = json.loads(cipher.open_id(managed.ciphertext, address, lineage, managed.bound))
    register(payload.get("id"), payload.get("privateID"))
    return payload


def resealed(cipher: Cipher, managed: ManagedId, payload: dict[str, Any], address: str, lineage: str) -> ManagedId:
    """A value sealed before lineage binding, sealed again bound to this state's lineage and its address."""
    if managed.bound is not None:
        return managed
    sealed = cipher.seal_id(json.dumps(payload).encode(), address, lineage)
    return managed.model_copy(update={"ciphertext": sealed, "bound": "lineage+address"})


def _value(payload: dict[str, Any], id_type: str) -> dict[str, Any]:
    """The ``id`` template variable: ``private`` only for a keypair (elsewhere a template using it fails)."""
    value = {"value": payload["id"], "type": id_type}
    if id_type == "keypair":
        value["private"] = payload["privateID"]
    return value


async def mint(ex: Executor, change: Change) -> Outcome:
    from hepinfra.kinds.ids import id_vars

    decl = ex.decl(change)
    cipher = _cipher(ex, change)
    ledger = ex.ledgers[change.env]
    user_var, token_var = id_vars(ex.manifest, change.env, ex.hepgg)
    client = ex.hepgg.idgen(user_var, token_var)
    op = "create" if change.action is Action.CREATE else "rotate"
    intent = JournalEntry(
        op=op, database=decl.ref, name=decl.key, started_at=now(), outputs=tuple(t.path for t in decl.outputs)
    )
    try:
        generated = await ex.calls(change, client).mutate(
            lambda: ex.journal(change, intent, urgent=True),
            lambda c: c.generate(decl.engine, dict(decl.options)),
        )
    except AuthError as exc:  # hep.gg's own words, and which variables to check (never their values)
        raise type(exc)(
            exc.message, hint=f"check {user_var} and {token_var} (dashboard: ID Generator -> API Keys)"
        ) from None
    payload = {"id": generated.id.get_secret_value()}
    if generated.private_id is not None:
        payload["privateID"] = generated.private_id.get_secret_value()
    if decl.engine == "keypair" and not payload.get("privateID"):  # nothing recorded: the intent stays
        raise ProtocolError(f"{change.address}: the ID Generator answered a keypair without its privateID",
                            service="idgen")  # fmt: skip
    digest = ex.digester(change)
    at = now()
    old = ledger.state.ids.get(decl.key)
    managed = ManagedId(
        key=decl.key,
        type=decl.engine,
        options_digest=options_digest(decl),
        ciphertext=cipher.seal_id(json.dumps(payload).encode(), decl.address, ledger.state.lineage),
        bound="lineage+address",
        value_digest=digest(payload["id"]),
        managed_since=old.managed_since if old else at,
        rotated_at=at,
        rotations=old.rotations + 1 if old else 0,
    )
    owed = intent.model_copy(update={"op": "render"})

    def record(s: State) -> State:  # the sealed value and the outputs owed, durable before any output
        journal = tuple(j for j in s.journal if not (j.database == decl.ref and j.op != "render"))
        s = s.model_copy(
            update={"ids": {**s.ids, decl.key: managed}, "journal": journal, "crypto": s.crypto or cipher.crypto}
        )
        return with_entry(s, owed)

    await ledger.commit(record, urgent=True)
    failures, _ = await ex.finish(change, _value(payload, decl.engine), payload["id"], owed, lambda s: s)
    return ex.outcome(change, "minted" if op == "create" else "minted again (the old value is not revoked)", failures)


async def render(ex: Executor, change: Change) -> Outcome:
    decl = ex.decl(change)
    lineage = ex.ledgers[change.env].state.lineage
    managed = ex.ledgers[change.env].state.ids.get(decl.key)
    if managed is None:
        raise HepinfraError(f"{change.address}: not in state any more; make a new plan")
    cipher = _cipher(ex, change)
    payload = opened(cipher, managed, decl.address, lineage)  # before anything is journaled or written
    upgraded = resealed(cipher, managed, payload, decl.address, lineage)
    paths = tuple(o.path for o in change.outputs)
    intent = JournalEntry(op="render", database=decl.ref, name=decl.key, started_at=now(), outputs=paths)
    if paths:
        await ex.journal(change, intent)
    keep_digest = ex.keep_digest(change, ex.digester(change)(payload["id"]))

    def keep_current(s: State) -> State:  # and a value sealed the old way, sealed again bound to this state
        s = keep_digest(s)
        held = s.ids.get(decl.key)
        if upgraded is managed or held is None or held.ciphertext != managed.ciphertext:
            return s
        new = upgraded.model_copy(update={"value_digest": held.value_digest})
        return s.model_copy(update={"ids": {**s.ids, decl.key: new}})

    failures, _ = await ex.finish(change, _value(payload, managed.type), payload["id"], intent, keep_current)
    return ex.outcome(change, render_note(change) or "nothing left to do", failures)


def moved(access: Any, managed: ManagedId, old: str, new: str, lineage: str) -> ManagedId:
    """The value sealed again under the id's new address (the address is bound into the seal): opened
    under the old one first, so a value that does not open stops the move before anything is written."""
    cipher = access.cipher if access is not None else None
    if cipher is None:
        raise HepinfraError(f"{old}: moving an id needs the state key that sealed it; nothing was moved")
    payload = opened(cipher, managed, old, lineage)
    sealed = cipher.seal_id(json.dumps(payload).encode(), new, lineage)
    return managed.model_copy(update={"ciphertext": sealed, "bound": "lineage+address"})


def rekeyed(old: Cipher, new: Cipher, managed: ManagedId, address: str, lineage: str) -> ManagedId:
    """``state rekey``: the value opened under the old key (one that does not open stops the environment's
    rekey before anything is written) and sealed under the new one, bound to this state and address."""
    payload = opened(old, managed, address, lineage)
    sealed = new.seal_id(json.dumps(payload).encode(), address, lineage)
    return managed.model_copy(update={"ciphertext": sealed, "bound": "lineage+address"})


async def value_of(hub: Any, access: Any, managed: ManagedId, decl: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decrypted from state (no call: hep.gg keeps no copy)."""
    assert access.cipher is not None and access.cipher.lineage is not None
    payload = opened(access.cipher, managed, decl.address, access.cipher.lineage)
    value = _value(payload, managed.type)
    return value, {k: value[k] for k in ("value", "private") if k in value}


STEPS = {
    Action.CREATE: mint,
    Action.ROTATE: mint,
    Action.RENDER: render,
    Action.FORGET: lambda ex, change: ex.forget(change),
    Action.MOVE: move,
}
