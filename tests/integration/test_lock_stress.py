"""The stale-lock break race (the issue): many processes find one dead holder's lock at once.

Before the fix two of them could both "break" it and both hold the lock (5 of 40 trials). Each
trial leaves a stale ``prod.lock`` (alternately an older version's file naming a dead pid, and a
holder SIGKILLed while holding), releases five racers at once, and lets an external observer
(``conformance.Observer``: enter/exit records with pid and monotonic time) prove that no two
holds overlap and that exactly one racer broke the stale lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hepinfra.state import conformance
from hepinfra.state.local import LocalBackend

TRIALS = 40
RACERS = 5


class _RecordBreaks(logging.Handler):
    """Installed before the racers fork: each racer that breaks the stale lock records a ``break``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.observer: conformance.Observer | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.observer is not None and "cleared the lock" in record.getMessage():
            self.observer.record("break")


@pytest.fixture
def breaks() -> Iterator[_RecordBreaks]:
    handler = _RecordBreaks()
    logger = logging.getLogger("hepinfra.state")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _old_version_stale_lock(directory: Path, env: str) -> None:
    """What an older hepinfra (pid liveness, no flock) left when its process died."""
    directory.mkdir(parents=True, exist_ok=True)
    info = {
        "id": "0123456789abcdef",
        "pid": _dead_pid(),
        "host": socket.gethostname(),
        "user": "ci",
        "created": "2026-01-01T00:00:00+00:00",
        "command": "hepinfra apply",
    }
    (directory / f"{env}.lock").write_text(json.dumps(info))


def test_racers_breaking_one_stale_lock_never_both_hold_it(tmp_path: Path, breaks: _RecordBreaks) -> None:
    started = time.monotonic()
    overlaps: list[str] = []  # two holders at once, or a holder's lock pulled from under it
    double_breaks: list[str] = []  # more than one racer "broke" the one stale lock
    for trial in range(TRIALS):
        directory = tmp_path / f"t{trial}"

        def factory(directory: Path = directory) -> LocalBackend:
            return LocalBackend(directory)

        if trial % 2:
            conformance.kill_a_holder(factory, "prod")
        else:
            _old_version_stale_lock(directory, "prod")
        assert factory().lock_holder("prod") is not None
        observer = conformance.Observer(tmp_path / f"observer-{trial}")
        breaks.observer = observer
        try:
            conformance.race(factory, "prod", observer, workers=RACERS, rounds=1, hold=0.002)
        except AssertionError as exc:
            overlaps.append(f"trial {trial}: {str(exc).splitlines()[0]}")
        if observer.count("break") != 1:
            double_breaks.append(f"trial {trial}: {observer.count('break')} racers broke the stale lock")
    elapsed = time.monotonic() - started
    print(f"two holders: {len(overlaps)}/{TRIALS}, double breaks: {len(double_breaks)}/{TRIALS}, {elapsed:.1f}s")
    assert not overlaps, f"{len(overlaps)} of {TRIALS} trials broke mutual exclusion: {overlaps[:5]}"
    assert not double_breaks, f"{len(double_breaks)} of {TRIALS} trials: {double_breaks[:5]}"
    assert elapsed < 30, f"{TRIALS} trials took {elapsed:.1f}s"
