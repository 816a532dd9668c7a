"""The exec sink: any secret store a command line reaches (Vault, 1Password, GitHub, Kubernetes...).

Owns: running the manifest's command with the rendered keys as one JSON object on its stdin
(never in its argv, which every user of the machine can read, nor in its environment), with
hepinfra's own credentials removed from its environment, a timeout that kills its whole process
group, and the optional ``read:`` command that prints the same JSON object back for drift.
Exit 0 means written. A failure is the first line of the command's stderr, with every value of
this write and every registered secret masked.
Must not: put a value in argv, the environment, an exception or a log line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.manifest import OutputTarget
from hepinfra.outputs.base import Written, keyed_payload, render_keys
from hepinfra.plan import ObservedOutput

READ_LIMIT = 1024 * 1024
# hepinfra's own credentials never reach a command (unless listed in pass_env)
SCRUBBED_PREFIXES = ("HEPGG_",)
SCRUBBED = ("HEPINFRA_STATE_KEY", "HEPINFRA_STATE_PG")


def child_environment(target: OutputTarget, environ: dict[str, str] | None = None) -> dict[str, str]:
    """hepinfra's environment minus its credentials: ``HEPGG_*``, the state key and URL, every
    ``db_key_env`` and ``url_env`` the manifest names; what ``pass_env`` lists stays."""
    source = dict(os.environ if environ is None else environ)
    keep = set(target.pass_env)
    drop = set(SCRUBBED) | set(target.scrub)
    return {k: v for k, v in source.items() if k in keep or not (k in drop or k.startswith(SCRUBBED_PREFIXES))}


def run(argv: tuple[str, ...], target: OutputTarget, stdin: bytes | None) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in the project directory; kill its process group at the timeout."""
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=target.cwd or None,
            env=child_environment(target),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise OutputError(f"{target.path}: cannot run {argv[0]!r}: {exc.strerror}") from None
    try:
        out, err = proc.communicate(stdin, timeout=target.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise OutputError(f"{target.path}: the command did not finish within {target.timeout}s; killed") from None
    except BrokenPipeError:
        out, err = b"", b""
        proc.wait()
    return proc.returncode, out, err


def first_line(err: bytes, values: list[str]) -> str:
    """The first non-empty line of a command's stderr, values of this write and secrets masked."""
    from hepinfra.safety.paths import shown
    from hepinfra.safety.redact import redact

    text = err.decode("utf-8", errors="replace")
    for value in sorted((v for v in values if len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, "[REDACTED]")
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return shown(redact(line), 200) if line else "(nothing on stderr)"


class ExecSink:
    kind = "exec"
    removable = False  # a command writes; nothing tells it to delete

    def write(
        self, target: OutputTarget, context: dict[str, Any], digest: Digester, *, previous_keys: tuple[str, ...] = ()
    ) -> Written:
        values = render_keys(target, context)
        payload = keyed_payload(values)
        code, _, err = run(target.argv, target, payload)
        if code != 0:
            raise OutputError(f"{target.path}: exited {code}: {first_line(err, list(values.values()))}")
        return Written(digest(payload), {k: digest(v) for k, v in values.items()})

    def observe(self, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        """What ``read:`` prints now; without ``read:``, nothing can be observed (the caller then
        trusts the recorded digest and says so)."""
        if not target.read_argv:
            return ObservedOutput(exists=True, trusted=True)
        try:
            code, out, err = run(target.read_argv, target, None)
        except OutputError as exc:
            return ObservedOutput(exists=True, problem=f"cannot read it back: {exc.message}")
        if code != 0:
            return ObservedOutput(exists=True, problem=f"its read command exited {code}: {first_line(err, [])}")
        try:
            found = json.loads(out[:READ_LIMIT]) if out.strip() else {}
        except ValueError:
            return ObservedOutput(exists=True, problem="its read command printed no JSON object")
        if not isinstance(found, dict):
            return ObservedOutput(exists=True, problem="its read command printed no JSON object")
        values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in found.items() if k in keys}
        if not values:
            return ObservedOutput(exists=False)
        return ObservedOutput(
            exists=True,
            digest=digest(keyed_payload(values)),
            key_digests=tuple(sorted((k, digest(v)) for k, v in values.items())),
        )

    def retire(
        self, target: OutputTarget, keys: tuple[str, ...], recorded: dict[str, str], digest: Digester
    ) -> str | None:
        return "hepinfra cannot remove what a command wrote; remove it where it went, if it is unused"
