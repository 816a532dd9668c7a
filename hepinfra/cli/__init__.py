"""The command line: the click group, ``main``, and the one error handler that turns errors into exit
codes. Commands live in one module per group (``plan_apply``, ``state``, ``output_run``, ``emulator``);
``options`` holds what they share.

Owns: flags, arguments and wiring. The group is lazy: a command's module is imported only when
that command runs (or its help is shown), and heavy modules (httpx, pydantic, starlette, jinja2,
rich) are imported inside commands, so ``hepinfra --version`` stays fast.
Must not: hold logic that belongs to the core, or print a secret (except ``output``, on request,
and the local emulator's own throwaway key when it minted one).

Exit codes: 0 success or no changes; 1 any error (bad input included); 2 changes present
(``plan --detailed-exitcode``). A bare group (``hepinfra``, ``hepinfra state``) prints its help
and exits 0.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from hepinfra import __version__
from hepinfra.cli.options import EXIT_ERROR, EXIT_OK
from hepinfra.errors import HepinfraError

# A group run without a command raises this (click >= 8.2; older clicks print the help themselves).
_BARE_GROUP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())
# command -> "module:attribute": imported when the command runs or its help is shown
COMMANDS = {
    "validate": "hepinfra.cli.plan_apply:validate",
    "schema": "hepinfra.cli.plan_apply:schema",
    "plan": "hepinfra.cli.plan_apply:plan",
    "apply": "hepinfra.cli.plan_apply:apply",
    "rotate": "hepinfra.cli.plan_apply:rotate",
    "output": "hepinfra.cli.output_run:output",
    "run": "hepinfra.cli.output_run:run",
    "state": "hepinfra.cli.state:state",
    "emulator": "hepinfra.cli.emulator:emulator",
    "github": "hepinfra.cli.github:github",
    "import": "hepinfra.cli.onboard:import_command",
    "init": "hepinfra.cli.onboard:init",
    "status": "hepinfra.cli.status:status",
}


def fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def entry() -> None:
    """The ``hepinfra`` executable (and ``python -m hepinfra``): ``main`` in a process of its own.

    Start-up allocates tens of thousands of long-lived objects (modules, classes, validators) and
    little cyclic garbage, so the collector runs less often here (a younger generation of 10,000
    objects instead of 700), and the heap is frozen when the command has finished: the
    interpreter's final collections then skip it. Both only change when memory is reclaimed, never
    what runs; together they take about 0.2 s off every command on a 2-core machine
    (``bench/startup_bench.py``). ``main`` alone, called in-process (tests), leaves the collector
    as it is.
    """
    import gc

    gc.set_threshold(10_000, 20, 100)
    try:
        main()
    finally:
        gc.freeze()


def main(argv: list[str] | None = None) -> None:
    """Entry point: every byte written to stdout and stderr passes the redactor (``output`` alone
    writes around it, on explicit request); then run the click app."""
    from hepinfra.safety.redact import RedactingStream

    _show_warnings()
    raw = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(raw[0]), RedactingStream(raw[1])
    try:
        _dispatch(argv)
    finally:
        sys.stdout, sys.stderr = raw


def _dispatch(argv: list[str] | None) -> None:
    """Run the click app, mapping every failure to one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="hepinfra", standalone_mode=False)
    except HepinfraError as exc:
        fail(str(exc))
    except click.exceptions.Abort:
        fail("aborted")
    except _BARE_GROUP as exc:  # bare ``hepinfra`` or ``hepinfra state``: the usual help, exit 0
        click.echo(exc.ctx.get_help(), color=exc.ctx.color)
    except click.ClickException as exc:  # usage errors: one line, exit 1 (2 means "changes")
        fail(exc.format_message().replace("\n", " "))
    except KeyboardInterrupt:
        fail("interrupted")
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    except Exception as exc:  # a bug: one line, no message (it could hold a third-party secret)
        import traceback

        if os.environ.get("HEPINFRA_DEBUG"):
            from hepinfra.safety.redact import format_exception

            sys.stderr.write(format_exception(exc))
            sys.exit(EXIT_ERROR)

        frame = traceback.extract_tb(exc.__traceback__)[-1]
        fail(
            f"internal error {type(exc).__name__} at {os.path.basename(frame.filename)}:{frame.lineno}; "
            "please report it (HEPINFRA_DEBUG=1 shows the traceback)"
        )
    sys.exit(EXIT_OK)


def _show_warnings() -> None:
    """hepinfra's own warnings (never holding a secret) go to the *current* stderr, one line each."""
    import logging

    class StderrWarnings(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            from hepinfra.safety.redact import redact

            sys.stderr.write(f"Warning: {redact(record.getMessage())}\n")

    logger = logging.getLogger("hepinfra")
    if not any(type(h).__name__ == "StderrWarnings" for h in logger.handlers):
        logger.addHandler(StderrWarnings(logging.WARNING))


class LazyGroup(click.Group):
    """A group whose commands are imported on use (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        import importlib

        module, _, attribute = where.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="hepinfra")
def cli() -> None:
    """Declarative provisioning for hep.gg: plan, apply, rotate and render credentials."""


__all__ = ["COMMANDS", "cli", "main"]
