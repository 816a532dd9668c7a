"""Warnings a valid manifest earns in *this* environment, said before anything runs (``validate``,
``plan``, ``apply``): settings that are right on their own but cannot work together here.

Owns: ``verify: true`` against the local hep.gg (``hepgg.url: local`` or ``HEPGG_URL=local``)
with no real server for the engine (``HEPINFRA_LOCAL_POSTGRES`` / ``HEPINFRA_LOCAL_MARIADB``):
the emulator then makes simulated databases, which no login reaches, so every verify would fail
and stay owed. One located line per engine.
Must not: read a variable's value beyond "is it set", call anything, or fail the command.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hepinfra.manifest import Manifest

log = logging.getLogger("hepinfra.preflight")


def local_verify(manifest: Manifest, environ: Mapping[str, str]) -> list[str]:
    """One line per engine whose databases are verified against simulated local databases."""
    url = environ.get("HEPGG_URL") or manifest.model.hepgg.url  # as hepgg.config reads it: the variable first
    if url.strip().rstrip("/") != "local" or not any(d.verify for ds in manifest.declared.values() for d in ds):
        return []
    from hepinfra.emulator.engines.base import ENV_VARS

    found: dict[str, list[str]] = {}  # engine -> keys of verified databases, in order
    for decls in manifest.declared.values():
        for decl in decls:
            var = ENV_VARS.get(decl.engine)
            if decl.verify and var and not environ.get(var, "").strip() and decl.key not in found.get(decl.engine, []):
                found.setdefault(decl.engine, []).append(decl.key)
    if not found:
        return []
    from hepinfra import yamlpos

    doc = yamlpos.load(manifest.path.read_text(encoding="utf-8"), str(manifest.path))
    lines = []
    for engine, keys in found.items():
        node: tuple[str | int, ...] = ("databases", keys[0], "verify")
        if node not in doc.values:
            node = ("defaults", "verify")
        line, column = doc.values.get(node, (None, None))
        where = f"{manifest.path}:{line}:{column}" if line is not None else str(manifest.path)
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        lines.append(
            f"{where}: {yamlpos.dotted(node)}: the local hep.gg simulates {engine} databases while "
            f"{ENV_VARS[engine]} is unset, so verify can never log in and fails on every apply{more}; set "
            f"{ENV_VARS[engine]} to a real server's admin URL, or verify: false"
        )
    return lines


def warn(manifest: Manifest, environ: Mapping[str, str] | None = None) -> None:
    """Each warning as one ``Warning:`` line on stderr (the CLI's handler for hepinfra's loggers)."""
    import os

    for line in local_verify(manifest, os.environ if environ is None else environ):
        log.warning(line)
