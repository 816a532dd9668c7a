"""The ``uploads`` kind: files published through the Uploader (POST /upload).

Owns: the plan rules of uploads (upload when missing; upload again when the file's content
digest changes or when asked, which gives a new URL; render; forget, since hep.gg cannot delete
an upload) and the ``upload`` template variable (``upload.url``, ``upload.file``,
``upload.sha256``, ``upload.size``). Nothing of an upload is secret. Apply steps:
``kinds.uploads_apply``.
Must not: do I/O (the manifest read and digested the file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hepinfra.kinds.base import Kind
from hepinfra.kinds.rules import Decision, EnvInput, plan_held
from hepinfra.manifest import Manifest
from hepinfra.values import Action, Change, Declared, Diagnostic

if TYPE_CHECKING:
    from hepinfra.hepgg import Hepgg

SECTION = "uploads"


def upload_var(manifest: Manifest, env: str, hepgg: Hepgg) -> str:
    from hepinfra.hepgg.config import UPLOAD_TOKEN_VAR

    return UPLOAD_TOKEN_VAR if hepgg.local else manifest.env_spec(env).upload_token_env or UPLOAD_TOKEN_VAR


def missing_credentials(manifest: Any, env: str, hepgg: Any) -> str | None:
    """The Uploader token variable of ``env``, unset or in no documented form."""
    from hepinfra.errors import UsageError
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


def _decide(here: EnvInput) -> Decision:
    def decide(decl: Declared, managed: Any, pending: set[str]) -> list[str]:
        if managed is None:
            return [f"'{decl.file}' is not uploaded yet"] + (
                ["an earlier upload was interrupted before its URL was recorded: it may have left one copy that "
                 "nothing refers to (hep.gg cannot delete uploads)"] if "create" in pending else []
            )  # fmt: skip
        if managed.digest != decl.file_digest:
            now, was = decl.file_digest[:12], managed.digest[:12]
            return [f"content changed: '{decl.file}' is sha256 {now}…, uploaded was {was}…"]
        if "rotate" in pending:
            return ["an interrupted upload: uploaded again (the old URL keeps serving the old content)"]
        if here.rotate.wants(here.env, decl.ref):
            return ["requested: uploaded again (the old URL keeps serving the old content)"]
        return []

    return decide


def plan(here: EnvInput) -> tuple[list[Change], list[Diagnostic], set[str]]:
    return plan_held(
        here,
        SECTION,
        _decide(here),
        outputs_reason="with the new URL",
        credentials=(
            "uploading needs the Uploader's token",
            "copy it from the dashboard: Uploader -> Setup / API Keys",
        ),
        forget_reason="no longer declared: hep.gg cannot delete uploads, so the file stays published at its URL; "
        "hepinfra forgets it and leaves its outputs in place",
        engine_of=lambda managed: "file",
    )


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
