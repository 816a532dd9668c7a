"""``after_rotate:``: the command a database runs once its new credentials are written and verified.

Owns: running it like an exec output's command (no shell, in the project directory, in the same
minimal environment: ``safety.credentials.child_environment``'s allow-list plus what the
database's ``after_rotate_pass_env`` names, never a credential; its whole process group killed at
the timeout) with ``HEPINFRA_ENV``, ``HEPINFRA_ADDRESS`` and ``HEPINFRA_NAME`` added, and turning
a non-zero exit or a timeout into one line: the first line of its stderr, masked.
Must not: pass a secret in its argv or environment (the manifest refuses one in argv).
"""

from __future__ import annotations

from pathlib import Path

from hepinfra.errors import OutputError
from hepinfra.values import Declared, OutputTarget


def run_hook(decl: Declared, project_dir: Path, values: list[str]) -> None:
    """``values``: the new credentials (password, connection string): a stderr line holding any part of
    one (8 characters in a row, in any encoding) is not shown."""
    from hepinfra.outputs.exec import first_line, run

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
    code, _, err = run(decl.after_rotate, target, None, extra)
    if code != 0:
        why = first_line(err, values)
        raise OutputError(f"after_rotate exited with status {code}" + (f": {why}" if why else ""))
