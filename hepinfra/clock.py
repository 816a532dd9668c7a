"""The time a plan is made at.

Owns: ``now()``: the current time, or, as a test aid like ``crashpoints``' kill points,
``HEPINFRA_TEST_NOW=2026-12-04T10:00:00Z`` (an ISO 8601 time with its offset), so a test can put
a plan inside or outside a rotation window. Nothing changes without the variable; apply still
records real times.
Must not: be used for anything but the plan's ``now`` (due rotations, rotation windows).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime


def now() -> datetime:
    raw = os.environ.get("HEPINFRA_TEST_NOW", "").strip()
    if not raw:
        return datetime.now(UTC)
    from hepinfra.errors import UsageError

    try:
        found = datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(f"HEPINFRA_TEST_NOW must be an ISO 8601 time, not {raw[:40]!r}") from None
    if found.tzinfo is None:
        raise UsageError("HEPINFRA_TEST_NOW needs an offset (Z or +HH:MM)")
    return found.astimezone(UTC)
