"""Onboarding: ``hepinfra import`` (a manifest fragment that declares what an account already has,
to adopt without rotating) and ``hepinfra init`` (a new project's files).

Owns: turning List rows into declarations (keys, ``name:`` where the key differs, ``environments:``
where the manifest has several), and the scaffold's texts. Pure: the command does the I/O.
Must not: trust a row (a name or an engine from the API is checked before it is written as YAML).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ENGINES = ("mariadb", "postgres", "mongo")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")  # a platform name, and so also a valid key


@dataclass(frozen=True)
class Row:
    """One database on the account (List): no secret."""

    name: str
    engine: str


@dataclass(frozen=True)
class Imported:
    text: str  # the YAML fragment
    declared: int  # databases it declares
    skipped: tuple[str, ...]  # one line each: what was left out, and why


def fragment(
    env: str, rows: Iterable[Row], *, declared_names: set[str], keys_taken: set[str], scoped: bool, source: str
) -> Imported:
    """A ``databases:`` section declaring ``rows`` for ``env``: a row named ``KEY-ENV`` (hepinfra's
    default name) becomes ``KEY``; any other becomes a key of its own name with ``name:``. Rows
    the manifest already declares in ``env`` are left out; ``scoped`` (several environments) adds
    ``environments: [ENV]``, so no other environment creates them."""
    lines: list[str] = []
    skipped: list[str] = []
    taken = set(keys_taken)
    for row in rows:
        if not _NAME.fullmatch(row.name):
            skipped.append(f"a database whose name is not a platform name ({len(row.name)} characters)")
            continue
        if row.name in declared_names:
            continue
        if row.engine not in ENGINES:
            engine = row.engine if re.fullmatch(r"[a-z0-9_-]{1,20}", row.engine) else "?"
            skipped.append(f"{row.name}: engine '{engine}' is not one hepinfra manages ({', '.join(ENGINES)})")
            continue
        default = row.name.removesuffix(f"-{env}") if row.name.endswith(f"-{env}") else None
        key = default if default and _NAME.fullmatch(default) and default not in taken else row.name
        for n in range(2, 1000):
            if key not in taken:
                break
            key = f"{row.name[:58]}_{n}"
        taken.add(key)
        lines.append(f"  {key}:")
        lines.append(f"    engine: {row.engine}")
        if key != default:
            lines.append(f"    name: {row.name}")
        if scoped:
            lines.append(f"    environments: [{env}]")
    count = sum(1 for line in lines if line.startswith("  ") and not line.startswith("    "))
    head = [
        f"# hepinfra import -e {env}: {count} database(s) on the account that {source} does not declare.",
        "# Adopted by the next apply without rotating; add outputs to deliver their credentials.",
    ]
    head += [f"# left out: {why}" for why in skipped]
    body = ["databases:", *lines] if lines else ["# (nothing to import)"]
    return Imported("\n".join([*head, *body]) + "\n", count, tuple(skipped))


# --- hepinfra init --------------------------------------------------------------------------------


def manifest_text(envs: Sequence[str], url: str) -> str:
    listed = ", ".join(f"{e}: {{}}" for e in envs)
    return (
        '# The resources of hep.gg this repository manages: see README, "The manifest".\n'
        "version: 1\n"
        f"hepgg:\n  url: {url}\n"
        f"environments: {{{listed}}}   # database key per environment: HEPGG_DB_KEY_<ENV>, else HEPGG_DB_KEY\n"
        "databases:\n"
        "  app:\n"
        "    engine: postgres           # mariadb | postgres | mongo\n"
        "    rotate_every: 30d\n"
        "    outputs:\n"
        '      - dotenv: ".env.{{ env }}"\n'
        '        keys: {APP_DATABASE_URL: "{{ db.connection_string }}"}\n'
    )


GITIGNORE = (".hepinfra/", ".env", ".env.*", "!.env.*.age")

WORKFLOW = """\
# hepinfra: plan on pull requests, apply on merge (docs/ci-gitops.md). Pin OWNER/hepinfra to a commit.
name: hepinfra
on:
  pull_request:
  push: {branches: [main]}
concurrency: {group: "hepinfra-${{ github.event_name == 'push' && 'apply' || github.ref }}", cancel-in-progress: false}
permissions: {contents: read, pull-requests: write}
jobs:
  hepinfra:
    runs-on: ubuntu-latest
    env:
      HEPGG_DB_KEY: ${{ secrets.HEPGG_DB_KEY }}
      HEPINFRA_STATE_KEY: ${{ secrets.HEPINFRA_STATE_KEY }}
    steps:
      - uses: actions/checkout@v4
      - uses: OWNER/hepinfra@COMMIT
        with:
          command: ${{ github.event_name == 'push' && 'apply' || 'plan' }}
"""
