"""``hepinfra run --watch``: supervise a program and restart it when a value it was given changes.

The values come from one of two sources, read every ``interval``:
* ``--from FILE``: a dotenv file that hepinfra renders (an output). The app's host needs no
  hepinfra credential at all: it only reads the file (atomically replaced by each apply).
* otherwise: the manifest, read as ``hepinfra run`` reads it (Reveal, state), with credentials.

On a change: a line saying which keys changed (never a value), an optional random delay
(``jitter``: many instances do not restart at once), SIGTERM to the program's process group, up to
``grace`` for it to exit, SIGKILL, and the program again with the new values. A read that fails
(the file missing or unparsable, hep.gg unreachable) keeps the program running and is retried.
SIGTERM, SIGINT or SIGHUP to hepinfra stops the program the same way and exits with its status;
the program exiting on its own ends the watch with its status.

Owns: the loop, the child process group, the restart sequence. Must not: put a value in argv, a
message or a log line.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hepinfra.errors import UsageError


def parse_interval(value: str, option: str) -> float:
    """``250ms``, ``2s``, ``1.5m``, ``0``: seconds."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
    if match is None:
        raise UsageError(f"{option}: '{value[:40]}' is not a duration (250ms, 2s, 1m)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return float(match.group(1)) * scale


def read_dotenv(path: Path) -> dict[str, str]:
    """Every key of a dotenv file, as python-dotenv reads it (the last binding wins); UsageError if it
    cannot be read or holds a part python-dotenv cannot parse."""
    from hepinfra.outputs.dotenv import parse_entries

    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UsageError(f"--from {path}: cannot read it ({reason})") from None
    values: dict[str, str] = {}
    for entry in parse_entries(text):
        if entry.error:
            raise UsageError(f"--from {path}: line {entry.line(text)} cannot be parsed as a dotenv entry")
        if entry.key is not None and entry.value is not None:
            values[entry.key] = entry.value
    return values


@dataclass
class Supervisor:
    command: Sequence[str]
    environ: dict[str, str]  # the program's environment without the values
    read: Callable[[], dict[str, str]]
    interval: float
    grace: float
    jitter: float
    say: Callable[[str], None] = lambda line: print(f"hepinfra run: {line}", file=sys.stderr, flush=True)
    on_values: Callable[[dict[str, str]], None] = lambda values: None  # before each start (masks)
    restarts: int = 0
    _stop: int | None = None
    _child: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def run(self) -> int:
        values = self.read()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._stop_on)
        self._start(values)
        next_read = time.monotonic() + self.interval
        while True:
            assert self._child is not None
            code = self._child.poll()
            if code is not None:
                return self._status(code)
            if self._stop is not None:
                return self._status(self._terminate())
            now = time.monotonic()
            if now < next_read:
                time.sleep(min(0.05, next_read - now))
                continue
            next_read = now + self.interval
            try:
                fresh = self.read()
            except Exception as exc:  # a failed read never stops the program
                from hepinfra.safety.redact import redact

                self.say(f"could not read the values ({redact(str(exc))[:300]}); {self.command[0]} keeps running")
                continue
            changed = sorted(k for k in set(values) | set(fresh) if values.get(k) != fresh.get(k))
            if not changed:
                continue
            shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
            delay = random.uniform(0, self.jitter) if self.jitter > 0 else 0.0
            self.say(f"{shown} changed; restarting {self.command[0]}" + (f" in {delay:.1f}s" if delay else ""))
            if delay and self._sleep(delay):
                return self._status(self._terminate())
            code = self._terminate()
            if self._stop is not None:
                return self._status(code)
            values = fresh
            self.restarts += 1
            self._start(values)

    def _stop_on(self, signum: int, _frame: object) -> None:
        self._stop = signum

    def _sleep(self, seconds: float) -> bool:
        """Sleep, but wake for a stop signal; True if one came."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and self._stop is None:
            time.sleep(min(0.05, end - time.monotonic()))
        return self._stop is not None

    def _start(self, values: dict[str, str]) -> None:
        self.on_values(values)
        sys.stdout.flush()
        self._child = subprocess.Popen(  # no shell, by design
            list(self.command), env={**self.environ, **values}, start_new_session=True
        )

    def _terminate(self) -> int:
        """SIGTERM to the program's process group, ``grace`` to exit, then SIGKILL; its status."""
        child = self._child
        assert child is not None
        if child.poll() is not None:
            return child.returncode
        self._signal(child, signal.SIGTERM)
        try:
            return child.wait(self.grace)
        except subprocess.TimeoutExpired:
            self.say(f"{self.command[0]} did not exit within {self.grace:g}s of SIGTERM; killing it")
            self._signal(child, signal.SIGKILL)
            return child.wait()

    @staticmethod
    def _signal(child: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)

    def _status(self, code: int) -> int:
        """The program's status as a shell reports it (128 + N for a signal)."""
        return 128 - code if code < 0 else code
