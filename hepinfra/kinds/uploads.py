"""The ``uploads`` kind: files published through the Uploader (POST /upload).

Owns: the plan rules of uploads (upload when missing; upload again when the file's content
digest changes or when asked, which gives a new URL; render; forget, since hep.gg cannot delete
an upload) and the ``upload`` template variable (``upload.url``, ``upload.file``,
``upload.sha256``, ``upload.size``). Nothing of an upload is secret. Apply steps:
``kinds.uploads_apply``.
Must not: do I/O (the manifest read and digested the file).
"""

from __future__ import annotations

from typing import Any

from hepinfra.kinds.base import Kind
from hepinfra.plan import Action, Change, Diagnostic, EnvInput, all_outputs, base_fields, credential_error, forgotten

SECTION = "uploads"


def missing_credentials(manifest: Any, env: str, hepgg: Any) -> str | None:
    """The Uploader token variable of ``env``, unset or in no documented form."""
    from hepinfra.errors import UsageError
    from hepinfra.fetch import upload_var
    from hepinfra.hepgg.config import upload_authorization

    var = upload_var(manifest, env, hepgg)
    if not (hepgg.environ.get(var) or "").strip():
        return f"{var} is not set"
    try:
        upload_authorization(hepgg.environ, var)
    except UsageError as exc:
        return exc.message
    return None


def _headline(change: Change) -> str:
    return {
        Action.CREATE: "will be uploaded",
        Action.ADOPT: "will be adopted",
        Action.ROTATE: "upload (content changed)"
        if any(r.startswith("content changed") for r in change.reasons)
        else "will be uploaded again (a new URL)",
        Action.RENDER: "outputs will be rendered",
        Action.FORGET: "will no longer be managed: the file stays published at its URL",
        Action.NOOP: "is up to date",
    }[change.action]


def plan(here: EnvInput) -> tuple[list[Change], list[Diagnostic], set[str]]:
    changes: list[Change] = []
    diags: list[Diagnostic] = []
    declared = here.declared(SECTION)
    for decl in declared:
        managed = here.state.uploads.get(decl.key)
        pending = {j.op for j in here.state.pending(decl.ref)}
        reasons: list[str] = []
        if managed is None:
            action = Action.CREATE
            reasons.append(f"'{decl.file}' is not uploaded yet")
            if "create" in pending:
                reasons.append(
                    "an earlier upload was interrupted before its URL was recorded: it may have left one copy that "
                    "nothing refers to (hep.gg cannot delete uploads)"
                )
        else:
            action = Action.ROTATE
            if managed.digest != decl.file_digest:
                reasons.append(
                    f"content changed: '{decl.file}' is sha256 {decl.file_digest[:12]}…, "
                    f"uploaded was {managed.digest[:12]}…"
                )
            elif "rotate" in pending:
                reasons.append("an interrupted upload: uploaded again (the old URL keeps serving the old content)")
            elif here.rotate.wants(here.env, decl.ref):
                reasons.append("requested: uploaded again (the old URL keeps serving the old content)")
        if reasons:
            changes.append(
                Change(
                    **base_fields(decl),
                    action=action,
                    reasons=tuple(reasons),
                    outputs=all_outputs(decl, "with the new URL"),
                    retire=here.retired(decl),
                )
            )
            diags += credential_error(
                here,
                decl,
                "uploading needs the Uploader's token",
                "copy it from the dashboard: Uploader -> Setup / API Keys",
            )
            continue
        assert managed is not None
        changes.append(here.render_or_noop(decl, managed.value_digest))
    keys = {d.key for d in declared}
    for key in sorted(here.state.uploads):
        if key in keys:
            continue
        changes.append(
            forgotten(
                here,
                SECTION,
                key,
                "file",
                (
                    "no longer declared: hep.gg cannot delete uploads, so the file stays published at its URL; "
                    "hepinfra forgets it and leaves its outputs in place"
                ),
            )
        )
    return changes, diags, set()


KIND = Kind(
    section=SECTION,
    var="upload",
    plan=plan,
    headline=_headline,
    steps="hepinfra.kinds.uploads_apply",
    forgotten="no longer managed; the file stays published at its URL",
    value_noun="URL",
    credentials=missing_credentials,
)
