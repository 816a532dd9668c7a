"""A heartbeat left alive by an earlier run in the same process (a test worker, a long-lived host
of hepinfra's API) never cancels a later run: a stall counts only for the run it belongs to."""

from __future__ import annotations

from hepinfra.state import bounded
from hepinfra.state.bounded import Heartbeat, NoAnswer


def test_a_stall_of_an_earlier_runs_heartbeat_is_ignored() -> None:
    seen: list[str] = []
    first = bounded.on_stall(lambda error: seen.append("first"))
    old = Heartbeat("old", 60, lambda: True)  # belongs to the first run
    first()
    second = bounded.on_stall(lambda error: seen.append("second"))
    new = Heartbeat("new", 60, lambda: True)
    try:
        bounded.report_stall(NoAnswer("no answer", place="s3", doing="refreshing the lock"), old._run)
        assert seen == [] and bounded.stalled() is None
        bounded.report_stall(NoAnswer("no answer", place="s3", doing="refreshing the lock"), new._run)
        assert seen == ["second"] and bounded.stalled() is not None
    finally:
        second()
