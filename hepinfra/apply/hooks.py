"""``after_rotate:``: the command a database runs once its new credentials are written and verified.

Owns: running it like an exec output's command (no shell, in the project directory, in the same
minimal environment: ``safety.credentials.child_environment``'s allow-list plus what the
database's ``after_rotate_pass_env`` names, never a credential; its whole process group killed at
the timeout) with ``HEPINFRA_ENV``, ``HEPINFRA_ADDRESS`` and ``HEPINFRA_NAME`` added; saying how
long it ran and its last line of output, and turning a non-zero exit or a timeout into one line:
the last meaningful line of its stderr (``safety.child_stderr``), masked.
Must not: pass a secret in its argv or environment (the manifest refuses one in argv).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hepinfra.errors import OutputError
from hepinfra.values import Declared, OutputTarget


@dataclass(frozen=True)
class HookRun:
    """A hook that ran: how long it took and its last line of output (masked), for the apply's
    line and the ``done`` event (``"hook": {"ms": ..., "last_line": ...}``)."""

    ms: float
    last_line: str

    def describe(self) -> str:
        return f"ran after_rotate in {self.ms:.0f} ms: {self.last_line}"

    def as_event(self) -> dict[str, Any]:
        return {"ms": round(self.ms, 1), "last_line": self.last_line}


def run_hook(decl: Declared, project_dir: Path, values: list[str], group: tuple[Declared, ...] = ()) -> HookRun:
    """``values``: the new credentials (password, connection string): a line of its output holding
    any part of one (8 characters in a row, in any encoding) is not shown. ``group``
    (``after_rotate_once``): the databases it runs for at once, listed in ``HEPINFRA_ADDRESSES``."""
    from hepinfra.outputs.exec import run
    from hepinfra.safety.child_stderr import last_line

    target = OutputTarget(
        kind="exec",
        path="after_rotate",
        keys=(),
        template=None,
        template_source=None,
        mode=0o600,
        allow_tracked=False,
        allow_outside=False,
        definition_digest="",
        argv=decl.after_rotate,
        timeout=decl.after_rotate_timeout,
        pass_env=decl.hook_pass_env,
        scrub=decl.hook_scrub,
        cwd=str(project_dir),
    )
    extra = {"HEPINFRA_ENV": decl.env, "HEPINFRA_ADDRESS": decl.address, "HEPINFRA_NAME": decl.name}
    if group:
        extra["HEPINFRA_ADDRESSES"] = "\n".join(d.address for d in group)
    started = time.perf_counter()
    code, out, err = run(decl.after_rotate, target, None, extra)
    ms = (time.perf_counter() - started) * 1000
    if code != 0:
        raise OutputError(f"after_rotate exited with status {code}: {last_line(err, values)}")
    return HookRun(ms, last_line(out, values, nothing="") or last_line(err, values, nothing="(no output)"))
