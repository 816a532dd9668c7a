"""The local state backend: the conformance suite, plus what is local-only (files, modes, backup)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hepinfra.errors import StateError
from hepinfra.state import codec, conformance
from hepinfra.state.local import LocalBackend
from hepinfra.state.model import State


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
def test_local_backend_conformance(check: Callable[[conformance.Factory], None], tmp_path: Path) -> None:
    check(lambda: LocalBackend(tmp_path / "state"))


def test_files_are_0600_with_a_backup_and_no_temp_left(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s")
    first = backend.write("prod", State(environment="prod"))
    assert backend.write("prod", first.model_copy(update={"serial": 7})).serial == 1  # same content: kept
    second = backend.write("prod", first.model_copy(update={"databases": {"a": conformance._db("a")}}))
    assert second.serial == 2
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["prod.json", "prod.json.backup"]
    for name in files:
        assert oct(os.stat(tmp_path / "s" / name).st_mode & 0o777) == "0o600"
    assert codec.decode((tmp_path / "s" / "prod.json.backup").read_bytes(), "b").serial == 1


@pytest.mark.parametrize(
    "content,message",
    [
        (b"{nope", "not valid JSON"),
        (b"[]", "must hold a JSON object"),
        (b'{"format_version": 9}', "format_version 9 is not supported"),
        (b'{"format_version": 1, "environment": "prod", "serial": "x"}', "serial: Input should be a valid integer"),
    ],
)
def test_corrupt_state_is_one_line_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "prod.json").write_bytes(content)
    with pytest.raises(StateError) as info:
        LocalBackend(tmp_path).read("prod")
    assert str(info.value).startswith(str(tmp_path / "prod.json")) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_state_of_another_environment_is_refused(tmp_path: Path) -> None:
    (tmp_path / "prod.json").write_bytes(codec.encode(State(environment="staging")))
    with pytest.raises(StateError, match="holds the state of environment 'staging'"):
        LocalBackend(tmp_path).read("prod")
