"""Output sinks: the conformance suite for each, and what is special to dotenv and templates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from dotenv import dotenv_values
from hypothesis import given, settings
from hypothesis import strategies as st

from hepinfra.errors import OutputError
from hepinfra.outputs import SINKS
from hepinfra.outputs import conformance as oc
from hepinfra.outputs.base import Sink
from hepinfra.templates import QuotingError, dotenv_quote, render_string
from hepinfra.values import OutputTarget
from tests.unit.test_dotenv_readers import compose_parse, read_back_with_bash

__all__ = ["read_back_like_compose", "read_back_with_bash"]  # used by CLI tests too


def dotenv_target(path: str, keys: tuple[tuple[str, str], ...] | None = None) -> OutputTarget:
    keys = keys or (("DB_URL", "{{ db.connection_string }}"), ("DB_PASSWORD", "{{ db.password }}"))
    return OutputTarget(
        kind="dotenv",
        path=path,
        keys=keys,
        template=None,
        template_source=None,
        mode=0o600,
        allow_tracked=False,
        allow_outside=False,
        definition_digest="d",
    )


def template_target(
    path: str, source: str = "url: {{ db.connection_string | yaml }}\npw: {{ db.password | json }}\n"
) -> OutputTarget:
    return OutputTarget(
        kind="template",
        path=path,
        keys=(),
        template="t.j2",
        template_source=source,
        mode=0o600,
        allow_tracked=False,
        allow_outside=False,
        definition_digest="d",
    )


def _age_identity() -> tuple[str, Callable[[Path], str]]:
    from pyrage import decrypt, x25519

    identity = x25519.Identity.generate()
    return str(identity.to_public()), lambda file: decrypt(file.read_bytes(), [identity]).decode()


AGE_RECIPIENT, oc.PLAINTEXT["age"] = _age_identity()


def age_target(path: str) -> OutputTarget:
    keys = (("DB_URL", "{{ db.connection_string }}"), ("DB_PASSWORD", "{{ db.password }}"))
    return OutputTarget(
        kind="age",
        path=path,
        keys=keys,
        template=None,
        template_source=None,
        mode=0o600,
        allow_tracked=True,
        allow_outside=False,
        definition_digest="d",
        recipients=(AGE_RECIPIENT,),
    )


def pgbouncer_target(path: str) -> OutputTarget:
    from hepinfra.outputs.pgbouncer import PgBouncerTarget

    return PgBouncerTarget(
        kind="pgbouncer",
        path=path,
        keys=(("shop", ""),),
        template=None,
        template_source=None,
        mode=0o600,
        allow_tracked=False,
        allow_outside=False,
        definition_digest="d",
        database="shop",
    )


FACTORIES: dict[str, Callable[[str], OutputTarget]] = {
    "dotenv": dotenv_target,
    "template": template_target,
    "age": age_target,
    "pgbouncer": pgbouncer_target,
}


@pytest.mark.parametrize("kind", sorted(SINKS))
@pytest.mark.parametrize("check", oc.CHECKS, ids=lambda c: c.__name__)
def test_sink_conformance(
    kind: str, check: Callable[[Sink, Callable[[str], OutputTarget], Path], None], tmp_path: Path
) -> None:
    check(SINKS[kind], FACTORIES[kind], tmp_path)


def test_every_registered_sink_has_a_conformance_run() -> None:
    assert set(SINKS) == set(FACTORIES)


def test_dotenv_keeps_other_lines_comments_and_order(tmp_path: Path) -> None:
    file = tmp_path / ".env"
    file.write_text("# app settings\nFIRST=1\nexport DB_PASSWORD=old\n\n# trailing comment\nLAST='x y'\n")
    SINKS["dotenv"].write(file, dotenv_target(".env"), oc.context("newpass"), oc.DIGEST)
    assert file.read_text() == (
        "# app settings\nFIRST=1\nexport DB_PASSWORD='newpass'\n\n# trailing comment\nLAST='x y'\n"
        "DB_URL='postgresql://dum_x_1:newpass@db.example:5432/um_x_1'\n"
    )
    SINKS["dotenv"].retire(file, ("DB_URL", "DB_PASSWORD"))
    assert file.read_text() == "# app settings\nFIRST=1\n\n# trailing comment\nLAST='x y'\n"


def test_two_databases_share_one_dotenv_file(tmp_path: Path) -> None:
    file = tmp_path / ".env"
    a = dotenv_target(".env", (("A_PASSWORD", "{{ db.password }}"),))
    b = dotenv_target(".env", (("B_PASSWORD", "{{ db.password }}"),))
    SINKS["dotenv"].write(file, a, oc.context("pa"), oc.DIGEST)
    digest_b = SINKS["dotenv"].write(file, b, oc.context("pb"), oc.DIGEST)
    assert dotenv_values(file) == {"A_PASSWORD": "pa", "B_PASSWORD": "pb"}
    assert SINKS["dotenv"].observe(file, b, ("B_PASSWORD",), oc.DIGEST).digest == digest_b


def read_back_like_compose(line_value: str) -> str:
    """docker compose's reading of one value as written after ``KEY=`` (compose-go's parser, ported in
    test_dotenv_readers and checked there against compose-go's own test cases)."""
    return compose_parse(f"V={line_value}\n")["V"]


WRITABLE = [
    "plain",
    "with space and # hash",
    "dollar$ at$ end$",
    'double " quote and `backtick` and $ alone',
    "single ' quote and \\ backslash and \" double",
    "percent %41 @ : / ? & = ; < > | * ~ ! ( ) [ ] { }",
    "a\\nb is not a newline",
    '"starts with a quote',
    "\\starts with a backslash",
    "ünïcødé ✓",
    "",
    "multi\nline",
    "ends with a quote ' \"",
]


@pytest.mark.parametrize("value", WRITABLE)
def test_dotenv_quoting_reads_back_exactly_in_python_dotenv_and_bash(value: str, tmp_path: Path) -> None:
    file = tmp_path / ".env"
    file.write_text(f"V={dotenv_quote(value)}\n")
    assert dotenv_values(file) == {"V": value}
    assert read_back_with_bash(file, ["V"]) == {"V": value}
    assert read_back_like_compose(dotenv_quote(value)) == value


@pytest.mark.parametrize(
    "value,reason",
    [
        ("quote ' and $HOME", "python-dotenv and bash cannot share it"),
        ("back\\slash and `cmd`", "python-dotenv and bash cannot share it"),
        ("brace ${VAR}", "python-dotenv interpolates"),
        ("carriage\rreturn", "python-dotenv and bash cannot share it"),
        ("nul\0", "NUL"),
        ("ends with a backslash ' \\", "python-dotenv and bash cannot share it"),
    ],
)
def test_values_no_quoting_can_carry_are_refused(value: str, reason: str) -> None:
    with pytest.raises(QuotingError, match=reason):
        dotenv_quote(value)


@settings(max_examples=400, deadline=None)
@given(value=st.text(alphabet=st.sampled_from([*list("aZ9 $'\"#\\`@:/%&;{}()!*?~=,|<>^"), "é"]), max_size=24))
def test_quoting_never_writes_something_wrong(value: str) -> None:
    """Any value is either refused or read back exactly by python-dotenv and compose's rules (bash above)."""
    import io

    from dotenv import dotenv_values as parse

    try:
        quoted = dotenv_quote(value)
    except QuotingError:
        return
    assert parse(stream=io.StringIO(f"V={quoted}\n")) == {"V": value}
    assert compose_parse(f"V={quoted}\n") == {"V": value}


def test_unquotable_password_fails_the_output_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError) as info:
        SINKS["dotenv"].write(tmp_path / ".env", dotenv_target(".env"), oc.context("it's $HOME"), oc.DIGEST)
    message = str(info.value)
    assert "DB_URL: the value cannot be written safely to a dotenv file read by python-dotenv, compose, bash" in message
    assert "readers:" in str(info.value.hint)
    assert "$HOME" not in message and not (tmp_path / ".env").exists()


@pytest.mark.parametrize(
    "source,expected",
    [
        ("{{ v | shell }}", "'it'\"'\"'s $x'"),
        ("{{ v | url }}", "it%27s%20%24x"),
        ("{{ v | json }}", '"it\'s $x"'),
        ("{{ v | yaml }}", '"it\'s $x"'),
        ("{{ v | b64 }}", "aXQncyAkeA=="),
        ("{{ 'it\\'s $ 5' | dotenv }}", '"it\'s $ 5"'),
        ("{{ 'a b' | dotenv }}", "'a b'"),
    ],
)
def test_template_filters(source: str, expected: str) -> None:
    assert render_string(source, {"v": "it's $x"}) == expected


def test_dotenv_filter_refuses_what_cannot_be_quoted() -> None:
    from hepinfra.templates import SafeTemplateError

    with pytest.raises(SafeTemplateError, match="cannot be quoted: python-dotenv and bash cannot share it"):
        render_string("{{ v | dotenv }}", {"v": "it's $x"})


def test_dotenv_filter_quotes_for_all_three_readers() -> None:
    # the filter has no readers: what it writes is exact for python-dotenv, compose and bash
    assert render_string("{{ v | dotenv }}", {"v": "it's $ 5"}) == dotenv_quote(
        "it's $ 5", ("python-dotenv", "compose", "bash")
    )
    assert dotenv_quote("it's $x", ("compose",)) == "'it\\'s $x'"


def test_templates_are_sandboxed() -> None:
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError):
        render_string("{{ v.__class__.__mro__ }}", {"v": "x"})


def test_kubernetes_secret_template_round_trips_through_yaml(tmp_path: Path) -> None:
    import base64

    import yaml

    source = "data:\n  URL: {{ db.connection_string | b64 }}\nstringData:\n  pw: {{ db.password | yaml }}\n"
    target = template_target("secret.yaml", source)
    tricky = "p'a\"s#s: \\w{o}rd"
    SINKS["template"].write(tmp_path / "secret.yaml", target, oc.context(tricky), oc.DIGEST)
    doc = yaml.safe_load((tmp_path / "secret.yaml").read_text())
    assert doc["stringData"]["pw"] == tricky
    assert tricky in base64.b64decode(doc["data"]["URL"]).decode()
