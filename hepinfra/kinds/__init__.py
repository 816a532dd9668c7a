"""The registry of resource kinds: databases, ids and uploads are peers.

Each kind is one module declaring a ``Kind`` (its manifest section, template variable, plan
rules and apply steps). ``plan.make_plan``, the renderers and the executor iterate over this
registry; they know actions and journals, not kinds; the manifest loader builds its top-level
model from it. Adding a kind: one module (its spec, declare, plan rules), its apply steps, and one
line here (or ``register`` from outside the package).
"""

from __future__ import annotations

from hepinfra.kinds import databases, ids, uploads
from hepinfra.kinds.base import Kind

KINDS: dict[str, Kind] = {k.section: k for k in (databases.KIND, ids.KIND, uploads.KIND)}


def register(kind: Kind) -> None:
    """Add a resource kind defined outside the package; manifests loaded afterwards accept its section."""
    KINDS[kind.section] = kind


__all__ = ["KINDS", "Kind", "register"]
