"""The cut-over around a rotation, for outputs whose sink holds live consumers (``outputs.base.CutOver``:
a pgbouncer output pauses PgBouncer).

Owns: ``hold`` (every such output of a change, right before hep.gg's rotate, after the intent is
durable: one that cannot be held releases those already held and fails the rotation before it
starts) and ``release`` (the rotation did not happen: let the consumers go, unchanged). What
completes a cut-over is the output's own write (the writer calls ``after_outputs``), so a run
killed anywhere leaves the output owed and the next apply completes it.
Must not: know an output kind, or rotate.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hepinfra.crashpoints import kill_point
from hepinfra.errors import HepinfraError, OutputError
from hepinfra.outputs import REMOTE_SINKS, SINKS
from hepinfra.safety.redact import redact
from hepinfra.values import OutputTarget

log = logging.getLogger("hepinfra.outputs")


def cut_over_sink(target: OutputTarget) -> Any:
    """The target's sink if it takes part in cut-overs, else None."""
    sinks: Any = SINKS if target.kind in SINKS else REMOTE_SINKS
    sink = sinks.get(target.kind)
    return sink if hasattr(sink, "before_rotate") and hasattr(sink, "after_outputs") else None


async def hold(address: str, targets: list[OutputTarget]) -> list[OutputTarget]:
    """``before_rotate`` on every target that takes part; the targets held. Raises OutputError (the
    rotation must not start) after releasing those already held."""
    held: list[OutputTarget] = []
    for target in targets:
        sink = cut_over_sink(target)
        if sink is None:
            continue
        try:
            await asyncio.to_thread(sink.before_rotate, target)
        except (HepinfraError, OSError) as exc:
            await release(held)
            reason = exc.message if isinstance(exc, HepinfraError) else f"{type(exc).__name__}: {exc.strerror}"
            raise OutputError(
                f"{address}: {target.path}: cannot hold its consumers for the rotation: {redact(reason)}; "
                "nothing was rotated",
                hint="fix it (see docs/pgbouncer.md), then rotate again",
            ) from None
        held.append(target)
    if held:
        kill_point("paused")
    return held


async def release(targets: list[OutputTarget]) -> None:
    """``after_outputs(target, None)`` on each: nothing was written. A failure is a warning (the
    output's next write releases it)."""
    for target in targets:
        sink = cut_over_sink(target)
        try:
            await asyncio.to_thread(sink.after_outputs, target, None)
        except (HepinfraError, OSError) as exc:
            log.warning("%s: could not release its consumers: %s", target.path, redact(str(exc)))
