"""``plan --base REF``: a pull request's manifest, planned against the trusted one at REF.

Owns: reading the baseline manifest (same path, at REF) with ``git show`` and never a checkout;
the check that a pull request does not change where credentials go (the hep.gg URL, the state
block, every setting that names a credential variable: ``CREDENTIAL_SETTINGS``); which outputs a
refreshing plan may read back; and the review section: every change to what runs or where values
go at apply, for a person to read before merging.
Must not: run anything of the pull request's, contact anything, or read a file outside the project.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepinfra.errors import UsageError
from hepinfra.safety.credentials import ENVIRONMENT_SETTINGS
from hepinfra.safety.paths import shown

if TYPE_CHECKING:
    from hepinfra.manifest import Manifest, ManifestModel
    from hepinfra.values import Declared, OutputTarget

# The settings of an environment that name a credential variable (hepinfra.safety.credentials, the one
# list): with the hep.gg URL and the state block (url_env included), they decide where a credential goes,
# and a pull request cannot change their effective values. pass_env and after_rotate_pass_env act only at
# apply, after review: changes to them are listed in the review section.
CREDENTIAL_SETTINGS = ENVIRONMENT_SETTINGS
# output kinds whose read-back runs or reaches something outside the project
READ_REMOTELY = frozenset({"exec", "aws_secretsmanager", "aws_ssm"})
_GIT_TIMEOUT = 30


def _git(top: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """git, never finding a bare repository by itself: a pull request can commit a directory that
    looks like one (with the "trusted" manifest of its choosing in its refs)."""
    try:
        return subprocess.run(
            ["git", "-c", "safe.bareRepository=explicit", "-C", str(top), *args],
            capture_output=True,
            timeout=_GIT_TIMEOUT,
            check=False,
            env=_git_environment(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"--base: cannot run git: {getattr(exc, 'strerror', None) or 'timed out'}") from None


def _git_environment() -> dict[str, str]:
    """git gets PATH and HOME (its safe.directory settings), never a credential."""
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return {**env, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}


@dataclass(frozen=True)
class Base:
    """The trusted baseline: the manifest at ``ref`` (None: the revision has none, only defaults count)."""

    ref: str
    commit: str
    top: Path  # the repository's work tree
    manifest_rel: str  # the manifest's path inside the repository
    model: ManifestModel | None
    _blobs: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    def blob_id(self, rel: str) -> str | None:
        """The object id of ``rel`` (repository-relative) at the base, None where it has none."""
        if rel not in self._blobs:
            found = _git(self.top, "rev-parse", "--verify", "--quiet", f"{self.commit}:{rel}")
            self._blobs[rel] = found.stdout.decode().strip() if found.returncode == 0 else None
        return self._blobs[rel]


def open_base(manifest_path: str | Path, ref: str) -> Base:
    """Resolve REF in the repository holding the manifest and read the manifest there. One clear line
    for: no repository, no such revision (a shallow clone), a baseline that does not parse."""
    if not ref or ref.startswith("-") or any(c in ref for c in "\n\r\0"):
        raise UsageError(f"--base {ref[:60]!r}: not a Git revision")
    written = Path(os.path.abspath(manifest_path))
    found = _git(written.parent, "rev-parse", "--show-toplevel")
    if found.returncode != 0:
        raise UsageError(
            f"--base {ref}: {written.parent} is not inside a Git work tree (a directory that only looks like a bare "
            "repository, which a pull request can commit, is never used)"
        )
    top = Path(found.stdout.decode().strip()).resolve()
    if not (top / ".git").exists() or (top / ".git").is_symlink():
        raise UsageError(f"--base {ref}: {top} is not the work tree of a Git repository (it has no .git)")
    superproject = _git(top, "rev-parse", "--show-superproject-working-tree").stdout.decode().strip()
    if superproject:  # a pull request can turn the manifest's folder into a submodule of its own repository
        raise UsageError(
            f"--base {ref}: {top} is a Git submodule of {superproject}; plan --base reads the base only from the "
            "repository that holds the manifest itself, never from a submodule"
        )
    _no_link_inside(written, top, ref)
    path = written.resolve()
    commit = _git(top, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if commit.returncode != 0:
        raise UsageError(
            f"--base {ref}: no such revision in {top} (a shallow clone? fetch it first, e.g. "
            f"'git fetch --depth=1 origin {ref.removeprefix('origin/')}')"
        )
    sha = commit.stdout.decode().strip()
    rel = path.relative_to(top).as_posix() if path.is_relative_to(top) else None
    if rel is None:
        raise UsageError(f"--base {ref}: the manifest {path} is outside the repository {top}")
    shown = _git(top, "cat-file", "blob", f"{sha}:{rel}")  # the bytes as stored: no filter, no textconv
    model = None
    if shown.returncode == 0:
        model = _parse(shown.stdout, f"{ref}:{rel}")
    return Base(ref, sha, top, rel, model)


def _no_link_inside(written: Path, top: Path, ref: str) -> None:
    """No component of the manifest's path inside the repository is a symbolic link: a committed link
    would choose which file, or which repository, counts as the base."""
    parts = written.parts
    for i in range(1, len(parts) + 1):
        prefix = Path(*parts[:i])
        if os.path.realpath(prefix) != str(top):
            continue
        for j in range(i + 1, len(parts) + 1):
            inside = Path(*parts[:j])
            if inside.is_symlink():
                raise UsageError(
                    f"--base {ref}: {inside} is a symbolic link inside the repository; plan --base reads the manifest "
                    "only where the repository keeps it (give its real path with -f)"
                )
        return
    raise UsageError(f"--base {ref}: the manifest {written} is outside the repository {top}")


def _parse(raw: bytes, filename: str) -> ManifestModel:
    """The baseline's model only: its schema, not its templates or files (never read)."""
    from pydantic import ValidationError

    from hepinfra import yamlpos
    from hepinfra.errors import ManifestError
    from hepinfra.manifest import manifest_model

    try:
        doc = yamlpos.load(raw.decode("utf-8"), filename)
        return manifest_model().model_validate(doc.data)
    except (UnicodeDecodeError, ValidationError, ManifestError) as exc:
        why = exc.message if isinstance(exc, ManifestError) else "it does not validate"
        raise UsageError(
            f"--base: the baseline manifest {filename} cannot be read ({why}); fix the base first"
        ) from None


def _effective(model: ManifestModel | None) -> ManifestModel:
    from hepinfra.manifest import manifest_model

    return (
        model if model is not None else manifest_model().model_validate({"version": 1, "environments": {"default": {}}})
    )


def credential_changes(pr: ManifestModel, base: Base) -> tuple[list[str], dict[str, str]]:
    """Where the pull request changes where credentials go: (problems for every environment, problems
    per environment). A default counts only where the base's effective value is that default; an
    environment the base does not declare may only use the defaults."""
    trusted = _effective(base.model)
    everywhere: list[str] = []
    if pr.hepgg.url != trusted.hepgg.url:
        everywhere.append(f"hepgg.url differs from {base.ref}'s ({trusted.hepgg.url})")
    if pr.state.model_dump() != trusted.state.model_dump():
        everywhere.append(f"the state: block differs from {base.ref}'s")
    per_env: dict[str, str] = {}
    for env, spec in pr.environments.items():
        known = base.model is not None and env in base.model.environments
        theirs = base.model.environments[env] if known and base.model is not None else None
        for setting in CREDENTIAL_SETTINGS:
            mine, wanted = getattr(spec, setting), getattr(theirs, setting) if theirs is not None else None
            if mine != wanted:
                where = (
                    f"{base.ref}'s ({wanted})" if theirs is not None else f"the default (new in this change: {mine})"
                )
                per_env[env] = f"environments.{env}.{setting} differs from {where}"
                break
    return everywhere, per_env


def refusal(problem: str) -> str:
    return f"{problem}: a pull request cannot change where credentials go; not contacted"


# --- what may be read back -----------------------------------------------------------------------


def _outputs_of(model: ManifestModel | None, section: str, key: str) -> list[dict[str, Any]]:
    if model is None:
        return []
    spec = model.section(section).get(key)
    return [o.model_dump(mode="json") for o in spec.outputs] if spec is not None else []


def readable(pr: ManifestModel, base: Base, decl: Declared, target: OutputTarget, index: int) -> str | None:
    """None when the plan may read ``target`` back; else why not. Commands never run; a remote output or
    one outside the project is read back only where the base declares it exactly so."""
    if target.kind == "exec":
        return "plan --base runs no command"
    if target.kind not in READ_REMOTELY and not target.allow_outside:
        return None
    spec = pr.section(decl.kind).get(decl.key)
    mine = spec.outputs[index].model_dump(mode="json") if spec is not None and index < len(spec.outputs) else None
    theirs = base.model.section(decl.kind).get(decl.key) if base.model is not None else None
    same_names = (  # what its rendered name or path depends on: the resource's settings and the env's vars
        spec is not None
        and theirs is not None
        and base.model is not None
        and decl.env in base.model.environments
        and base.model.environments[decl.env].vars == pr.environments[decl.env].vars
        and spec.model_dump(mode="json", exclude={"outputs"}) == theirs.model_dump(mode="json", exclude={"outputs"})
    )
    if mine is None or not same_names or mine not in _outputs_of(base.model, decl.kind, decl.key):
        return f"new or changed against {base.ref}"
    return None


def outside_check(base: Base) -> Callable[[str], str | None]:
    """For the loader: a source file outside the project is read only where the base declares the same
    source with allow_outside (templates and uploads)."""
    allowed: set[str] = set()
    model = base.model
    for section in ("databases", "ids", "uploads"):
        for spec in model.section(section).values() if model is not None else ():
            if getattr(spec, "allow_outside", False):
                allowed.add(getattr(spec, "file", ""))
            for out in spec.outputs:
                if getattr(out, "allow_outside", False):
                    allowed.add(getattr(out, "template", None) or "")
    allowed.discard("")

    def check(relative: str) -> str | None:
        if relative in allowed:
            return None
        return f"{base.ref} reads no such file outside the project, and a pull request's plan reads none"

    return check


def unread(pr: ManifestModel, base: Base) -> Callable[[Declared, OutputTarget, int], str | None]:
    return lambda decl, target, index: readable(pr, base, decl, target, index)


# --- the review section --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewLine:
    where: str
    what: str


def review(manifest: Manifest, base: Base) -> list[ReviewLine]:
    """Every change to what runs or where values go at apply, against the base: the top-level blocks,
    each environment's ``vars`` (names, paths and argv are rendered from them), each resource's
    settings that its kind names for review and its ``environments:``, each output that is new or
    changed and whose kind names fields for review, and every program of the repository that an
    argv names as rendered (in every environment), new or changed since the base."""
    from hepinfra.kinds import KINDS

    pr, trusted = manifest.model, base.model
    lines: list[ReviewLine] = []
    if trusted is None:
        lines.append(ReviewLine("manifest", f"new: {base.ref} has no manifest at {base.manifest_rel}"))
    effective = _effective(trusted)
    if pr.state.model_dump() != effective.state.model_dump():
        lines.append(ReviewLine("state", f"where state is kept changes: {pr.state.where()}"))
    if pr.hepgg.url != effective.hepgg.url:
        lines.append(ReviewLine("hepgg.url", f"changes to {pr.hepgg.url}"))
    if pr.defaults.model_dump() != effective.defaults.model_dump():
        lines.append(ReviewLine("defaults", f"changes: {_short(pr.defaults.model_dump(mode='json'))}"))
    for env, spec in pr.environments.items():
        before = trusted.environments[env].vars if trusted is not None and env in trusted.environments else {}
        changed = {k: v for k, v in spec.vars.items() if before.get(k) != v}
        gone = sorted(k for k in before if k not in spec.vars)
        if changed or gone:
            what = f"set {_short(changed)}" if changed else ""
            what += ("; " if what and gone else "") + (f"removed {', '.join(gone)}" if gone else "")
            lines.append(ReviewLine(f"environments.{env}.vars", f"{what} (names, paths and argv render from them)"))
    for section, kind in KINDS.items():
        for key, spec in pr.section(section).items():
            old = trusted.section(section).get(key) if trusted is not None else None
            lines += _resource_review(f"{section}.{key}", kind, spec, old)
    programs: dict[str, None] = {}
    for decls in manifest.declared.values():
        for decl in decls:
            for item in decl.after_rotate:
                programs[item] = None
            for target in decl.outputs:
                for item in (*target.argv, *target.read_argv):
                    programs[item] = None
    for item in programs:
        changed_program = _program_change(item, base, manifest.project_dir)
        if changed_program:
            lines.append(ReviewLine(f"program {_short(item, 200)}", changed_program))
    for source in manifest.sources:  # templates, recipients files, upload sources: what outputs render
        changed_source = _program_change(source, base, manifest.project_dir, "what is rendered or published changes")
        if changed_source:
            lines.append(ReviewLine(f"file {_short(source, 200)}", changed_source))
    return lines


def _resource_review(where: str, kind: Any, spec: Any, old: Any) -> list[ReviewLine]:
    lines: list[ReviewLine] = []
    for setting in (*kind.review_fields, "environments"):
        mine, theirs = getattr(spec, setting, None), getattr(old, setting, None) if old is not None else None
        if mine != theirs and (mine or theirs):  # unset, empty and false read the same
            note = f" ({kind.review_note})" if kind.review_note and setting != "environments" else ""
            lines.append(ReviewLine(where, f"{setting}: {_short(theirs)} -> {_short(mine)}{note}"))
    before = [o.model_dump(mode="json") for o in old.outputs] if old is not None else []
    for out in spec.outputs:
        dumped = out.model_dump(mode="json")
        if dumped in before or not (out.review_fields or dumped.get("allow_outside")):
            continue
        keep = (*out.review_fields, "allow_outside", "allow_tracked")
        shown = {k: dumped[k] for k in keep if dumped.get(k) not in (None, [], False)}
        lines.append(ReviewLine(where, f"{out.kind} output (new or changed): {_short(shown)}"))
    return lines


def _short(value: Any, limit: int = 400) -> str:
    import json

    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _program_change(item: str, base: Base, project_dir: Path, what: str = "runs at apply") -> str | None:
    """A path (an argv item, or a file an output reads) against the base, by Git object id: a new or
    changed file of the repository; one reached through a symbolic link unless the base has the same
    link; one outside the repository through a link. None when it is the base's, or names no file."""
    if "{{" in item or "{%" in item or not item or "\0" in item:
        return None
    written = Path(os.path.abspath(project_dir / item))
    try:
        real = written.resolve()
    except (OSError, RuntimeError):
        return None
    if real != written:  # a link on the way: judged by the link itself, which a pull request can change
        if not written.is_relative_to(base.top):
            return None
        link = _first_link(written, base.top)
        if link is None:
            return None
        rel = link.relative_to(base.top).as_posix()
        target = os.readlink(link).encode()
        if base.blob_id(rel) != _blob_id(target):
            to = shown(target.decode(errors="replace"), 200)
            return f"{shown(rel)} is a symbolic link to {to} (new or changed): {what}"
        if not real.is_relative_to(base.top):
            return f"{shown(rel)} leads outside the repository, to {shown(str(real), 200)}: {what}"
        written = real
    try:
        if not written.is_file() or not written.is_relative_to(base.top):
            return None
        data = written.read_bytes() if written.stat().st_size <= 64 * 1024 * 1024 else None
    except (OSError, ValueError):
        return None
    if data is None:
        return f"changed (too large to compare): {what}"
    rel = written.relative_to(base.top).as_posix()
    then = base.blob_id(rel)
    if then is None:
        return f"new file {rel}: {what}"
    if then != _blob_id(data):
        return f"{rel} changed since {base.ref}: {what}"
    return None


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _first_link(path: Path, top: Path) -> Path | None:
    parts = path.relative_to(top).parts
    for i in range(1, len(parts) + 1):
        here = top.joinpath(*parts[:i])
        if here.is_symlink():
            return here
    return None
