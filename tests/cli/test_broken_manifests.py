"""The broken-manifest corpus: each file's first line says where and what the error is.

Every one must give one line naming file:line:col, exit 1, no traceback, and make no API
call (the emulator's request log proves it), through both ``plan`` and ``validate``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hepinfra import manifest
from hepinfra.errors import ManifestError
from tests.cliutil import invoke
from tests.conftest import Server

CORPUS = sorted((Path(__file__).parent.parent / "manifests" / "broken").glob("*.yaml"))
EXPECT = re.compile(rb"^# expect: (?:(\d+):(\d+): )?(.*)$")


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("case", CORPUS, ids=lambda p: p.stem)
@pytest.mark.parametrize("command", ["plan", "validate"])
def test_broken_manifest_gives_one_located_line(case: Path, command: str, server: Server, tmp_path: Path) -> None:
    match = EXPECT.match(case.read_bytes().splitlines()[0])
    assert match, f"{case.name} lacks its '# expect:' header"
    line, col, message = match.group(1), match.group(2), match.group(3).decode()
    target = tmp_path / "hepinfra.yaml"
    shutil.copy(case, target)
    result = invoke([command, "-f", str(target)], server=server, cwd=tmp_path)
    assert result.code == 1, result.out
    assert result.out == ""
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    prefix = f"Error: {target}:" + (f"{line.decode()}:{col.decode()}: " if line and col else "")
    assert result.err.startswith(prefix), result.err
    assert message in result.err, result.err
    assert server.requests() == []
    assert not (tmp_path / ".hepinfra").exists()  # nothing half-written


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.text(max_size=12),
    st.sampled_from(["30d", "0d", "mariadb", "postgres", "{{ env }}", "{{ db.password }}", "{%", "local"]),
)
KEYS = st.sampled_from(
    [
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
        "vars",
        "db_key_env",
        "prod",
        "shop",
        "x",
    ]
)
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=DOCS)
def test_random_documents_never_raise_anything_but_a_manifest_error(doc: object, tmp_path: Path) -> None:
    import yaml

    target = tmp_path / "fuzz.yaml"
    base = {"version": 1, "environments": {"prod": {}}}
    text = yaml.safe_dump(doc if not isinstance(doc, dict) else {**base, **doc})
    target.write_text(text)
    try:
        manifest.load(target)
    except ManifestError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(target))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(
        st.sampled_from([*"ab:- {}[]\n\t'\"#&*!|>%@`,?=", "version: 1\n", "{{", "}}", "\x00", "\u2028"]), max_size=80
    ).map("".join)
)
def test_random_text_never_raises_anything_but_a_manifest_error(text: str, tmp_path: Path) -> None:
    target = tmp_path / "fuzz.yaml"
    target.write_text(text)
    try:
        manifest.load(target)
    except ManifestError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(target))
