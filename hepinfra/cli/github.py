"""``hepinfra github plan|apply|drift``: the commands behind the repository's ``action.yml`` (see
``hepinfra.github.jobs``). Inputs come from the command line and the job's environment
(``GITHUB_TOKEN``, ``GITHUB_EVENT_PATH``, ``GITHUB_OUTPUT``, ...); the token never from an argument."""

from __future__ import annotations

import sys
from typing import Any

import click

from hepinfra.cli.options import EXIT_ERROR, manifest_option


def _job_options(f: Any) -> Any:
    for decorator in reversed(
        [
            manifest_option,
            click.option(
                "-e",
                "--env",
                "envs",
                multiple=True,
                help="Limit to this environment (repeatable; a space- or comma-separated list is split).",
            ),
            click.option(
                "--comment",
                type=click.Choice(["update", "new", "off"]),
                default="update",
                show_default=True,
                help="update: one comment per pull request and manifest, edited in place; new: a comment per run.",
            ),
            click.option(
                "--on-unreviewed",
                type=click.Choice(["fail", "apply"]),
                default="fail",
                show_default=True,
                help="apply, on a push that merged no reviewed plan: fail, or apply the plan made now.",
            ),
            click.option(
                "--local-outputs",
                type=click.Choice(["skip", "keep"]),
                default="skip",
                show_default=True,
                help="skip: leave dotenv, template and pgbouncer outputs out (the runner is thrown away); "
                "keep: plan them.",
            ),
            click.option(
                "--write-back",
                type=click.Choice(["off", "pr"]),
                default="off",
                show_default=True,
                help="apply: pr: commit the committed outputs the apply wrote (age files) on a branch and open a "
                "pull request with them; plans treat the files it replaces as a pending write-back.",
            ),
        ]
    ):
        f = decorator(f)
    return f


@click.group()
def github() -> None:
    """Run in a GitHub Actions job (action.yml): plan comments, apply on merge, drift issues."""


def _run(
    which: str, manifest_file: str, envs: tuple[str, ...], comment: str, on_unreviewed: str, local: str, write_back: str
) -> None:
    from hepinfra.github.jobs import Job

    split = tuple(e for value in envs for e in value.replace(",", " ").split())
    job = Job.from_env(manifest_file, split, comment, on_unreviewed, local == "skip", write_back)

    import secrets

    def log(line: str) -> None:
        click.echo(line.rstrip("\n"))

    # what the job prints holds text of the pull request (names, paths, argv): GitHub must not read
    # a workflow command (::set-output::, ::add-mask::, ...) in it
    token = secrets.token_hex(16)
    click.echo(f"::stop-commands::{token}")
    try:
        code = _job(which, job, log)
    finally:
        click.echo(f"::{token}::")
    if code:
        sys.exit(EXIT_ERROR)


def _job(which: str, job: Any, log: Any) -> int:
    from hepinfra.github.api import GitHub

    with GitHub.from_env() as gh:
        if which == "plan":
            from hepinfra.github.jobs import plan_job as run
        elif which == "apply":
            from hepinfra.github.jobs import apply_job as run
        else:
            from hepinfra.github.drift import drift_job as run
        code: int = run(job, gh, log)
    return code


_HELP = {
    "plan": "pull_request: plan against the base commit and keep ONE comment on the pull request up to date.",
    "apply": "push (merge): apply only the change set reviewed on the merged pull request; workflow_dispatch: "
    "the fingerprint given.",
    "drift": "schedule: a refreshing plan per environment; ONE issue per environment lists its drift.",
}


def _command(which: str) -> click.Command:
    def command(
        manifest_file: str, envs: tuple[str, ...], comment: str, on_unreviewed: str, local_outputs: str, write_back: str
    ) -> None:
        _run(which, manifest_file, envs, comment, on_unreviewed, local_outputs, write_back)

    command.__doc__ = _HELP[which]
    return github.command(which)(_job_options(command))


for _which in _HELP:
    _command(_which)
