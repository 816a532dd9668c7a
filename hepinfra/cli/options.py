"""What the commands share: exit codes, -f, -e and --lock-timeout options, addresses, colour, the
real stdout, and running a coroutine so that SIGTERM unwinds (locks released, journal kept).
Must not: import anything heavy, or a command's module."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from hepinfra.errors import HepinfraError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def raw_stdout() -> Any:
    """The real stdout, for ``output`` (the one command that prints secrets, on request)."""
    from hepinfra.safety.redact import RedactingStream

    return sys.stdout.stream if isinstance(sys.stdout, RedactingStream) else sys.stdout


def manifest_option(f: Any) -> Any:
    return click.option(
        "-f",
        "--file",
        "manifest_file",
        default="hepinfra.yaml",
        show_default=True,
        metavar="FILE",
        help="The manifest.",
    )(f)


def env_option(f: Any) -> Any:
    return click.option(
        "-e",
        "--env",
        "envs",
        multiple=True,
        metavar="ENV",
        help="Limit to this environment (repeatable; default: all).",
    )(f)


def lock_timeout_option(f: Any) -> Any:
    return click.option(
        "--lock-timeout",
        default="0s",
        show_default=True,
        metavar="DURATION",
        help="Wait this long for a held state lock (e.g. 30s, 5m).",
    )(f)


def parse_timeout(value: str) -> float:
    from hepinfra.values import parse_duration

    if value.strip() in ("0", "0s"):
        return 0.0
    try:
        return float(parse_duration(value))
    except ValueError as exc:
        raise UsageError(f"--lock-timeout: {exc}") from None


def use_colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def run_async(coro: Any) -> Any:
    """asyncio.run, but the main task returns None: on exit asyncio.run repr()s its SIGINT handler,
    which holds the main task, and a task's repr includes its result (a 1,000-change plan: ~0.1 s)."""
    import asyncio
    import contextlib
    import signal

    box: list[Any] = []
    terminated: list[int] = []

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None

        def on_sigterm() -> None:  # a cancelled CI job: unwind (journal, locks) instead of dying
            terminated.append(1)
            task.cancel()

        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)

        # a held lock's refresh got no answer from the state backend: the run ends (and releases it)
        def on_stall(_error: Exception) -> None:
            loop.call_soon_threadsafe(task.cancel)

        unsubscribe = bounded.on_stall(on_stall)
        try:
            box.append(await coro)
        finally:
            unsubscribe()

    from hepinfra.errors import Interrupted, StateError
    from hepinfra.state import bounded

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        if terminated:
            raise HepinfraError(
                "terminated by SIGTERM; locks were released and the journal in state lets the next run resume"
            ) from None
        if (stall := bounded.stalled()) is not None:
            raise stall from None
        raise
    except Interrupted as exc:  # cancelled in the middle of an apply: say what was done and what was not
        if terminated:
            raise Interrupted(f"terminated by SIGTERM: {exc.message.removeprefix('interrupted: ')}") from None
        if (stall := bounded.stalled()) is not None:
            raise StateError(f"{stall.message}; {exc.message}", hint=stall.hint) from None
        raise
    return box[0]


def parse_address(manifest: Any, envs: list[str], address: str) -> tuple[str, str, str]:
    """``ENV/KIND.KEY`` (or ``ENV/KEY`` for a database; ENV may be left out with one environment)
    -> (env, kind, key)."""
    from hepinfra.values import split_ref

    if "/" in address:
        env, rest = address.split("/", 1)
    elif len(envs) == 1:
        env, rest = envs[0], address
    else:
        raise UsageError(f"{address}: name the environment, as ENV/databases.NAME (or ENV/ids.NAME, ENV/uploads.NAME)")
    if env not in manifest.model.environments:
        raise UsageError(f"{address}: no environment '{env}' in the manifest")
    kind, key = split_ref(rest)
    return env, kind, key


def target_option(f: Any) -> Any:
    return click.option(
        "--target",
        "targets",
        multiple=True,
        metavar="ADDR",
        help="Plan only this resource (repeatable): ENV/KIND.NAME (databases, ids, uploads), KIND.NAME or a "
        "database's NAME for every selected environment; every other change is left out and the plan says so.",
    )(f)


def max_rotations_option(f: Any) -> Any:
    return click.option(
        "--max-rotations",
        type=click.IntRange(min=0),
        metavar="N",
        help="Rotate at most N resources in this run: due rotations past N wait for a later run (most overdue "
        "first); --rotate requests are never held but count; the plan lists what waits.",
    )(f)


def skip_local_option(f: Any) -> Any:
    return click.option(
        "--skip-local-outputs",
        is_flag=True,
        envvar="HEPINFRA_SKIP_LOCAL_OUTPUTS",
        help="Leave out outputs that are plaintext files for this machine (dotenv, template, pgbouncer): neither read, "
        "written nor retired. For CI runners that are thrown away. Also HEPINFRA_SKIP_LOCAL_OUTPUTS=1.",
    )(f)


def skipped(skip_local_outputs: bool) -> frozenset[str]:
    from hepinfra.outputs import local_kinds

    return local_kinds() if skip_local_outputs else frozenset()
