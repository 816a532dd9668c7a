"""Test aid for crash tests: ``HEPINFRA_TEST_KILL_AT=step:NAME`` SIGKILLs this process at the named
point of a change's sequence (``outputs``: after the remote step answered, before any output;
``verify``: after the outputs were recorded, before the check; ``hook``: after the check, before
the after_rotate hook; ``done``: after the hook, before its completion is recorded; a cut-over's:
``paused``: consumers held (PgBouncer paused), before hep.gg's rotate; ``reload``: a pgbouncer
output's file written, before RELOAD; ``resume``: RELOADed and RECONNECTed, before RESUME). The HTTP
boundaries (``before:N``, ``after:N``) are in ``hepgg._http``. Nothing happens without the variable.
"""

from __future__ import annotations

import os
import signal

_KILL_AT = os.environ.get("HEPINFRA_TEST_KILL_AT", "")


def kill_point(name: str) -> None:
    if f"step:{name}" == _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
