"""Executes a Plan: one handler per action, bounded concurrency, the journal. Never re-diffs.

``ledger`` (state in memory, group commit, journal entries), ``writer`` (outputs: real-path
re-check, in-process and cross-process file locks, one failure per output), ``executor``
(the handlers and the run: parallelism slots, events, cancellation), ``pins`` (a saved plan's
checks against state and hep.gg).
"""

from hepinfra.apply.executor import ApplyResult, Executor, Outcome
from hepinfra.apply.ledger import Ledger
from hepinfra.apply.pins import check_changes, check_pins, current_remote, remote_digests

__all__ = [
    "ApplyResult",
    "Executor",
    "Ledger",
    "Outcome",
    "check_changes",
    "check_pins",
    "current_remote",
    "remote_digests",
]
