"""The exec sink: any secret store a command line reaches (Vault, 1Password, GitHub, Kubernetes...).

Owns: running the manifest's command with the rendered keys as one JSON object on its stdin
(never in its argv, which every user of the machine can read, nor in its environment), in a
minimal environment (``safety.credentials.child_environment``: an allow-list plus what
``pass_env`` names, never a credential), a timeout that kills its whole process group, and the
optional ``read:`` command that prints the same JSON object back for drift.
Exit 0 means written. A failure is the last meaningful line of the command's stderr
(``safety.child_stderr``: never a bare "Traceback"), with every value of this write and every
registered secret masked.
The ``exec:`` output's schema and resolution live here too (``ExecOutput``).
Must not: put a value in argv, the environment, an exception or a log line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.outputs.base import Written, delivered, keyed_payload, observed, render_keys
from hepinfra.safety.child_stderr import json_values, last_line
from hepinfra.spec import Duration, EnvVarName, OutputSpecBase, definition_digest
from hepinfra.values import ObservedOutput, OutputTarget

if TYPE_CHECKING:
    from hepinfra.resolution import Resolution

READ_LIMIT = 1024 * 1024


def child_environment(target: OutputTarget, environ: dict[str, str] | None = None) -> dict[str, str]:
    """What a command gets: PATH, HOME, the locale, proxies and CA bundles (``CHILD_ALLOWED``), plus
    what ``pass_env`` names; never ``HEPGG_*``, ``HEPINFRA_*`` or a credential of the manifest
    (``target.scrub``), whatever ``pass_env`` says."""
    from hepinfra.safety.credentials import OWN_CREDENTIALS
    from hepinfra.safety.credentials import child_environment as minimal

    source = os.environ if environ is None else environ
    return minimal(target.pass_env, source, withheld=(*OWN_CREDENTIALS, *target.scrub))


def run(
    argv: tuple[str, ...], target: OutputTarget, stdin: bytes | None, extra_env: dict[str, str] | None = None
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in the project directory, keeping at most READ_LIMIT bytes of each of its
    outputs; kill its process group at the timeout. A command that exited while something it
    started (even in a new session) still holds its pipes is done: its exit status counts."""

    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=target.cwd or None,
            env={**child_environment(target), **(extra_env or {})},
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise OutputError(f"{target.path}: cannot run {argv[0]!r}: {exc.strerror}") from None
    RUNNING.add(proc.pid)
    try:
        return _wait(proc, target, stdin)
    finally:
        RUNNING.discard(proc.pid)


RUNNING: set[int] = set()  # process groups of the commands running now (exec outputs, after_rotate hooks)


def kill_running() -> None:
    """An interrupted apply: kill every command it started that still runs (its whole process group),
    so no hook or secret-store CLI outlives the run; the journal keeps each owed for the next apply."""
    for pgid in list(RUNNING):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _wait(proc: Any, target: OutputTarget, stdin: bytes | None) -> tuple[int, bytes, bytes]:
    import threading
    import time

    kept: dict[str, bytearray] = {"out": bytearray(), "err": bytearray()}

    def drain(name: str, pipe: Any) -> None:  # keeps the first READ_LIMIT bytes, discards the rest
        with contextlib.suppress(OSError, ValueError):
            while chunk := pipe.read(65536):
                room = READ_LIMIT + 1 - len(kept[name])
                if room > 0:
                    kept[name] += chunk[:room]

    pipes = (("out", proc.stdout), ("err", proc.stderr))
    readers = [threading.Thread(target=drain, args=(n, p), daemon=True) for n, p in pipes]
    for reader in readers:
        reader.start()
    if stdin is not None and proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write(stdin)
        with contextlib.suppress(OSError):
            proc.stdin.close()
    deadline = time.monotonic() + target.timeout
    try:
        proc.wait(timeout=target.timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise OutputError(f"{target.path}: the command did not finish within {target.timeout}s; killed") from None
    for reader in readers:  # its own output is complete once it exits, unless a child still holds the pipe
        reader.join(max(0.0, min(2.0, deadline - time.monotonic())))
    if not any(reader.is_alive() for reader in readers):
        _close(proc)
    # else: something it started holds the pipes; closing them here would wait for that reader. The
    # daemon readers end, and the pipes close, when it does.
    return proc.returncode, bytes(kept["out"]), bytes(kept["err"])


def _close(proc: Any) -> None:
    for pipe in (proc.stdout, proc.stderr):
        with contextlib.suppress(OSError, ValueError):
            pipe.close()


class ExecSink:
    kind = "exec"
    removable = False  # a command writes; nothing tells it to delete

    def write(
        self,
        target: OutputTarget,
        context: dict[str, Any],
        digest: Digester,
        *,
        previous_keys: tuple[str, ...] = (),
        recorded: dict[str, str] | None = None,
    ) -> Written:
        values = render_keys(target, context)
        payload = keyed_payload(values)
        code, _, err = run(target.argv, target, payload)
        if code != 0:
            raise OutputError(f"{target.path}: exited {code}: {last_line(err, values.values())}")
        return delivered(values, digest)

    def observe(self, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        """What ``read:`` prints now; without ``read:``, nothing can be observed (the caller then
        trusts the recorded digest and says so)."""
        if not target.read_argv:
            return ObservedOutput(exists=True, trusted=True)
        try:
            code, out, err = run(target.read_argv, target, None)
        except OutputError as exc:
            return ObservedOutput(exists=True, problem=f"cannot read it back: {exc.message}")
        if code != 0:  # a line of its stderr holding a value it printed (or anything encoded) is not shown
            why = last_line(err, json_values(out))
            return ObservedOutput(exists=True, problem=f"its read command exited {code}: {why}")
        if len(out) > READ_LIMIT:
            return ObservedOutput(exists=True, problem=f"its read command printed more than {READ_LIMIT} bytes")
        try:
            found = json.loads(out) if out.strip() else {}
        except (ValueError, RecursionError):
            return ObservedOutput(exists=True, problem="its read command printed no JSON object")
        if not isinstance(found, dict):
            return ObservedOutput(exists=True, problem="its read command printed no JSON object")
        values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in found.items() if k in keys}
        return observed(values, digest)

    def retire(
        self, target: OutputTarget, keys: tuple[str, ...], recorded: dict[str, str], digest: Digester
    ) -> str | None:
        return "hepinfra cannot remove what a command wrote; remove it where it went, if it is unused"


# --- the manifest's ``exec:`` output --------------------------------------------------------------


class ExecOutput(OutputSpecBase):
    """Send the keys, as one JSON object on stdin, to a command (a secret store's CLI)."""

    kind: ClassVar[str] = "exec"
    claims: ClassVar[str] = "remote"  # keys inside a file, a whole file, or nothing of the project
    remote: ClassVar[bool] = True  # no file of the project: observed only by a refreshing plan
    review_fields: ClassVar[tuple[str, ...]] = ("exec", "read", "pass_env", "timeout", "keys")

    exec: list[str] = Field(min_length=1)  # argv templates: env, key, name, vars; never a secret
    keys: dict[EnvVarName, str] = Field(min_length=1)
    read: list[str] | None = Field(default=None, min_length=1)  # prints the same JSON object back
    timeout: Duration = 30
    pass_env: list[EnvVarName] = []  # variables hepinfra would otherwise keep from the command

    def runs(self) -> list[str]:
        return [*self.exec, *(self.read or [])]

    def resolve(
        self, r: Resolution, base: tuple[str | int, ...], context: dict[str, Any], value_context: dict[str, Any]
    ) -> OutputTarget:
        """Its argv rendered now (no secret can be in it), its keys dry-run."""
        command = r.argv(self.exec, (*base, "exec"), context, "an exec argv")
        read = r.argv(self.read, (*base, "read"), context, "an exec argv") if self.read else ()
        for k, source in self.keys.items():
            r.dry_render(source, value_context, (*base, "keys", k))
        definition = {"kind": "exec", "argv": command, "read": read, "keys": sorted(self.keys.items()),
                      "pass_env": sorted(self.pass_env), "timeout": self.timeout}  # fmt: skip
        scrub = r.credential_vars()
        pass_env = r.pass_env(self.pass_env, (*base, "pass_env"))
        return OutputTarget(
            kind="exec",
            path="exec:" + shlex.join(command),
            keys=tuple(self.keys.items()),
            template=None,
            template_source=None,
            mode=0o600,
            allow_tracked=False,
            allow_outside=False,
            definition_digest=definition_digest(definition),
            node=(*base, "exec"),
            argv=command,
            read_argv=read,
            timeout=self.timeout,
            pass_env=pass_env,
            scrub=tuple(scrub),
            cwd=str(r.project_dir),
        )
