"""Claims across every environment of a manifest, on real paths (so a link cannot alias two paths):
no output overwrites the manifest, a template source or a non-regular file; no output writes a
Git-tracked file unless allowed; no two declarations write one key of a file, a file another writes
whole, or one remote value (each output kind says what it claims: ``claims``, ``remote_claims``).

Must not: know an output kind by name, or do network I/O.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hepinfra.resolution import Resolution
from hepinfra.safety.paths import Refused, shown
from hepinfra.values import Declared, OutputTarget

log = logging.getLogger("hepinfra.manifest")


def check_outputs(r: Resolution, declared: dict[str, tuple[Declared, ...]]) -> None:
    """Checks across every environment, on real paths (so a link cannot alias two paths):
    no output overwrites the manifest, a template source or a non-regular file; no output
    writes a Git-tracked file unless allowed; no two declarations write the same dotenv key,
    or a file another writes whole. Warns about outputs Git would pick up (untracked, not
    ignored)."""
    from hepinfra.safety.git import GitUnavailable, GitView

    git = GitView()
    whole: dict[str, str] = {}  # real path -> the address writing it whole (template output)
    keyed: dict[tuple[str, str], str] = {}  # (real path, dotenv key) -> the address writing it
    by_file: dict[str, set[str]] = {}  # real path -> addresses writing it
    checked: set[str] = set()
    exposed: dict[Path, OutputTarget] = {}
    remote: dict[tuple[str, ...], str] = {}  # what an AWS output writes -> the address writing it
    from hepinfra.outputs import SPECS

    for decls in declared.values():
        for decl in decls:
            for target in decl.outputs:
                if SPECS[target.kind].remote:
                    _claim_remote(r, decl, target, remote)
                    continue  # no file of the project
                real = Path(target.real)
                if target.real not in checked:
                    try:
                        r.boundary.check_real(real)
                    except Refused as exc:
                        raise r.error(target.node, f"output path '{shown(target.path)}' {exc}") from None
                    checked.add(target.real)
                try:
                    tracked = git.is_tracked(real)
                except GitUnavailable as exc:
                    raise r.error(
                        target.node, f"cannot tell whether Git tracks '{shown(target.path)}': {exc}"
                    ) from None
                if tracked and not target.allow_tracked:
                    raise r.error(
                        target.node,
                        f"output path '{shown(target.path)}' is a file tracked by Git; writing a secret into it "
                        "would commit the secret (run 'git rm --cached' on it and add it to .gitignore, or set "
                        "allow_tracked: true)",
                    )
                if not tracked and not target.allow_tracked:
                    exposed.setdefault(real, target)
                _claim(r, decl, target, whole, keyed, by_file)
    try:
        for real in git.exposed(exposed):
            log.warning(
                "%s: output '%s' is not ignored by Git, so 'git add' would commit a secret; add it to .gitignore",
                _where(r, exposed[real]),
                shown(exposed[real].path),
            )
    except GitUnavailable as exc:
        log.warning("cannot tell whether Git ignores the outputs: %s", exc)


def _claim_remote(r: Resolution, decl: Declared, target: OutputTarget, claims: dict[tuple[str, ...], str]) -> None:
    """No two declarations write one SSM parameter, one key of a secret, or a plain secret another
    writes keys of: each apply would overwrite the other's value (regions aside: the same name
    with and without ``region:`` may be one secret)."""
    from hepinfra.outputs import SPECS

    wanted, checks = SPECS[target.kind].remote_claims(target)
    rival: str | None = None
    for claim in checks:
        if claim in claims:
            rival = claims[claim]
            what = "/".join(claim[1:])
            raise r.error(
                target.node,
                f"{shown(target.path)}: {shown(what)} is also written by {rival}; two declarations writing one "
                "value would overwrite each other on every apply",
            )
    for claim in wanted:
        claims.setdefault(claim, decl.address)


def _claim(
    r: Resolution,
    decl: Declared,
    target: OutputTarget,
    whole: dict[str, str],
    keyed: dict[tuple[str, str], str],
    by_file: dict[str, set[str]],
) -> None:
    from hepinfra.outputs import SPECS

    real, me = target.real, decl.address
    others = by_file.setdefault(real, set())
    if me in others:
        raise r.error(
            target.node, f"'{shown(target.path)}' is the same file as another output of {me}; merge the two outputs"
        )
    whole_file = SPECS[target.kind].claims == "whole"
    if whole_file and others:
        raise r.error(
            target.node,
            f"'{shown(target.path)}' is also written by {sorted(others)[0]}; a template output writes the whole "
            "file, so the two would overwrite each other on every apply",
        )
    if real in whole:
        raise r.error(
            target.node,
            f"'{shown(target.path)}' is written whole by the template output of {whole[real]}; the two would "
            "overwrite each other on every apply",
        )
    for key, _ in target.keys:
        owner = keyed.setdefault((real, key), me)
        if owner != me:
            raise r.error(
                (*target.node[:-1], "keys", key),
                f"key {key} in '{shown(target.path)}' is also written by {owner}; two declarations writing one "
                "key would overwrite each other's value on every apply",
                at_key=True,
            )
    if whole_file:
        whole[real] = me
    others.add(me)


def _where(r: Resolution, target: OutputTarget) -> str:
    line, col = r.values.get(target.node) or (None, None)
    return f"{r.filename}:{line}:{col}" if line else r.filename
