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


def test_the_scan_collects_debug_records_of_every_logger_during_a_test() -> None:
    """Every record, DEBUG included, from any logger, reaches the scan's collection while a test runs
    (pytest's own log capture must not raise the root logger's level between a test's phases)."""
    import logging

    from tests.conftest import ARTIFACTS

    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
    marker = "debug-record-for-the-scan-" + str(id(ARTIFACTS))
    logging.getLogger("hepinfra.anything").debug("a line: %s", marker)
    logging.getLogger("httpcore.http11").debug("a library's line: %s", marker)
    collected = [text for label, text in ARTIFACTS if marker in text]
    assert len(collected) == 2, collected
