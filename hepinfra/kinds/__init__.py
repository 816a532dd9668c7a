"""The registry of resource kinds: databases, ids and uploads are peers.

Each kind is one module declaring a ``Kind`` (its manifest section, template variable, plan
rules and apply steps). ``plan.make_plan``, the renderers and the executor iterate over this
registry; they know actions and journals, not kinds. Adding a kind: one module, its apply
steps, its manifest spec, and one line here.
"""

from __future__ import annotations

from hepinfra.kinds import databases, ids, uploads
from hepinfra.kinds.base import Kind

KINDS: dict[str, Kind] = {k.section: k for k in (databases.KIND, ids.KIND, uploads.KIND)}

__all__ = ["KINDS", "Kind"]
