"""Manifest errors stay one located line whatever the input: no library internals, no echo of
huge input, no unsafe YAML tags, bounded work for alias bombs and large manifests.

The fuzzer at the end writes random YAML *text* (tags, anchors and aliases, tabs, bad bytes,
unquoted templates) and runs ``hepinfra validate`` on it: never a traceback, never an
internal error, and every error names ``file:line``.
"""

from __future__ import annotations

import re
import resource
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hepinfra import manifest
from hepinfra.errors import ManifestError
from tests.cliutil import Result, invoke

HEAD = "version: 1\nenvironments: {prod: {}}\n"
LIBRARY_TEXT = re.compile(
    r"valid dictionary|instance of|input_value|input_type|pydantic|errors\.pydantic|Input should|"
    r"unable to interpret|Extra inputs|Field required|internal error|Traceback|constructor|yaml\.",
)


def validate(tmp_path: Path, text: str | bytes) -> Result:
    target = tmp_path / "hepinfra.yaml"
    if isinstance(text, bytes):
        target.write_bytes(text)
    else:
        target.write_text(textwrap.dedent(text))
    return invoke(["validate", "-f", str(target)], cwd=tmp_path)


def located_error(result: Result, tmp_path: Path, line: int | None = None) -> str:
    """The message of a one-line located error (asserts exit 1 and the shape)."""
    assert result.code == 1, result.out + result.err
    assert result.out == "" and result.err.count("\n") == 1, result.err
    match = re.match(rf"^Error: {re.escape(str(tmp_path / 'hepinfra.yaml'))}:(\d+):(\d+): (.*)$", result.err)
    assert match, result.err
    assert not LIBRARY_TEXT.search(result.err), result.err
    if line is not None:
        assert int(match.group(1)) == line, result.err
    return match.group(3)


# --- plain messages, never pydantic's ------------------------------------------------------------


@pytest.mark.parametrize(
    "body,line,expected",
    [
        ("environments: {prod: []}\n", 2, "environments.prod: must be a mapping"),
        ("environments: {prod: {vars: 3}}\n", 2, "environments.prod.vars: must be a mapping"),
        ("environments: {prod: {}}\nhepgg: [x]\n", 3, "hepgg: must be a mapping"),
        ("environments: {prod: {}}\ndatabases: {shop: {environments: prod}}\n", 3, "must be a list"),
        ("environments: {prod: {}}\ndatabases: {shop: {name: [x]}}\n", 3, "databases.shop.name: must be text"),
        ("environments: {prod: {}}\ndatabases: {shop: {outputs: [{dotenv: [], keys: {A: x}}]}}\n", 3, "must be text"),
        (
            "environments: {prod: {}}\ndatabases: {shop: {outputs: [{dotenv: .e, keys: {A: x}, allow_tracked: 3}]}}\n",
            3,
            "must be true or false",
        ),
        ("environments: {prod: {}}\ndatabases: {shop: {outputs: [{dotenv: .e, keys: [A]}]}}\n", 3, "must be a mapping"),
        ("environments: {prod: {}}\ndatabases: {shop: {outputs: {dotenv: .e}}}\n", 3, "must be a list"),
        ("environments: {prod: {db_key_env: 5}}\n", 2, "must be text"),
        ("environments: {prod: {}}\ndatabases: {shop: {engine: 5}}\n", 3, "must be one of"),
    ],
)
def test_type_errors_are_plain_words(tmp_path: Path, body: str, line: int, expected: str) -> None:
    message = located_error(validate(tmp_path, "version: 1\n" + body), tmp_path, line)
    assert expected in message


def test_version_true_is_rejected(tmp_path: Path) -> None:
    message = located_error(validate(tmp_path, "version: true\nenvironments: {prod: {}}\n"), tmp_path, 1)
    assert message == "version: this hepinfra reads manifest version 1; got true"


# --- YAML surface: tabs, unquoted templates, tags, bytes -----------------------------------------


@pytest.mark.parametrize(
    "text,line",
    [
        ("version: 1\nenvironments:\n\tprod: {}\n", 3),
        ("version: 1\nenvironments:\n  prod:\n  \tvars: {}\n", 4),
        ("version: 1\nenvironments:\n  prod:\n\t  vars: {}\n", 4),
    ],
)
def test_tab_indentation_says_tab(tmp_path: Path, text: str, line: int) -> None:
    message = located_error(validate(tmp_path, text), tmp_path, line)
    assert "tab" in message


@pytest.mark.parametrize(
    "value",
    ["{{ env }}", "{{ env }}-shop", "{{env}}", "[{{ env }}]"],
)
def test_unquoted_template_hints_to_quote_it(tmp_path: Path, value: str) -> None:
    text = HEAD + f"databases:\n  shop:\n    name: {value}\n"
    message = located_error(validate(tmp_path, text), tmp_path, 5)
    assert "quote" in message and '"{{' in message


def test_unquoted_template_in_keys_hints_to_quote_it(tmp_path: Path) -> None:
    text = (
        HEAD
        + "databases:\n  shop:\n    outputs:\n      - dotenv: .env\n        keys:\n          A: {{ db.password }}\n"
    )
    assert "quote" in located_error(validate(tmp_path, text), tmp_path, 8)


@pytest.mark.parametrize(
    "value",
    ["!!int abc", "!!float abc", "!!bool maybe", "!!null x", "!!timestamp nope", "!!int 99999999999999999999999x"],
)
def test_a_bad_standard_tag_is_a_plain_located_error(tmp_path: Path, value: str) -> None:
    message = located_error(validate(tmp_path, f"version: {value}\nenvironments: {{prod: {{}}}}\n"), tmp_path, 1)
    assert "abc" in message or "maybe" in message or "x" in message or "nope" in message


@pytest.mark.parametrize(
    "value",
    [
        "!!python/object:os.system {}",
        "!!python/object/apply:os.system [echo hi]",
        "!!python/name:os.system",
        "!foo {}",
        "!foo bar",
        "!<tag:example.com,2000:x> bar",
        "!!binary aGVsbG8=",
        "!!set {a, b}",
        "!!omap [a: 1]",
        "!!pairs [a: 1]",
    ],
)
def test_unknown_and_python_tags_are_refused(tmp_path: Path, value: str) -> None:
    text = f"version: 1\nenvironments:\n  prod: {value}\n"
    message = located_error(validate(tmp_path, text), tmp_path, 3)
    assert "tag" in message and "not allowed" in message


def test_a_tag_is_refused_anywhere_even_where_the_value_is_unused(tmp_path: Path) -> None:
    text = HEAD + "databases:\n  shop:\n    outputs: []\n    environments: [prod, !!python/name:os.system x]\n"
    located_error(validate(tmp_path, text), tmp_path, 6)


@pytest.mark.parametrize("value", ["!!str 5", "!!int '7'", "!!map {}", "!!seq []", "!!float 1", "!!null ''", "! x"])
def test_standard_tags_still_work(tmp_path: Path, value: str) -> None:
    result = validate(tmp_path, "version: 1\nenvironments:\n  prod: {vars: {x: " + value + "}}\n")
    assert result.code == 0, result.err


def test_not_utf8_gives_line_and_column(tmp_path: Path) -> None:
    message = located_error(validate(tmp_path, b"version: 1\nenvironments: {pr\xff\xfeod: {}}\n"), tmp_path, 2)
    assert "UTF-8" in message
    assert re.search(r":2:18: ", validate(tmp_path, b"version: 1\nenvironments: {pr\xff\xfeod: {}}\n").err)


def test_not_utf8_column_counts_characters_not_bytes(tmp_path: Path) -> None:
    result = validate(tmp_path, "version: 1\nenvironments: {é".encode() + b"\xff: {}}\n")
    assert re.search(r":2:17: ", result.err), result.err


@pytest.mark.parametrize("char", ["\x00", "\x07", "\ufffe"])
def test_control_characters_give_line_and_column(tmp_path: Path, char: str) -> None:
    text = f"version: 1\nenvironments:\n  prod: {{vars: {{a: x{char}}}}}\n"
    message = located_error(validate(tmp_path, text), tmp_path, 3)
    assert "not valid YAML" in message


# --- names and modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["null", "~", "true", "yes", "off", "2024-01-01", "1.5", "123", "0x1f"])
@pytest.mark.parametrize("where", ["environments", "databases"])
def test_names_yaml_reads_as_non_text_are_rejected(tmp_path: Path, name: str, where: str) -> None:
    if where == "environments":
        text = f"version: 1\nenvironments:\n  {name}: {{}}\n"
        expected = "environment name must be text; quote it"
    else:
        text = f"version: 1\nenvironments: {{prod: {{}}}}\ndatabases:\n  {name}: {{}}\n"
        expected = "database name must be text; quote it"
    message = located_error(validate(tmp_path, text), tmp_path, 3 if where == "environments" else 4)
    assert expected in message, message


@pytest.mark.parametrize("name", ['"null"', "'true'", '"2024-01-01"', '"123"'])
def test_quoted_names_are_text(tmp_path: Path, name: str) -> None:
    result = validate(tmp_path, f"version: 1\nenvironments:\n  {name}: {{}}\ndatabases:\n  {name}: {{}}\n")
    assert result.code == 0, result.err


def _with_mode(mode: str) -> str:
    return (
        HEAD
        + f"databases:\n  shop:\n    outputs:\n      - dotenv: .env\n        keys: {{A: x}}\n        mode: {mode}\n"
    )


@pytest.mark.parametrize(
    "mode,value",
    [
        ("0600", 0o600),
        ('"0600"', 0o600),
        ("'600'", 0o600),
        ("0400", 0o400),
        ('"0400"', 0o400),
        ("0700", 0o700),
        ("600", 0o600),
        ("0o600", 0o600),
        ('"0o400"', 0o400),
    ],
)
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: str, value: int) -> None:
    target = tmp_path / "hepinfra.yaml"
    target.write_text(_with_mode(mode))
    loaded = manifest.load(target)
    assert loaded.declared["prod"][0].outputs[0].mode == value


@pytest.mark.parametrize(
    "mode,why",
    [
        ("0644", "group or other"),
        ('"0644"', "group or other"),
        ("644", "group or other"),
        ("'644'", "group or other"),
        ("0660", "group or other"),
        ("0060", "group or other"),
        ("0604", "group or other"),
        ("0o644", "group or other"),
        ("0200", "owner"),
        ('"0200"', "owner"),
        ("0000", "owner"),
        ("0300", "owner"),
        ("999", "file mode such as 0600"),
        ("0x180", "file mode such as 0600"),
        ("384", "file mode such as 0600"),
        ("true", "file mode such as 0600"),
        ("06000", "file mode such as 0600"),
    ],
)
def test_modes_that_expose_the_secret_or_lock_out_the_owner_are_rejected(tmp_path: Path, mode: str, why: str) -> None:
    message = located_error(validate(tmp_path, _with_mode(mode)), tmp_path, 8)
    assert why in message, message


# --- bounded output and work ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "version: 1\nenvironments:\n  {big}: {{}}\n",
        "version: 1\nenvironments: {{prod: {{}}}}\ndatabases:\n  shop: {{name: {big}}}\n",
        "version: 1\nenvironments: {{prod: {{}}}}\n{big}: 1\n",
        "version: 1\nenvironments: {{prod: {{}}}}\ndatabases:\n  shop: {{rotate_every: {big}}}\n",
        "version: 1\nenvironments: {{prod: {{}}}}\ndatabases:\n  shop: {{environments: [{big}]}}\n",
        "version: 1\nenvironments: {{prod: {{}}}}\ndatabases:\n  shop: {{name: '{{{{ {big} }}}}'}}\n",
        "version: 1\nenvironments: {{prod: {{}}}}\ndatabases:\n  shop: {{name: '{{{{ env | {big} }}}}'}}\n",
        "version: 1\nenvironments:\n  ? {big}\n  : {{}}\n",
        "version: 1\nenvironments: {{prod: {{}}}}\n? {big}\n: 1\n? {big}\n: 2\n",
        "version: 1\nenvironments: {{prod: {{}}}}\ndatabases:\n  shop: {{outputs: [{{dotenv: .env, keys: {{A: x}}, mode: {big}}}]}}\n",
    ],
)
def test_a_huge_invalid_input_is_not_echoed(tmp_path: Path, template: str) -> None:
    big = "x" * 10_000_000
    result = validate(tmp_path, template.format(big=big))
    assert result.code == 1 and result.err.count("\n") == 1, result.err[:300]
    assert len(result.err) < 1000, result.err[:300]
    assert "Traceback" not in result.err and "internal error" not in result.err


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("kind", ["seq", "map"])
def test_billion_laughs_is_refused_quickly(tmp_path: Path, kind: str) -> None:
    lines = ["version: 1", "environments:", "  prod:", "    vars:"]
    lines.append("      a0: &a0 [x, x, x, x, x, x, x, x, x, x]" if kind == "seq" else "      a0: &a0 {a: x, b: x}")
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        value = f"[{refs}]" if kind == "seq" else "{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(10)) + "}"
        lines.append(f"      a{i}: &a{i} {value}")
    start = _cpu()
    message = located_error(validate(tmp_path, "\n".join(lines) + "\n"), tmp_path)
    assert _cpu() - start < 2
    assert "aliases" in message


def test_aliases_within_the_cap_still_work(tmp_path: Path) -> None:
    text = """\
    version: 1
    environments:
      prod: &env {vars: {region: eu}}
      staging: *env
    databases:
      shop: &db
        engine: postgres
        environments: &both [prod, staging]
      blog:
        <<: *db
        engine: mongo
    """
    target = tmp_path / "hepinfra.yaml"
    target.write_text(textwrap.dedent(text))
    loaded = manifest.load(target)
    assert loaded.model.databases["blog"].engine == "mongo"
    assert loaded.model.databases["blog"].environments == ["prod", "staging"]
    assert loaded.env_spec("staging").vars == {"region": "eu"}


def test_resolution_is_linear_in_the_manifest(tmp_path: Path) -> None:
    envs = [f"env{i:04d}" for i in range(2000)]
    listed = "[" + ", ".join(envs) + "]"
    text = "version: 1\nenvironments:\n" + "".join(f"  {e}: {{}}\n" for e in envs) + "databases:\n"
    text += "".join(f"  db{j}:\n    environments: {listed}\n" for j in range(5))
    target = tmp_path / "hepinfra.yaml"
    target.write_text(text)
    start = _cpu()
    loaded = manifest.load(target)
    elapsed = _cpu() - start
    assert sum(len(v) for v in loaded.declared.values()) == 10_000
    assert [d.key for d in loaded.declared["env1999"]] == [f"db{j}" for j in range(5)]
    assert elapsed < 2, f"{elapsed:.2f}s of CPU"


def test_unknown_environment_reference_lists_a_bounded_number_of_names(tmp_path: Path) -> None:
    envs = [f"env{i:04d}" for i in range(2000)]
    text = "version: 1\nenvironments:\n" + "".join(f"  {e}: {{}}\n" for e in envs)
    text += "databases:\n  shop:\n    environments: [nope]\n"
    message = located_error(validate(tmp_path, text), tmp_path, 2005)
    assert message.startswith("databases.shop.environments[0]: unknown environment 'nope'")
    assert len(message) < 400


# --- the fuzzer ----------------------------------------------------------------------------------

KEYS = [
    "version",
    "environments",
    "databases",
    "hepgg",
    "url",
    "engine",
    "rotate_every",
    "name",
    "outputs",
    "dotenv",
    "keys",
    "template",
    "path",
    "mode",
    "vars",
    "db_key_env",
    "allow_tracked",
    "prod",
    "shop",
    "null",
    "true",
    "2024-01-01",
    "<<",
    "A",
    '"quoted key"',
    "? x",
]
SCALARS = [
    "1",
    "0",
    "true",
    "null",
    "~",
    "''",
    "30d",
    "0d",
    "0600",
    "644",
    "'0644'",
    "0o600",
    "1.5",
    "2024-01-01",
    "mariadb",
    "postgres",
    "local",
    "http://x",
    ".env",
    "../x",
    "/abs",
    "out.txt",
    "{{ env }}",
    "{{ db.password }}",
    "'{{ env }}'",
    '"{{ db.nope }}"',
    '"{%"',
    "-",
    "a: b",
    "'it''s'",
    '"\\x41"',
    "|\n  block",
    ">\n  folded",
]
TAGS = [
    "!!str ",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!null ",
    "!!map ",
    "!!seq ",
    "!!timestamp ",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!!python/object:os.system ",
    "!!python/name:os.system ",
    "!foo ",
    "! ",
]
NOISE = ["\t", "\xff", "\x00", "\x85", "\u2028", "\ufeff", "{{", "}}", "&", "*", "!", "%YAML 1.1\n", "---\n", "...\n"]


@st.composite
def yaml_node(draw: st.DrawFn, depth: int = 0, indent: int = 0) -> str:
    """One YAML value as block or flow text, with optional tag, anchor or alias."""
    prefix = ""
    if draw(st.integers(0, 9)) == 0:
        prefix += draw(st.sampled_from(TAGS))
    if draw(st.integers(0, 7)) == 0:
        prefix += f"&a{draw(st.integers(0, 3))} "
    kind = draw(st.integers(0, 9)) if depth < 4 else 0
    if kind <= 4 or depth >= 4:
        if draw(st.integers(0, 19)) == 0:
            return f"*a{draw(st.integers(0, 3))}"
        return prefix + draw(st.sampled_from(SCALARS))
    if kind == 5:  # flow
        items = draw(st.lists(st.sampled_from([*SCALARS, "*a0"]), max_size=4))
        if draw(st.booleans()):
            return prefix + "[" + ", ".join(items) + "]"
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=len(items), max_size=len(items)))
        return prefix + "{" + ", ".join(f"{k}: {v}" for k, v in zip(keys, items, strict=True)) + "}"
    pad = " " * (indent + 2)
    lines = []
    if kind <= 7:  # block mapping
        for key in draw(st.lists(st.sampled_from(KEYS), max_size=5)):
            lines.append(f"{pad}{key}: {draw(yaml_node(depth + 1, indent + 2))}")
    else:  # block sequence
        for _ in range(draw(st.integers(0, 4))):
            lines.append(f"{pad}- {draw(yaml_node(depth + 1, indent + 2))}")
    if not lines:
        return prefix + "{}"
    return prefix.rstrip() + "\n" + "\n".join(lines)


@st.composite
def yaml_document(draw: st.DrawFn) -> bytes:
    lines = []
    if draw(st.integers(0, 4)):
        version = draw(st.sampled_from(["1", "1", "true", "2", "!!int x", "'1'"]))
        lines.append(f"version: {version}")
    if draw(st.integers(0, 4)):
        lines.append(f"environments: {draw(yaml_node(1, 0))}")
    if draw(st.booleans()):
        lines.append(f"databases:\n  shop:\n    outputs:\n      - {draw(yaml_node(3, 6))}")
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=3)):
        lines.append(f"{key}: {draw(yaml_node(1, 0))}")
    text = "\n".join(lines) + "\n"
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # noise at a random place
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(NOISE)) + text[at:]
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80"])) + data[at:]
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=yaml_document())
def test_fuzzed_yaml_is_valid_or_one_located_line(tmp_path: Path, document: bytes) -> None:
    target = tmp_path / "hepinfra.yaml"
    target.write_bytes(document)
    result = invoke(["validate", "-f", str(target)], cwd=tmp_path)
    assert result.code in (0, 1), result.err
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    if result.code == 1:
        assert result.out == "" and result.err.count("\n") == 1, result.err
        assert re.match(rf"^Error: {re.escape(str(target))}:\d+(:\d+)?: ", result.err), result.err
        assert not LIBRARY_TEXT.search(result.err), result.err


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=yaml_document())
def test_fuzzed_yaml_through_the_loader(tmp_path: Path, document: bytes) -> None:
    target = tmp_path / "fuzz.yaml"
    target.write_bytes(document)
    try:
        manifest.load(target)
    except ManifestError as exc:
        assert exc.line is not None, str(exc)


@pytest.mark.parametrize(
    "text,line,expected",
    [
        ("version: 1\nenvironments:\n  prod: &e {}\n  stage: &e {}\n", 4, "anchor is already defined at line 3"),
        ("version: 1\nenvironments:\n  prod: !!seq x\n", 3, "a plain value cannot be tagged !!seq"),
        ("version: 1\nenvironments:\n  prod: !!str {}\n", 3, "a mapping cannot be tagged !!str"),
        ("version: 1\nenvironments:\n  prod: {<<: 5}\n", 3, "'<<' (merge) takes a mapping or a list of mappings"),
    ],
)
def test_other_yaml_shapes_are_explained(tmp_path: Path, text: str, line: int, expected: str) -> None:
    assert expected in located_error(validate(tmp_path, text), tmp_path, line)
