"""The ``uploads`` kind: files published through the Uploader (POST /upload).

Owns: the plan rules of uploads (upload when missing; upload again when the file's content
digest changes or when asked, which gives a new URL; render; forget, since hep.gg cannot delete
an upload) and the ``upload`` template variable (``upload.url``, ``upload.file``,
``upload.sha256``, ``upload.size``). Nothing of an upload is secret. Apply steps:
``kinds.uploads_apply``.
Must not: do I/O (the manifest read and digested the file).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from hepinfra.kinds.base import Kind
from hepinfra.kinds.rules import Decision, EnvInput, plan_held, render_headline
from hepinfra.outputs import OutputSpec
from hepinfra.safety.paths import Refused, shown
from hepinfra.spec import Ident, SpecModel
from hepinfra.values import Action, Change, Declared, Diagnostic

if TYPE_CHECKING:
    from hepinfra.hepgg import Hepgg
    from hepinfra.resolution import Resolution

SECTION = "uploads"


def upload_var(manifest: Any, env: str, hepgg: Hepgg) -> str:
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
        Action.RENDER: render_headline(change, "outputs"),
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


# --- the manifest's ``uploads:`` section ------------------------------------------------------------

UPLOAD_LIMIT = 100 * 1024 * 1024  # an upload's file is read (and digested) whole at every load


class UploadSpec(SpecModel):
    """A file published through the Uploader; re-uploaded when its content changes."""

    file: str = Field(min_length=1)  # relative to the manifest, the same path rules as template sources
    allow_outside: bool = False
    allow_ignored: bool = False  # publish a file Git ignores (refused by default: often a key or a .env)
    environments: list[Ident] | None = None
    outputs: list[OutputSpec] = []


def declare(r: Resolution, env: str, key: str, context: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    from hepinfra.templates import placeholder_upload

    spec = r.model.section("uploads")[key]
    assert isinstance(spec, UploadSpec)
    node = ("uploads", key, "file")
    if spec.file not in r.uploads:
        try:
            outside = r.may_read_outside(spec.file, spec.allow_outside, node)
            real, raw = r.boundary.read_source(spec.file, allow_outside=outside, limit=UPLOAD_LIMIT)
        except Refused as exc:
            raise r.error(node, f"upload file '{shown(spec.file)}' {exc}") from None
        r.boundary.protect(real, f"the upload source '{shown(spec.file)}'")
        r.uploads[spec.file] = (str(real), hashlib.sha256(raw).hexdigest(), len(raw))
    real_path, digest, size = r.uploads[spec.file]
    r.template_bytes[f"upload:{spec.file}"] = digest.encode()  # a changed file makes saved plans stale
    return {
        "name": key,
        "engine": "file",
        "rotate_every": None,
        "file": spec.file,
        "file_real": real_path,
        "file_digest": digest,
        "allow_outside": spec.allow_outside,
        "value": {"upload": placeholder_upload(spec.file, digest, size)},
    }


def check(r: Resolution, declared: dict[str, tuple[Declared, ...]]) -> None:
    """An upload is public and permanent: its source (real path) is never an output of this manifest
    (any environment's), nor a file Git ignores (often a key or a .env) unless ``allow_ignored``."""
    from hepinfra.safety.git import GitUnavailable, GitView

    outputs = {t.real: t.path for decls in declared.values() for d in decls for t in d.outputs if t.real}
    git = GitView()
    for key, spec in r.model.section("uploads").items():
        assert isinstance(spec, UploadSpec)
        if spec.file not in r.uploads:
            continue  # declared in no environment
        real = r.uploads[spec.file][0]
        node = ("uploads", key, "file")
        shown_as = shown(spec.file)
        if real != str(r.project_dir / spec.file):
            where = Path(real)
            target = where.relative_to(r.project_dir) if where.is_relative_to(r.project_dir) else where
            shown_as += f" (it resolves to '{shown(str(target))}')"
        if real in outputs:
            raise r.error(
                node,
                f"{shown_as} is the output '{shown(outputs[real])}' of this manifest: an upload is public and "
                "permanent; upload a file that holds no secret",
            )
        if spec.allow_ignored:
            continue
        try:
            ignored = False
            for repo in git.repos_of(Path(real)):
                relative = repo.relative(Path(real))
                if relative is not None and repo.ignored([relative]):
                    ignored = True
                    break
        except GitUnavailable as exc:
            raise r.error(node, f"cannot tell whether Git ignores {shown_as}: {exc}") from None
        if ignored:
            raise r.error(
                node,
                f"{shown_as} is ignored by Git (often a key or a .env): an upload is public and permanent; "
                "set allow_ignored: true if it is meant to be published",
            )


KIND = Kind(
    section=SECTION,
    var="upload",
    plan=plan,
    headline=_headline,
    steps="hepinfra.kinds.uploads_apply",
    forgotten="no longer managed; the file stays published at its URL",
    value_noun="URL",
    in_flight=lambda change: "an upload whose answer was not recorded is uploaded again",
    credentials=missing_credentials,
    spec=UploadSpec,
    declare=declare,
    check=check,
    review_fields=("file", "allow_outside", "allow_ignored"),
    review_note="an upload is public and permanent",
    history=lambda m: (m.uploaded_at, m.uploads),
)
