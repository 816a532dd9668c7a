"""GitHub Actions masking for what ``output`` and ``run`` hand over (``hepinfra.github.mask``), and
``output --format github-env|github-output``: the real executable in a subprocess against the
emulator over loopback, with GITHUB_ACTIONS=true as a runner sets it.

Outputs that hold values on purpose (stdout of ``output``, the ``::add-mask::`` lines, the files
``$GITHUB_ENV`` / ``$GITHUB_OUTPUT``) stay out of the session's secret scan, like every ``output``
test (``invoke(..., secret_ok=True)``); whatever else the commands print (every stderr line that is
not a mask line) joins it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hepinfra.emulator.app import EmulatorConfig
from hepinfra.github import mask
from tests.cliutil import invoke, write_project
from tests.conftest import ENV, Server, record_artifact

# characters quoting and escaping bugs trip on (not both "$" and a single quote: no dotenv quoting
# carries that pair to python-dotenv and bash alike, and apply would refuse the password)
PASSWORD_CHARS = "aZ9%\"/@:+ &=#'é"
# a value of several lines, holding what a heredoc writer must not take for its own delimiter
NOTE_LINES = ["first line", "{{ db.password }}", "ghadelimiter_00000000-0000-0000-0000-000000000000", "EOF", "", "ok"]
MANIFEST = f"""
version: 1
environments:
  prod: {{}}
databases:
  shop:
    engine: postgres
    outputs:
      - dotenv: ".env.{{{{ env }}}}"
        keys:
          SHOP_DATABASE_URL: "{{{{ db.connection_string }}}}"
          SHOP_DB_PASSWORD: "{{{{ db.password }}}}"
          SHOP_NOTE: {json.dumps(chr(10).join(NOTE_LINES))}
"""
MASK = re.compile(r"^::add-mask::(.*)$")


def unescape_data(data: str) -> str:
    """What the runner registers for a command's data (actions/runner Runner.Common/ActionCommand.cs,
    UnescapeData: each mapping replaced in turn, %0D, then %0A, then %25)."""
    return data.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def masks_in(stderr: str) -> list[str]:
    return [unescape_data(m.group(1)) for line in stderr.splitlines() if (m := MASK.match(line))]


def not_masks(stderr: str) -> str:
    return "".join(line for line in stderr.splitlines(keepends=True) if not MASK.match(line))


def read_file_commands(text: str) -> dict[str, str]:
    """GitHub's reader of $GITHUB_ENV / $GITHUB_OUTPUT (actions/runner FileCommandManager.cs, on
    Linux): NAME=VALUE lines, or NAME<<DELIM, then every line up to one that is exactly DELIM (the
    value: those lines, without the last newline)."""
    found: dict[str, str] = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text ends with a newline: no last, empty line
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            name, value = line.split("=", 1)
            found[name] = value
            continue
        assert heredoc > 0, f"not a file command line: {line!r}"
        name, delimiter = line.split("<<", 1)
        assert delimiter, "an empty delimiter"
        body = []
        while True:
            assert i < len(lines), f"matching delimiter not found for {name}"
            candidate = lines[i]
            i += 1
            if candidate == delimiter:
                break
            body.append(candidate)
        found[name] = "\n".join(body)
    return found


@pytest.fixture
def shop(tmp_path: Path, make_world) -> tuple[Path, Server]:  # type: ignore[no-untyped-def]
    server = make_world(EmulatorConfig(password_chars=PASSWORD_CHARS, password_length=32))
    project = write_project(tmp_path / "p", MANIFEST)
    applied = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert applied.code == 0, applied.out + applied.err
    return project, server


def environ(server: Server, **extra: str) -> dict[str, str]:
    """The user's environment without hepgg's or GitHub's variables, then the test world's and ``extra``."""
    own = ("HEPGG_", "GITHUB_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    return {**env, **ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url, **extra}


def hepinfra(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hepinfra", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_every_form_of_each_value_is_masked_on_stderr_and_stdout_stays_exact(shop: tuple[Path, Server]) -> None:
    project, server = shop
    env = environ(server, GITHUB_ACTIONS="true")
    shown = hepinfra("output", "prod/databases.shop", "-f", str(project), "--format", "json", env=env)
    assert shown.returncode == 0, not_masks(shown.stderr)
    record_artifact("hepinfra output --format json (GITHUB_ACTIONS): stderr without masks", not_masks(shown.stderr))
    values = json.loads(shown.stdout)  # stdout is the JSON document and nothing else
    # no workflow command on stdout (a value may hold "::" itself: the emulator's passwords do)
    commands = [line for line in shown.stdout.splitlines() if line.lstrip().startswith("::")]
    assert "::add-mask::" not in shown.stdout and commands == [] and not_masks(shown.stderr) == ""
    password, url, note = values["SHOP_DB_PASSWORD"], values["SHOP_DATABASE_URL"], values["SHOP_NOTE"]
    assert set(PASSWORD_CHARS) <= set(password) and quote(password, safe="") in url
    assert note == "\n".join(NOTE_LINES).replace("{{ db.password }}", password)
    masks = set(masks_in(shown.stderr))
    expected = {
        password,
        quote(password, safe=""),
        quote_plus(password),
        json.dumps(password)[1:-1],
        json.dumps(password, ensure_ascii=False)[1:-1],
        url,
        quote(url, safe=""),
        json.dumps(url)[1:-1],
        *[line for line in NOTE_LINES if len(line) >= 4 and "{{" not in line],  # each line of the note
        json.dumps(note)[1:-1],
    }
    assert expected <= masks, sorted(expected - masks)
    assert not [m for m in masks if "\n" in m or "\r" in m or not m.strip()]  # GitHub masks a line at a time
    assert "" not in masks and "ok" not in masks  # too short to mask: it would blank "ok" all over the log

    # the way a workflow captures it: $(...) gets exactly the document, the masks reach the log
    script = f'v=$({shlex.join([sys.executable, "-m", "hepinfra", "output", "prod/databases.shop", "-f", str(project), "--format", "json"])}) && printf %s "$v"'
    captured = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert captured.returncode == 0 and json.loads(captured.stdout) == values
    assert set(masks_in(captured.stderr)) == masks

    for fmt in ("dotenv", "shell"):
        other = hepinfra("output", "shop", "-f", str(project), "--format", fmt, env=env)
        assert other.returncode == 0 and "add-mask" not in other.stdout
        assert set(masks_in(other.stderr)) == masks and not_masks(other.stderr) == ""


def test_github_env_and_github_output_carry_every_value_exactly(tmp_path: Path, shop: tuple[Path, Server]) -> None:
    project, server = shop
    github_env, github_output = tmp_path / "github_env", tmp_path / "github_output"
    github_env.write_text("EARLIER=kept\n")  # a step's file already holds another value: appended to
    github_output.write_text("")
    env = environ(server, GITHUB_ENV=str(github_env), GITHUB_OUTPUT=str(github_output))  # no GITHUB_ACTIONS
    values = json.loads(hepinfra("output", "shop", "-f", str(project), "--format", "json", env=env).stdout)
    for fmt, file in (("github-env", github_env), ("github-output", github_output)):
        written = hepinfra("output", "prod/databases.shop", "-f", str(project), "--format", fmt, env=env)
        assert written.returncode == 0, not_masks(written.stderr)
        record_artifact(
            f"hepinfra output --format {fmt}: stdout, stderr without masks", written.stdout + not_masks(written.stderr)
        )
        assert written.stdout == ""
        variable = "GITHUB_ENV" if fmt == "github-env" else "GITHUB_OUTPUT"
        assert not_masks(written.stderr) == (
            f"prod/databases.shop: wrote SHOP_DATABASE_URL, SHOP_DB_PASSWORD, SHOP_NOTE to ${variable}\n"
        )
        assert values["SHOP_DB_PASSWORD"] in masks_in(written.stderr)  # always masked for these two formats
        text = file.read_text()
        read = read_file_commands(text)
        assert read == ({"EARLIER": "kept", **values} if fmt == "github-env" else values)
        heads = re.findall(r"^(SHOP_\w+)<<(.*)$", text, re.MULTILINE)
        assert [name for name, _ in heads] == list(values)
        delimiters = [d for _, d in heads]
        assert len(set(delimiters)) == len(delimiters)  # one fresh delimiter per value
        for name, delimiter in heads:
            assert re.fullmatch(r"ghadelimiter_[0-9a-f-]{36}", delimiter) and delimiter not in values[name]
    again = hepinfra("output", "prod/databases.shop", "-f", str(project), "--format", "github-env", env=env)
    assert again.returncode == 0
    assert read_file_commands(github_env.read_text()) == {"EARLIER": "kept", **values}  # appended, read as one


def test_a_link_fifo_or_missing_variable_is_refused_in_one_line(tmp_path: Path, shop: tuple[Path, Server]) -> None:
    project, server = shop
    target = tmp_path / "elsewhere"
    target.write_text("untouched\n")
    link = tmp_path / "github_env"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [
        (
            "github-env",
            {"GITHUB_ENV": str(link)},
            f"Error: $GITHUB_ENV: {link} is a symbolic link; refusing to write through it\n",
        ),
        (
            "github-output",
            {"GITHUB_OUTPUT": str(fifo)},
            f"Error: $GITHUB_OUTPUT: {fifo} is not a regular file; refusing to write to it\n",
        ),
        (
            "github-output",
            {"GITHUB_OUTPUT": str(tmp_path)},
            f"Error: $GITHUB_OUTPUT: {tmp_path} is not a regular file; refusing to write to it\n",
        ),
        (
            "github-output",
            {},
            "Error: $GITHUB_OUTPUT is not set: --format github-output appends to the file it names\n",
        ),
        (
            "github-env",
            {"GITHUB_ENV": ""},
            "Error: $GITHUB_ENV is not set: --format github-env appends to the file it names\n",
        ),
    ]
    for fmt, extra, message in cases:
        env = environ(server, GITHUB_ACTIONS="true", **extra)
        refused = hepinfra("output", "prod/databases.shop", "-f", str(project), "--format", fmt, env=env)
        record_artifact(f"hepinfra output --format {fmt} refused", refused.stdout + refused.stderr)
        assert refused.returncode == 1 and refused.stdout == ""
        assert refused.stderr == message  # one line, no mask: refused before any value was read
    assert target.read_text() == "untouched\n" and link.is_symlink()


def test_without_github_actions_no_mask_line_is_printed(shop: tuple[Path, Server]) -> None:
    project, server = shop
    for flag in ({}, {"GITHUB_ACTIONS": "false"}, {"GITHUB_ACTIONS": "1"}):
        for fmt in ("dotenv", "json", "shell"):
            shown = hepinfra("output", "shop", "-f", str(project), "--format", fmt, env=environ(server, **flag))
            assert shown.returncode == 0 and shown.stderr == "", shown.stderr
            assert "add-mask" not in shown.stdout
    dotenv = hepinfra("output", "shop", "-f", str(project), env=environ(server))
    assert dotenv.stdout.startswith("SHOP_DATABASE_URL=")


def test_run_masks_every_value_before_the_command_starts(shop: tuple[Path, Server]) -> None:
    project, server = shop
    script = "import os; print('started', len(os.environ['SHOP_DB_PASSWORD']))"
    argv = [
        sys.executable,
        "-m",
        "hepinfra",
        "run",
        "-f",
        str(project),
        "-e",
        "prod",
        "--",
        sys.executable,
        "-c",
        script,
    ]
    merged = subprocess.run(  # one pipe for both: the order the runner sees them in
        argv,
        env=environ(server, GITHUB_ACTIONS="true"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert merged.returncode == 0, not_masks(merged.stdout)
    lines = merged.stdout.splitlines()
    assert lines[-1] == "started 32" and all(MASK.match(line) for line in lines[:-1])
    shown = json.loads(hepinfra("output", "shop", "-f", str(project), "--format", "json", env=environ(server)).stdout)
    masks = set(masks_in(merged.stdout))
    assert {shown["SHOP_DB_PASSWORD"], shown["SHOP_DATABASE_URL"], quote(shown["SHOP_DB_PASSWORD"], safe="")} <= masks
    quiet = subprocess.run(argv, env=environ(server), capture_output=True, text=True, timeout=120)
    record_artifact("hepinfra run without GITHUB_ACTIONS", quiet.stdout + quiet.stderr)
    assert quiet.returncode == 0 and quiet.stdout == "started 32\n" and quiet.stderr == ""


# --- the mask module alone ---------------------------------------------------------------------


def test_percent_cr_and_lf_are_escaped_so_the_runner_registers_the_exact_form() -> None:
    assert mask.escape_data("100%") == "100%25"
    assert mask.escape_data("a\rb\nc\r\n") == "a%0Db%0Ac%0D%0A"
    assert mask.escape_data("%0A%0D%25") == "%250A%250D%2525"  # text that looks escaped stays text
    assert mask.command("p%\nq") == "::add-mask::p%25%0Aq\n"
    for text in ("%0A", "%%0D", "%25", "\r\n%\n", "%250A", "::add-mask::x"):
        assert unescape_data(mask.escape_data(text)) == text
        assert mask.command(text).count("\n") == 1  # one line, whatever the form holds


@given(st.text(alphabet=st.sampled_from([*"%0AD25\r\n:ab"]), max_size=30) | st.text(max_size=30))
def test_every_escaped_form_reads_back_exactly(text: str) -> None:
    escaped = mask.escape_data(text)
    assert "\r" not in escaped and "\n" not in escaped
    assert unescape_data(escaped) == text


def test_the_rule_for_short_values_lines_and_connection_strings() -> None:
    assert mask.forms("1") == [] and mask.forms("on") == [] and mask.forms("   \t ") == []
    assert mask.forms("ab", secret=True) == ["ab"]  # a secret taken whole: however short
    assert mask.all_forms({"SHOP_PORT": "543", "SHOP_DB_PASSWORD": "x y"}) == ["x y", "x%20y", "x+y"]
    assert mask.secret_name("SHOP_DB_PASSWORD") and mask.secret_name("API_TOKEN") and not mask.secret_name("PORT")
    # a connection string: the URL, its password as written and decoded, whatever their length
    found = mask.forms("postgres://shop:a%2Fb@db.example:5432/shop")
    assert {"postgres://shop:a%2Fb@db.example:5432/shop", "a%2Fb", "a/b", "a%252Fb"} <= set(found)
    assert "a" in mask.forms("mysql://u:a@h/d")  # the whole password, one character or not
    inside = mask.forms('{"url": "postgres://u:s3cr%40t@h/db", "n": 1}')
    assert {"postgres://u:s3cr%40t@h/db", "s3cr%40t", "s3cr@t"} <= set(inside)
    # several lines: each line of 4 characters or more, never a form spanning lines
    lines = mask.forms("-----BEGIN-----\nMIIBxyz\nab\r\n-----END-----\n")
    assert {"-----BEGIN-----", "MIIBxyz", "-----END-----"} <= set(lines) and "ab" not in lines
    assert not [f for f in lines if "\n" in f or "\r" in f]
    assert "-----BEGIN-----\\nMIIBxyz\\nab\\r\\n-----END-----\\n" in lines  # the JSON-escaped whole
    assert len(found) == len(set(found))
