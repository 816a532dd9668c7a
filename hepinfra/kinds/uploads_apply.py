"""The apply steps of the ``uploads`` kind: upload (create, and again when the content changed) and render.

Upload: the file read and checked (the same real path and content digest the plan saw) ->
intent durable -> POST /upload (never retried once sent: a retry would publish a second copy)
-> URL and digest recorded with the outputs owed, in one durable write -> every output.
Killed after the POST and before the record, the next apply uploads again; the earlier copy
stays published with nothing referring to it (hep.gg cannot delete uploads), and the plan says so.
Must not: upload a file other than the one planned, or show the token.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from hepinfra.apply.executor import Outcome, now
from hepinfra.apply.ledger import with_entry
from hepinfra.apply.moves import move
from hepinfra.errors import AuthError, ForbiddenError, HepinfraError, OutputError, ProtocolError
from hepinfra.kinds.rules import render_note
from hepinfra.state.model import JournalEntry, ManagedUpload, State
from hepinfra.values import Action, Change

if TYPE_CHECKING:
    from hepinfra.apply.executor import Executor
    from hepinfra.values import Declared


def _read(ex: Executor, decl: Declared) -> bytes:
    """The file as planned: the real path checked at load time, and the content digested then."""
    from hepinfra.kinds.uploads import UPLOAD_LIMIT
    from hepinfra.safety.paths import Boundary, Refused, shown

    try:
        real, data = Boundary(ex.manifest.project_dir).read_source(
            decl.file, allow_outside=decl.allow_outside, limit=UPLOAD_LIMIT
        )
    except Refused as exc:
        raise OutputError(f"{decl.address}: upload file '{shown(decl.file)}' {exc}") from None
    if str(real) != decl.file_real or hashlib.sha256(data).hexdigest() != decl.file_digest:
        raise OutputError(
            f"{decl.address}: '{shown(decl.file)}' changed since the plan was made; nothing was uploaded",
            hint="make a new plan",
        )
    return data


def _checked_url(url: str, address: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or not (url.isascii() and url.isprintable()):
        raise ProtocolError(
            f"{address}: the Uploader answered with something that is not an http(s) URL", service="uploader"
        )
    return url


def _value(managed: ManagedUpload) -> dict[str, Any]:
    """The ``upload`` template variable."""
    return {"url": managed.url, "file": managed.file, "sha256": managed.digest, "size": managed.size}


async def upload(ex: Executor, change: Change) -> Outcome:
    from hepinfra.kinds.uploads import upload_var

    decl = ex.decl(change)
    data = _read(ex, decl)
    ledger = ex.ledgers[change.env]
    var = upload_var(ex.manifest, change.env, ex.hepgg)
    client = ex.hepgg.uploader(var)
    op = "create" if change.action is Action.CREATE else "rotate"
    intent = JournalEntry(
        op=op, database=decl.ref, name=decl.key, started_at=now(), outputs=tuple(t.path for t in decl.outputs)
    )
    try:
        url = await ex.calls(change, client).mutate(
            lambda: ex.journal(change, intent, urgent=True), lambda c: c.upload(data, PurePosixPath(decl.file).name)
        )
    except (AuthError, ForbiddenError) as exc:  # hep.gg's own words, and which variable to check
        raise type(exc)(exc.message, hint=f"{exc.hint or 'check the token'}; the token is read from {var}") from None
    at = now()
    old = ledger.state.uploads.get(decl.key)
    managed = ManagedUpload(
        key=decl.key,
        file=decl.file,
        url=_checked_url(url, change.address),
        digest=decl.file_digest,
        size=len(data),
        value_digest=ex.digester(change)(url),
        managed_since=old.managed_since if old else at,
        uploaded_at=at,
        uploads=old.uploads + 1 if old else 1,
    )
    owed = intent.model_copy(update={"op": "render"})

    def record(s: State) -> State:
        journal = tuple(j for j in s.journal if not (j.database == decl.ref and j.op != "render"))
        return with_entry(s.model_copy(update={"uploads": {**s.uploads, decl.key: managed}, "journal": journal}), owed)

    await ledger.commit(record, urgent=True)
    failures, _ = await ex.finish(change, _value(managed), managed.url, owed, lambda s: s)
    return ex.outcome(change, "uploaded" if op == "create" else "uploaded again (new URL)", failures)


async def render(ex: Executor, change: Change) -> Outcome:
    decl = ex.decl(change)
    managed = ex.ledgers[change.env].state.uploads.get(decl.key)
    if managed is None:
        raise HepinfraError(f"{change.address}: not in state any more; make a new plan")
    paths = tuple(o.path for o in change.outputs)
    intent = JournalEntry(op="render", database=decl.ref, name=decl.key, started_at=now(), outputs=paths)
    if paths:
        await ex.journal(change, intent)
    keep_current = ex.keep_digest(change, ex.digester(change)(managed.url))

    failures, _ = await ex.finish(change, _value(managed), managed.url, intent, keep_current)
    return ex.outcome(change, render_note(change) or "nothing left to do", failures)


async def value_of(hub: Any, access: Any, managed: ManagedUpload, decl: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return _value(managed), {"url": managed.url}


STEPS = {
    Action.CREATE: upload,
    Action.ROTATE: upload,
    Action.RENDER: render,
    Action.FORGET: lambda ex, change: ex.forget(change),
    Action.MOVE: move,
}
