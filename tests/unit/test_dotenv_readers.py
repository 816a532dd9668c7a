"""The three dotenv readers, for real, and ``dotenv_quote`` against each of them.

python-dotenv is the real library; bash is the real ``bash -c 'set -a; source FILE'``; docker
compose is ``compose_parse`` below, a line-by-line port of compose-go's ``dotenv/parser.go`` and
``template/template.go`` (compose-go v2, what docker compose 2.24 and later read ``env_file``
with), checked against a table of cases copied from compose-go's own tests
(``dotenv/godotenv_test.go``, ``dotenv/godotenv_var_expansion_test.go``, ``dotenv/fixtures``).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import subprocess
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from dotenv import dotenv_values
from dotenv.parser import parse_stream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hepinfra.templates import DOTENV_READERS, QuotingError, dotenv_quote

# --- docker compose: a port of compose-go's dotenv parser --------------------------------------------


class ComposeError(ValueError):
    """compose-go refuses the file (docker compose would stop with this error)."""


Lookup = Callable[[str], "str | None"]

# Go's unicode.IsSpace (Latin-1 part and the White_Space property) and the parser's isSpace.
_GO_UNICODE_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    chr(c) for c in range(0x2000, 0x200B)
)
_GO_IS_SPACE = "\t\v\f\r \x85\xa0"  # parser.go isSpace: a space but not a line break
_GO_EXPORT = re.compile(r"export[\t\n\f\r ]+")  # Go's \s is ASCII [\t\n\f\r ]
_ESCAPE_SEQ = re.compile(r'(\\(?:[abcfnrtv$"\\]|0[0-9]{0,3}))')
_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}
# template.go DefaultPattern: "\$(?i:(?P<escaped>\$)|(?P<named>[_a-z][_a-z0-9]*)|{(?:(?P<braced>
# [_a-z][_a-z0-9]*(?::?[-+?](.*))?)}|(?P<invalid>)))"; Go's (?i) folds k to U+212A and s to U+017F.
_LETTER = "_a-zA-Z\u017f\u212a"
_PATTERN = re.compile(
    rf"\$(?:(?P<escaped>\$)|(?P<named>[{_LETTER}][{_LETTER}0-9]*)|\{{(?:(?P<braced>[{_LETTER}][{_LETTER}0-9]*"
    rf"(?::?[-+?](.*))?)\}}|(?P<invalid>)))"
)


def compose_parse(src: str, lookup: Lookup | None = None) -> dict[str, str]:
    """compose-go ``dotenv.ParseWithLookup``: every key of an env file, or ComposeError."""
    out: dict[str, str] = {}
    look: Lookup = lookup or (lambda _key: None)
    cutset = src.removeprefix("\ufeff")
    while True:
        cutset = _statement_start(cutset)
        if cutset == "":
            return out
        key, left, inherited = _locate_key_name(cutset)
        if " " in key:
            raise ComposeError("key cannot contain a space")
        if inherited:
            found = look(key)
            if found is not None:
                out[key] = found
            cutset = left
            continue
        out[key], cutset = _extract_var_value(left, out, look)


def _statement_start(src: str) -> str:
    while True:
        pos = next((i for i, c in enumerate(src) if c not in _GO_UNICODE_SPACE), -1)
        if pos == -1:
            return ""
        src = src[pos:]
        if src[0] != "#":
            return src
        pos = src.find("\n")
        if pos == -1:
            return ""
        src = src[pos:]


def _locate_key_name(src: str) -> tuple[str, str, bool]:
    if _GO_EXPORT.match(src):
        src = src.removeprefix("export").lstrip(_GO_IS_SPACE)
    key, offset, inherited = "", 0, False
    for i, char in enumerate(src):
        if char in _GO_IS_SPACE:
            continue
        if char in "=:\n":
            key, offset, inherited = src[:i], i + 1, char == "\n"
            break
        if char in "_.-[]" or unicodedata.category(char)[0] in "LN":
            continue
        raise ComposeError(f"unexpected character {char!r} in variable name")
    if src == "":
        raise ComposeError("zero length string")
    return key.rstrip(_GO_UNICODE_SPACE), src[offset:].lstrip(_GO_IS_SPACE), inherited


def _extract_var_value(src: str, env: dict[str, str], lookup: Lookup) -> tuple[str, str]:
    if not src or src[0] not in "'\"":
        value, _, rest = src.partition("\n")
        value = value.split(" #", 1)[0].rstrip(_GO_UNICODE_SPACE)
        return _expand_variables(value, env, lookup), rest
    quote, escaped, chars = src[0], False, []
    for i in range(1, len(src)):
        char = src[i]
        if char != quote:
            if not escaped and char == "\\":
                escaped = True
                continue
            if escaped:
                escaped = False
                chars.append("\\")
            chars.append(char)
            continue
        if escaped:  # an escaped quote
            escaped = False
            chars.append(char)
            continue
        value = "".join(chars)
        if quote == '"':
            value = _expand_variables(_expand_escapes(value), env, lookup)
        return value, src[i + 1 :]
    raise ComposeError("unterminated quoted value")


def _expand_escapes(value: str) -> str:
    def one(match: re.Match[str]) -> str:
        seq = match.group()
        if seq == "\\$":
            return "$$"  # the interpolation's own escape: a literal $
        if seq.startswith("\\0"):  # XSI octal \0NNN; Go's strconv.UnquoteChar wants exactly 3 digits <= 0377
            digits = seq[2:]
            if len(digits) == 3 and all(d in "01234567" for d in digits) and int(digits, 8) <= 0o377:
                return chr(int(digits, 8))
            return seq
        return _GO_ESCAPES[seq[1]]

    return _ESCAPE_SEQ.sub(one, value)


def _expand_variables(value: str, env: dict[str, str], lookup: Lookup) -> str:
    def mapping(name: str) -> str | None:
        found = lookup(name)
        return found if found is not None else env.get(name)

    return _substitute(value, mapping)


def _substitute(template: str, mapping: Lookup) -> str:
    """template.Substitute: the first error stops the parse (docker compose reports it)."""
    return _PATTERN.sub(lambda m: _replacement(m.group(), mapping), template)


def _replacement(substring: str, mapping: Lookup) -> str:
    subs = _substitution_function(substring)
    closing = _first_brace_closing_index(substring)
    rest = ""
    if closing > -1:
        substring, rest = substring[: closing + 1], substring[closing + 1 :]
    match = _PATTERN.fullmatch(substring) or _PATTERN.match(substring)
    assert match is not None
    if match.group("escaped"):
        return "$"
    braced = False
    substitution = match.group("named") or ""
    if not substitution:
        substitution, braced = match.group("braced") or "", True
    if not substitution:
        raise ComposeError("Invalid template")
    if braced:
        applied = subs(substitution, mapping)
        if applied is not None:
            return applied + _substitute(rest, mapping)
    return mapping(substitution) or ""


def _substitution_function(template: str) -> Callable[[str, Lookup], str | None]:
    order = [":?", "?", ":-", "-", ":+", "+"]
    present = sorted((template.index(sep), i) for i, sep in enumerate(order) if sep in template)
    sep = order[present[0][1]] if present else ":?"
    return lambda substitution, mapping: _apply(sep, substitution, mapping)


def _apply(sep: str, substitution: str, mapping: Lookup) -> str | None:
    if sep not in substitution:
        return None
    name, default = substitution.split(sep, 1)
    value = mapping(name)
    if sep in (":-", "-"):
        if value is None or (sep == ":-" and value == ""):
            return _substitute(default, mapping)
        return value
    if sep in (":+", "+"):
        if value is not None and (sep == "+" or value != ""):
            return _substitute(default, mapping)
        return value or ""
    if value is None or (sep == ":?" and value == ""):
        raise ComposeError(f"required variable {name} is missing a value")
    return value


def _first_brace_closing_index(s: str) -> int:
    depth, i = 0, 0
    while i < len(s):
        if s[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        if s[i] == "{":
            depth += 1
            i += 1
        i += 1
    return -1


# --- compose-go's own test cases ----------------------------------------------------------------------

# godotenv_test.go TestParsing (parseAndCompare): (line, key, expected value)
COMPOSE_GO_PARSING = [
    ("FOO=bar", "FOO", "bar"),
    ("FOO =bar", "FOO", "bar"),
    ("FOO= bar", "FOO", "bar"),
    ('FOO="bar"', "FOO", "bar"),
    ("FOO='bar'", "FOO", "bar"),
    ('FOO="escaped\\"bar"', "FOO", 'escaped"bar'),
    ('FOO="\\"quoted\\""', "FOO", '"quoted"'),
    ("FOO=\"'d'\"", "FOO", "'d'"),
    ("OPTION_A: 1", "OPTION_A", "1"),
    ("OPTION_A: Foo=bar", "OPTION_A", "Foo=bar"),
    ("OPTION_A=1:B", "OPTION_A", "1:B"),
    ("export OPTION_A=2", "OPTION_A", "2"),
    ("export OPTION_B='\\n'", "OPTION_B", "\\n"),
    ("export exportFoo=2", "exportFoo", "2"),
    ("exportFOO=2", "exportFOO", "2"),
    ("export_FOO =2", "export_FOO", "2"),
    ("export.FOO= 2", "export.FOO", "2"),
    ("export\tOPTION_A=2", "OPTION_A", "2"),
    ("  export OPTION_A=2", "OPTION_A", "2"),
    ("\texport OPTION_A=2", "OPTION_A", "2"),
    ('export OPTION_A="export A"', "OPTION_A", "export A"),
    ('FOO="bar\\nbaz"', "FOO", "bar\nbaz"),
    ("FOO=a\\tb", "FOO", "a\\tb"),
    ('FOO="a\\tb"', "FOO", "a\tb"),
    ('KEY="Z\\aZ\\bZ\\fZ\\nZ\\rZ\\tZ\\vZ\\\\Z\\0123Z"', "KEY", "Z\aZ\bZ\fZ\nZ\rZ\tZ\vZ\\ZSZ"),
    ("FOO.BAR=foobar", "FOO.BAR", "foobar"),
    ("FOO=foobar=", "FOO", "foobar="),
    ("FOO=bar ", "FOO", "bar"),
    ("FOO=bar # this is foo", "FOO", "bar"),
    ("FOO=bar #this is foo", "FOO", "bar"),
    ("FOO=bar #", "FOO", "bar"),
    ("FOO=123#not-an-inline-comment", "FOO", "123#not-an-inline-comment"),
    ('FOO="bar#baz"', "FOO", "bar#baz"),
    ('FOO="bar#baz"#', "FOO", "bar#baz"),
    ('FOO="bar#baz" # comment', "FOO", "bar#baz"),
    ("FOO='bar#baz' # comment", "FOO", "bar#baz"),
    ('FOO="bar#baz#bang" # comment', "FOO", "bar#baz#bang"),
    ('FOO="ba#r"', "FOO", "ba#r"),
    ("FOO='ba#r'", "FOO", "ba#r"),
    ('FOO="bar\\n\\ b\\az"', "FOO", "bar\n\\ b\az"),
    ('FOO="bar\\\\\\n\\ b\\az"', "FOO", "bar\\\n\\ b\az"),
    ('FOO="bar\\\\r\\ b\\az"', "FOO", "bar\\r\\ b\az"),
    ('FOO="bar\\nbaz\\\\"', "FOO", "bar\nbaz\\"),
    ('="value"', "", "value"),
    (" KEY =value", "KEY", "value"),
    ("   KEY=value", "KEY", "value"),
    ("\tKEY=value", "KEY", "value"),
    ('KEY="\\0123"', "KEY", "S"),
    ('KEY="\\x07"', "KEY", "\\x07"),
    ('KEY="\\u12e4"', "KEY", "\\u12e4"),
    ('KEY="\\U00101234"', "KEY", "\\U00101234"),
    # TestParse
    ("ONE=1\nTWO='2'\nTHREE = \"3\"", "THREE", "3"),
    # TestVariableStringValueSeparator
    (
        'TEST_URLS="stratum+tcp://stratum.antpool.com:3333\nstratum+tcp://stratum.antpool.com:443"',
        "TEST_URLS",
        "stratum+tcp://stratum.antpool.com:3333\nstratum+tcp://stratum.antpool.com:443",
    ),
]

# godotenv_test.go TestExpanding: (file, expected)
COMPOSE_GO_EXPANDING = [
    ("FOO=test\nBAR=$FOO", {"FOO": "test", "BAR": "test"}),
    ("FOO=test\nBAR=${FOO}bar", {"FOO": "test", "BAR": "testbar"}),
    ("BAR=$FOO", {"BAR": ""}),
    ('FOO=test\nBAR="quote $FOO"', {"FOO": "test", "BAR": "quote test"}),
    ("BAR='quote $FOO'", {"BAR": "quote $FOO"}),
    ('FOO="foo\\$BAR"', {"FOO": "foo$BAR"}),
    ('FOO="foo\\${BAR}"', {"FOO": "foo${BAR}"}),
    ('FOO=test\nBAR="foo\\${FOO} ${FOO}"', {"FOO": "test", "BAR": "foo${FOO} test"}),
]

# fixtures/*.env and the Test* that read them (TestLoadQuotedEnv, TestReadPlainEnv, TestLoadUnquotedEnv,
# TestSubstitutions, TestLoadExportedEnv, TestLoadEqualsEnv, TestDash), without the OS environment
COMPOSE_GO_FIXTURES = [
    (
        "OPTION_A='1'\nOPTION_B='2'\nOPTION_C=''\nOPTION_D='\\n'\nOPTION_E=\"1\"\nOPTION_F=\"2\"\nOPTION_G=\"\"\n"
        'OPTION_H="\\n"\nOPTION_I = "echo \'asd\'" # Inline comment\nOPTION_J = \'first line\nsecond line\n'
        "third line\nand so on'\nOPTION_K='Let\\'s go!'\nOPTION_Z = \"last value\"\n",
        {
            "OPTION_A": "1",
            "OPTION_B": "2",
            "OPTION_C": "",
            "OPTION_D": "\\n",
            "OPTION_E": "1",
            "OPTION_F": "2",
            "OPTION_G": "",
            "OPTION_H": "\n",
            "OPTION_I": "echo 'asd'",
            "OPTION_J": "first line\nsecond line\nthird line\nand so on",
            "OPTION_K": "Let's go!",
            "OPTION_Z": "last value",
        },
    ),
    (
        "OPTION_A=1\nOPTION_B=2\nOPTION_C= 3\nOPTION_D =4\nOPTION_E = 5\n456 = ABC\nOPTION_F = \nOPTION_G=\n"
        "OPTION_H = my string # Inline comment\n",
        {
            "OPTION_A": "1",
            "OPTION_B": "2",
            "OPTION_C": "3",
            "OPTION_D": "4",
            "OPTION_E": "5",
            "456": "ABC",
            "OPTION_F": "",
            "OPTION_G": "",
            "OPTION_H": "my string",
        },
    ),
    (
        'OPTION_A = "some quoted phrase"\nOPTION_B=first one with an unquoted phrase\n'
        "OPTION_C = then another one with an unquoted phrase\n"
        "OPTION_D = then another one with an unquoted phrase special \u00e8 char\n"
        'OPTION_E = "then another one quoted phrase"\n',
        {
            "OPTION_A": "some quoted phrase",
            "OPTION_B": "first one with an unquoted phrase",
            "OPTION_C": "then another one with an unquoted phrase",
            "OPTION_D": "then another one with an unquoted phrase special \u00e8 char",
            "OPTION_E": "then another one quoted phrase",
        },
    ),
    (
        "OPTION_A=1\nOPTION_B=${OPTION_A}\nOPTION_C=$OPTION_B\nOPTION_D=${OPTION_A}_${OPTION_B}\n"
        "OPTION_E=${OPTION_NOT_DEFINED}\n",
        {"OPTION_A": "1", "OPTION_B": "1", "OPTION_C": "1", "OPTION_D": "1_1", "OPTION_E": ""},
    ),
    ("export OPTION_A=2\nexport OPTION_B='\\n'\n", {"OPTION_A": "2", "OPTION_B": "\\n"}),
    (
        "export OPTION_A='postgres://localhost:5432/database?sslmode=disable'\n\n",
        {"OPTION_A": "postgres://localhost:5432/database?sslmode=disable"},
    ),
    (
        "VAR.WITH.DOTS=dots\nVAR_WITH_UNDERSCORES=underscores\nVAR-WITH-DASHES=dashes\n",
        {"VAR.WITH.DOTS": "dots", "VAR_WITH_UNDERSCORES": "underscores", "VAR-WITH-DASHES": "dashes"},
    ),
    ("\ufeffOPTION_A=1\nOPTION_B=2\n", {"OPTION_A": "1", "OPTION_B": "2"}),  # TestUTF8BOM
    # parser_test.go TestParseBytes
    (
        "\na=b\na[1]=c\na.propertyKey=d\n\u00e1rv\u00edzt\u0171r\u0151-T\u00dcK\u00d6RF\u00daR\u00d3G\u00c9P="
        "\u00c1RV\u00cdZT\u0170R\u0150-t\u00fck\u00f6rf\u00far\u00f3g\u00e9p\n",
        {
            "a": "b",
            "a[1]": "c",
            "a.propertyKey": "d",
            "\u00e1rv\u00edzt\u0171r\u0151-T\u00dcK\u00d6RF\u00daR\u00d3G\u00c9P": "\u00c1RV\u00cdZT\u0170R\u0150-t\u00fck"
            "\u00f6rf\u00far\u00f3g\u00e9p",
        },
    ),
    # TestLinesToIgnore
    ("\n", {}),
    ("\r\n", {}),
    ("\t\t ", {}),
    ("# Comment", {}),
    ("\t # comment", {}),
]

# godotenv_var_expansion_test.go: expandVariables(input, envMap, notFoundLookup)
COMPOSE_GO_ENV = {"EMPTY_VAR": "", "TEST_VAR": "Test Value"}
COMPOSE_GO_VAR_EXPANSION = [
    ("RESULT=${UNSET_VAR:-Default Value}", "RESULT=Default Value"),
    ("RESULT=${EMPTY_VAR:-Default Value}", "RESULT=Default Value"),
    ("RESULT=${TEST_VAR:-Default Value}", "RESULT=Test Value"),
    ("RESULT=${UNSET_VAR-Default Value}", "RESULT=Default Value"),
    ("RESULT=${EMPTY_VAR-Default Value}", "RESULT="),
    ("RESULT=${TEST_VAR-Default Value}", "RESULT=Test Value"),
    ("RESULT=${TEST_VAR:?Default Value}", "RESULT=Test Value"),
    ("RESULT=${EMPTY_VAR?Test error}", "RESULT="),
    ("RESULT=${TEST_VAR?Default Value}", "RESULT=Test Value"),
]
COMPOSE_GO_VAR_ERRORS = [
    "RESULT=${UNSET_VAR:?Test error}",
    "RESULT=${EMPTY_VAR:?Test error}",
    "RESULT=${UNSET_VAR?Test error}",
]

# TestUnterminatedQuotes, TestErrorParsing-style bad lines, TestParseVariable
COMPOSE_GO_ERRORS = [
    'KEY="',
    'KEY="value',
    'KEY="value\\"',
    "KEY=\"value'",
    "KEY='",
    "KEY='value",
    "KEY='value\\'",
    "KEY='value\"",
    "lol$wut",
    "%!(EXTRA string)=foo",
]


@pytest.mark.parametrize("line,key,expected", COMPOSE_GO_PARSING)
def test_compose_port_parses_like_compose_go(line: str, key: str, expected: str) -> None:
    assert compose_parse(line)[key] == expected


@pytest.mark.parametrize("src,expected", COMPOSE_GO_EXPANDING + COMPOSE_GO_FIXTURES)
def test_compose_port_reads_compose_go_fixtures(src: str, expected: dict[str, str]) -> None:
    assert compose_parse(src) == expected


@pytest.mark.parametrize("src,expected", COMPOSE_GO_VAR_EXPANSION)
def test_compose_port_expands_variables_like_compose_go(src: str, expected: str) -> None:
    assert _expand_variables(src, COMPOSE_GO_ENV, lambda _k: None) == expected


@pytest.mark.parametrize("src", COMPOSE_GO_VAR_ERRORS + COMPOSE_GO_ERRORS)
def test_compose_port_refuses_what_compose_go_refuses(src: str) -> None:
    with pytest.raises(ComposeError):
        compose_parse(src) if "RESULT" not in src else _expand_variables(src, COMPOSE_GO_ENV, lambda _k: None)


def test_compose_port_reads_the_os_environment_through_lookup() -> None:
    # TestExpandingEnvironmentWithLookup, TestSubstitutionsWithEnvFilePrecedence
    assert compose_parse("TEST=$ME", {"ME": "YES"}.get) == {"TEST": "YES"}
    fixture = "OPTION_A=${OPTION_A:-1}\nOPTION_B=${OPTION_A}\nOPTION_C=$OPTION_B\nOPTION_D=${OPTION_A}_${OPTION_B}\n"
    assert compose_parse(fixture, {"OPTION_A": "5"}.get) == {
        "OPTION_A": "5",
        "OPTION_B": "5",
        "OPTION_C": "5",
        "OPTION_D": "5_5",
    }


# --- reading a file back with each reader --------------------------------------------------------------


def read_back_with_python_dotenv(file: Path) -> dict[str, str | None]:
    return dict(dotenv_values(file))


def read_back_with_bash(file: Path, keys: Iterable[str]) -> dict[str, str]:
    keys = list(keys)
    script = 'set -a; source "$1"; set +a; ' + "; ".join(f'printf "%s\\0" "${{{k}}}"' for k in keys)
    proc = subprocess.run(
        ["bash", "-c", script, "bash", str(file)], capture_output=True, env={"PATH": os.environ["PATH"]}, timeout=10
    )
    assert proc.returncode == 0, proc.stderr
    return dict(zip(keys, proc.stdout.decode().split("\0")[:-1], strict=True))


def read_back_like_compose(file: Path) -> dict[str, str]:
    return compose_parse(file.read_bytes().decode(), os.environ.get)


def read_back(reader: str, file: Path, keys: Iterable[str]) -> dict[str, str | None]:
    keys = list(keys)
    if reader == "bash":
        return dict(read_back_with_bash(file, keys))
    found = read_back_with_python_dotenv(file) if reader == "python-dotenv" else read_back_like_compose(file)
    return {k: found.get(k) for k in keys}


# --- dotenv_quote against every reader -------------------------------------------------------------------

SUBSETS = [frozenset(c) for n in (1, 2, 3) for c in itertools.combinations(DOTENV_READERS, n)]
ALPHABET = [*"aZ9 $'\"#\\`@:/%&;{}()[]!*?~=,|<>^-_\t\n\r", "é", "\u00a0"]


def _check_all_readers(value: str, readers: frozenset[str], tmp: Path) -> None:
    quoted = dotenv_quote(value, readers)
    # the entry is one binding for python-dotenv's grammar, whatever follows it (hepinfra finds it again)
    text = f"V={quoted}\nW='x\"y'\n"
    bindings = [(b.key, b.error) for b in parse_stream(io.StringIO(text))]
    assert bindings == [("V", False), ("W", False)], quoted
    file = tmp / "v.env"
    file.write_bytes(text.encode())
    for reader in readers:
        assert read_back(reader, file, ["V"]) == {"V": value}, (reader, quoted)


@pytest.mark.parametrize("readers", SUBSETS, ids=lambda r: "+".join(sorted(r)))
@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "it's $HOME",
        'double " and `tick` and $HOME',
        "single ' and \\ and \"",
        "ends with a backslash \\",
        "ends with a quote '\"",
        "a\\nb is not a newline",
        "multi\nline",
        "",
        "brace {} and $ alone $",
        "dollar-bracket $[1+1] and $(id)",
    ],
)
def test_each_chosen_quoting_reads_back_exactly_in_every_listed_reader(
    value: str, readers: frozenset[str], tmp_path: Path
) -> None:
    try:
        _check_all_readers(value, readers, tmp_path)
    except QuotingError as exc:
        assert str(exc)  # refusing is allowed; writing something wrong is not
        assert value not in str(exc) or value in ("", "plain")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.text(alphabet=st.sampled_from(ALPHABET), max_size=16),
    readers=st.sampled_from(SUBSETS),
)
def test_quoting_is_exact_for_every_listed_reader_or_refused(
    value: str, readers: frozenset[str], tmp_path: Path
) -> None:
    """For any value and any non-empty set of readers: refused, or read back exactly by each listed reader."""
    with contextlib.suppress(QuotingError):
        _check_all_readers(value, readers, tmp_path)


def test_every_reader_alone_can_carry_a_hostile_password_alphabet() -> None:
    """Issue 9: '$', quote and double quote in one password make every rotation fail today; one reader is enough."""
    hostile = "a$b'c\"d`e\\f$HOME"
    for reader in DOTENV_READERS:
        dotenv_quote(hostile, (reader,))
    with pytest.raises(QuotingError):
        dotenv_quote(hostile)


@pytest.mark.parametrize(
    "value,readers,expected",
    [
        ("it's $HOME", ("python-dotenv", "compose"), "'it\\'s $HOME'"),
        ("it's $HOME", ("compose", "bash"), '"it\'s \\$HOME"'),
        ("it's $HOME", ("bash",), '"it\'s \\$HOME"'),
        ("it's $HOME", ("python-dotenv",), '"it\'s $HOME"'),
        ("ends\\", ("bash",), "$'ends\\\\'"),
        ("ends\\", ("python-dotenv", "compose"), "ends\\"),
        ("plain", DOTENV_READERS, "'plain'"),
        ("it's $ 5", DOTENV_READERS, '"it\'s $ 5"'),
    ],
)
def test_the_quoting_chosen_for_a_set_of_readers(value: str, readers: tuple[str, ...], expected: str) -> None:
    assert dotenv_quote(value, readers) == expected


@pytest.mark.parametrize(
    "value,readers,fragment",
    [
        ("it's $HOME", DOTENV_READERS, "python-dotenv and bash cannot share it"),
        ("it's $HOME", ("python-dotenv", "bash"), "python-dotenv and bash cannot share it"),
        ("brace ${VAR}", ("python-dotenv",), "python-dotenv interpolates"),
        ("cr\r", ("python-dotenv", "bash"), "python-dotenv and bash cannot share it"),
        ("a #\\", ("python-dotenv",), "ends with a backslash"),
        ("a #\\", ("compose",), "ends with a backslash"),
        ("nul\0", ("bash",), "NUL"),
    ],
)
def test_refusals_name_the_readers_and_never_the_value(value: str, readers: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(QuotingError) as info:
        dotenv_quote(value, readers)
    assert fragment in str(info.value)
    assert value not in str(info.value)


def test_unknown_reader_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown dotenv reader"):
        dotenv_quote("x", ("sh",))
