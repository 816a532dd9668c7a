"""A bare group (``hepinfra``, ``hepinfra state``) shows its usual multi-line help and exits 0;
real usage errors stay one line and exit 1."""

from __future__ import annotations

import pytest

from tests.cliutil import invoke


@pytest.mark.parametrize(
    "args,usage,commands",
    [
        ([], "Usage: hepinfra [OPTIONS] COMMAND [ARGS]...", ["plan", "apply", "validate", "state"]),
        (["state"], "Usage: hepinfra state [OPTIONS] COMMAND [ARGS]...", ["list", "show", "unlock"]),
    ],
)
def test_bare_group_prints_multiline_help_and_exits_0(args: list[str], usage: str, commands: list[str]) -> None:
    result = invoke(args)
    assert result.code == 0, result.err
    assert result.err == ""
    lines = result.out.splitlines()
    assert lines[0] == usage
    assert "Commands:" in lines
    listed = {line.split()[0] for line in lines[lines.index("Commands:") + 1 :] if line.strip()}
    assert set(commands) <= listed
    assert result.out == invoke([*args, "--help"]).out  # the same text as --help


@pytest.mark.parametrize("args", [["bogus"], ["state", "bogus"], ["plan", "--no-such-flag"]])
def test_real_usage_errors_stay_one_line_exit_1(args: list[str]) -> None:
    result = invoke(args)
    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith("Error: ") and result.err.count("\n") == 1
