"""The session's secret scan (tests/conftest.py) finds what it must: a scan that cannot fail proves nothing."""

from __future__ import annotations

from tests.conftest import find_secrets


def test_the_scan_finds_every_secret_in_every_text_and_nothing_else() -> None:
    texts = [
        ("stdout", "url=postgresql://u:pw-abcdefgh@h/db"),
        ("log", "nothing here"),
        ("state", "pw-abcdefghtok-12345678"),
    ]
    found = find_secrets(texts, {"pw-abcdefgh", "tok-12345678", "never-there"})
    assert sorted(found) == [("state", "pw-a..."), ("state", "tok-..."), ("stdout", "pw-a...")]
    assert find_secrets(texts, set()) == []
