"""When a due rotation waits: rotation windows, failed rotations in a row, and a run's cap.

Owns: the ``rotate_window:`` block's schema (``RotateWindowSpec``, on a database, an id or under
``defaults:``) and how a declaration resolves it and ``max_failed_rotations``; ``hold``, why a
rotation due by ``rotate_every`` waits (the kinds ask it through ``EnvInput.rotation_due``, never
for a requested rotation or an interrupted one being finished); and ``over_cap``, which due
rotations ``--max-rotations`` leaves for a later run (most overdue first, then by address).
Must not: do I/O, know a kind, or see a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hepinfra.spec import SpecModel
from hepinfra.values import WEEKDAYS, Action, Change, Declared, Held, RotateRequest, RotateWindow, TargetRequest, ref_of

_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
DEFAULT_MAX_FAILED = 3  # failed rotations in a row before a due one stops being retried (defaults:)


class RotateWindowSpec(SpecModel):
    """``rotate_window: {days: [sat, sun], start: "02:00", end: "04:00", tz: UTC}``: a due rotation
    runs only inside it. ``days`` left out: every day; ``end`` at or before ``start``: it spans
    midnight (``days`` name the day it opens); ``tz``: an IANA zone name."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(default=None, min_length=1)
    start: str
    end: str
    tz: str = "UTC"

    @field_validator("start", "end", mode="before")
    @classmethod
    def _clock(cls, value: Any) -> Any:
        if not isinstance(value, str) or not _TIME.fullmatch(value.strip()):
            raise ValueError('must be a time of day "HH:MM" (00:00 to 23:59), quoted')
        return value.strip()

    @field_validator("tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from hepinfra.values import clip

        try:
            ok = bool(value) and ".." not in value and not value.startswith("/") and ZoneInfo(value) is not None
        except (ZoneInfoNotFoundError, ValueError, OSError):
            ok = False
        if not ok:
            raise ValueError(f"unknown time zone '{clip(value)}': use an IANA name such as UTC or Europe/Zurich")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> RotateWindowSpec:
        if self.start == self.end:
            raise ValueError("start and end are the same time: the window would never open (or never close)")
        return self

    def resolved(self) -> RotateWindow:
        def minutes(text: str) -> int:
            hours, mins = text.split(":")
            return int(hours) * 60 + int(mins)

        days = tuple(sorted({WEEKDAYS.index(d) for d in self.days})) if self.days else tuple(range(7))
        return RotateWindow(days, minutes(self.start), minutes(self.end), self.tz)


def rotation_settings(defaults: Any, spec: Any, *, failures: bool = False) -> dict[str, Any]:
    """A declaration's ``rotate_window`` (its own; ``rotate_window: null`` opts out of ``defaults:``'s)
    and, for a kind that counts failed rotations (``failures``), ``max_failed_rotations`` (its own, else
    ``defaults:``'s), as ``Declared`` fields."""
    own = "rotate_window" in spec.model_fields_set
    window = spec.rotate_window if own else defaults.rotate_window
    fields: dict[str, Any] = {"rotate_window": window.resolved() if window is not None else None}
    if failures:
        limit = spec.max_failed_rotations
        fields["max_failed_rotations"] = defaults.max_failed_rotations if limit is None else limit
    return fields


def hold(decl: Declared, due: str, failed: int, now: datetime, *, capped: bool = False) -> Held | None:
    """Why a rotation due by ``rotate_every`` (``due``: the plan's reason) waits, or None: its last
    ``failed`` rotations failed in a row (``max_failed_rotations``), its window is closed, or the run's
    ``--max-rotations`` leaves it (``capped``)."""
    if decl.max_failed_rotations and failed >= decl.max_failed_rotations:
        return Held(
            reason="failed-rotations",
            message=f"{due}; its rotation failed {failed} times in a row (max_failed_rotations: "
            f"{decl.max_failed_rotations}): no longer retried automatically; --rotate {decl.address} forces it",
        )
    if decl.rotate_window is not None:
        opening = decl.rotate_window.next_opening(now)
        if opening is not None:
            return Held(
                reason="window",
                until=opening.astimezone(UTC),  # the message says it in the window's zone
                message=f"{due}; waits for its rotation window, next opening {decl.rotate_window.describe(opening)}",
            )
    if capped:
        return Held(
            reason="max-rotations",
            message=f"{due}; waits for a later run: --max-rotations is taken by rotations more overdue",
        )
    return None


def over_cap(
    limit: int | None,
    due: Iterable[tuple[float, str]],
    changes: Iterable[Change],
    rotate: RotateRequest,
    targets: TargetRequest | None,
) -> frozenset[str]:
    """The addresses of due rotations (``due``: seconds overdue, address) that ``--max-rotations``
    (``limit``) leaves for a later run. Rotations asked for with ``--rotate`` are never held but use
    the cap first; finishing an interrupted rotation does not count. Most overdue first, then by
    address; a partial plan counts only its targets."""
    if limit is None:
        return frozenset()

    def covered(address: str) -> bool:
        return targets is None or targets.covers_address(address)

    due_addresses = set()
    ranked = []
    for overdue, address in due:
        if covered(address):
            ranked.append((-overdue, address))
            due_addresses.add(address)
    forced = sum(
        1
        for c in changes
        if covered(c.address)
        and c.address not in due_addresses
        and ((c.action is Action.ROTATE and not c.finish_rotation) or c.rotate_after_adopt)
        and rotate.wants(c.env, ref_of(c.kind, c.key))
    )
    room = max(limit - forced, 0)
    return frozenset(address for _, address in sorted(ranked)[room:])
