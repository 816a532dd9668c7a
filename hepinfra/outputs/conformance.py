"""The one test suite every output sink must pass.

Usage::

    @pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check, tmp_path):
        check(DotenvSink(), make_target, tmp_path)

``make_target(path)`` returns an OutputTarget of the sink's kind writing ``path`` (relative).
Must not: depend on a sink's internals.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hepinfra.digests import Digester
from hepinfra.fsutil import TMP_PREFIX
from hepinfra.outputs.base import Sink
from hepinfra.values import OutputTarget

TargetFactory = Callable[[str], OutputTarget]
DIGEST = Digester("conformance-key", "lineage")


def context(password: str = "s3cr3t-One") -> dict[str, Any]:  # noqa: S107 (test data)
    url = f"postgresql://dum_x_1:{password}@db.example:5432/um_x_1"
    db = {
        "id": "01ID",
        "name": "shop-prod",
        "engine": "postgres",
        "db_name": "um_x_1",
        "db_user": "dum_x_1",
        "user": "dum_x_1",
        "password": password,
        "connection_string": url,
        "host": "db.example",
        "port": 5432,
    }
    return {"env": "prod", "key": "shop", "name": "shop-prod", "vars": {}, "db": db}


def _keys(target: OutputTarget) -> tuple[str, ...]:
    return tuple(k for k, _ in target.keys)


# How a test reads back what a sink of an encrypting kind wrote (kind -> file -> plaintext); any
# other kind is read as text. A sink with ``deterministic = False`` (fresh ciphertext per write)
# is held to equal plaintext, not equal bytes, on a rewrite.
PLAINTEXT: dict[str, Callable[[Path], str]] = {}


def _plain(sink: Sink, file: Path) -> str:
    reader = PLAINTEXT.get(sink.kind)
    return reader(file) if reader else file.read_text()


def _digest(written: Any) -> str:
    return written if isinstance(written, str) else str(written.digest)


def check_write_then_observe_agree(sink: Sink, make: TargetFactory, tmp: Path) -> None:
    target = make("out/a.conf")
    file = tmp / target.path
    written = _digest(sink.write(file, target, context(), DIGEST))
    observed = sink.observe(file, target, _keys(target), DIGEST)
    assert observed.exists and observed.digest == written and observed.problem is None


def check_missing_file_is_observed_as_missing(sink: Sink, make: TargetFactory, tmp: Path) -> None:
    target = make("nowhere.conf")
    assert not sink.observe(tmp / target.path, target, _keys(target), DIGEST).exists


def check_a_new_password_changes_the_digest(sink: Sink, make: TargetFactory, tmp: Path) -> None:
    target = make("b.conf")
    first = _digest(sink.write(tmp / target.path, target, context("one-password"), DIGEST))
    second = _digest(sink.write(tmp / target.path, target, context("another-password"), DIGEST))
    assert first != second
    assert "another-password" in _plain(sink, tmp / target.path)


def check_rewrite_is_stable(sink: Sink, make: TargetFactory, tmp: Path) -> None:
    target = make("c.conf")
    first = _digest(sink.write(tmp / target.path, target, context(), DIGEST))
    content = (tmp / target.path).read_bytes()
    plain = _plain(sink, tmp / target.path)
    again = _digest(sink.write(tmp / target.path, target, context(), DIGEST))
    if getattr(sink, "deterministic", True):
        assert again == first and (tmp / target.path).read_bytes() == content
    else:
        assert _plain(sink, tmp / target.path) == plain


def check_hand_edit_is_detected(sink: Sink, make: TargetFactory, tmp: Path) -> None:
    target = make("d.conf")
    file = tmp / target.path
    written = _digest(sink.write(file, target, context(), DIGEST))
    data = file.read_bytes()
    edited = data.replace(b"s3cr3t-One", b"edited") if b"s3cr3t-One" in data else data[:-1] + bytes([data[-1] ^ 1])
    file.write_bytes(edited)
    assert sink.observe(file, target, _keys(target), DIGEST).digest != written


def check_mode_is_0600_and_parents_are_created(sink: Sink, make: TargetFactory, tmp: Path) -> None:
    target = make("deep/er/e.conf")
    sink.write(tmp / target.path, target, context(), DIGEST)
    assert oct(os.stat(tmp / target.path).st_mode & 0o777) == "0o600"


def check_no_temp_file_is_left(sink: Sink, make: TargetFactory, tmp: Path) -> None:
    target = make("f.conf")
    for _ in range(3):
        sink.write(tmp / target.path, target, context(), DIGEST)
    assert not [p for p in tmp.rglob("*") if p.name.startswith(TMP_PREFIX)]


def check_retire_removes_what_it_wrote(sink: Sink, make: TargetFactory, tmp: Path) -> None:
    target = make("g.conf")
    file = tmp / target.path
    sink.write(file, target, context(), DIGEST)
    sink.retire(file, _keys(target))
    assert not file.exists() or "s3cr3t-One" not in _plain(sink, file)
    sink.retire(tmp / "never-written.conf", _keys(target))  # retiring nothing is fine


def check_a_stricter_mode_is_kept(sink: Sink, make: TargetFactory, tmp: Path) -> None:
    target = make("h.conf")
    file = tmp / target.path
    sink.write(file, target, context("one-password"), DIGEST)
    os.chmod(file, 0o400)
    sink.write(file, target, context("another-password"), DIGEST)
    assert oct(os.stat(file).st_mode & 0o777) == "0o400"
    assert "another-password" in _plain(sink, file)


def check_previous_keys_no_longer_declared_are_removed(sink: Sink, make: TargetFactory, tmp: Path) -> None:
    """Keys written last time and no longer declared leave the file; the others stay as observed.

    A sink without keys (the whole file is hepinfra's) must accept ``previous_keys`` and ignore it.
    """
    target = make("i.conf")
    file = tmp / target.path
    keys = _keys(target)
    written = _digest(sink.write(file, target, context(), DIGEST, previous_keys=(*keys, "HEPINFRA_NEVER_WRITTEN")))
    assert sink.observe(file, target, keys, DIGEST).digest == written
    if len(keys) < 2:
        return
    fewer = dataclasses.replace(target, keys=target.keys[1:])
    written = _digest(sink.write(file, fewer, context(), DIGEST, previous_keys=keys))
    assert keys[0] not in _plain(sink, file)
    assert sink.observe(file, fewer, keys[1:], DIGEST).digest == written


CHECKS: list[Callable[[Sink, TargetFactory, Path], None]] = [
    check_write_then_observe_agree,
    check_missing_file_is_observed_as_missing,
    check_a_new_password_changes_the_digest,
    check_rewrite_is_stable,
    check_hand_edit_is_detected,
    check_mode_is_0600_and_parents_are_created,
    check_no_temp_file_is_left,
    check_retire_removes_what_it_wrote,
    check_a_stricter_mode_is_kept,
    check_previous_keys_no_longer_declared_are_removed,
]


# --- remote sinks (secret stores): one suite for every kind in REMOTE_SINKS ----------------------------
#
# ``make(name, keys)`` returns a target of the sink's kind that nobody else uses; ``tamper(target,
# key, value)`` changes one value in the store behind hepinfra's back (as a person would).

RemoteFactory = Callable[[str, tuple[str, ...]], OutputTarget]
Tamper = Callable[[OutputTarget, str, str], None]


def _remote_keys(*names: str) -> tuple[tuple[str, str], ...]:
    sources = {"URL": "{{ db.connection_string }}", "PASSWORD": "{{ db.password }}", "USER": "{{ db.user }}"}
    return tuple((n, sources[n]) for n in names)


def check_remote_write_then_observe_agree(sink: Any, make: RemoteFactory, tamper: Tamper) -> None:
    target = make("agree", ("URL", "PASSWORD"))
    written = sink.write(target, context(), DIGEST)
    observed = sink.observe(target, _keys(target), DIGEST)
    assert observed.exists and observed.problem is None
    assert observed.digest == written.digest and dict(observed.key_digests) == written.key_digests
    assert set(written.key_digests) == {"URL", "PASSWORD"}


def check_remote_missing_is_observed_as_missing(sink: Any, make: RemoteFactory, tamper: Tamper) -> None:
    target = make("never", ("URL",))
    observed = sink.observe(target, _keys(target), DIGEST)
    assert not observed.exists or observed.trusted


def check_remote_new_password_and_tampering_are_seen_by_key(sink: Any, make: RemoteFactory, tamper: Tamper) -> None:
    target = make("drift", ("URL", "PASSWORD"))
    first = sink.write(target, context("one-password"), DIGEST)
    second = sink.write(target, context("another-password"), DIGEST)
    assert first.digest != second.digest and first.key_digests["PASSWORD"] != second.key_digests["PASSWORD"]
    tamper(target, "URL", "postgresql://someone@else/db")
    observed = sink.observe(target, _keys(target), DIGEST)
    assert observed.digest != second.digest
    seen = dict(observed.key_digests or ())
    assert seen["PASSWORD"] == second.key_digests["PASSWORD"] and seen["URL"] != second.key_digests["URL"]


def check_remote_rewrite_is_idempotent(sink: Any, make: RemoteFactory, tamper: Tamper) -> None:
    target = make("again", ("URL", "PASSWORD"))
    first = sink.write(target, context(), DIGEST)
    again = sink.write(target, context(), DIGEST)
    assert again == first
    assert sink.observe(target, _keys(target), DIGEST).digest == first.digest


def check_remote_keys_no_longer_declared_go(sink: Any, make: RemoteFactory, tamper: Tamper) -> None:
    target = make("fewer", ("URL", "PASSWORD"))
    first = sink.write(target, context(), DIGEST)
    fewer = dataclasses.replace(target, keys=_remote_keys("PASSWORD"))
    unproven = sink.write(fewer, context(), DIGEST, previous_keys=("URL",), recorded={})
    if getattr(sink, "removable", True):  # without proof (a record) nothing is removed
        assert dict(sink.observe(fewer, ("URL", "PASSWORD"), DIGEST).key_digests or ()).keys() >= {"URL"}
    written = sink.write(fewer, context(), DIGEST, previous_keys=("URL",), recorded=first.key_digests)
    assert written == unproven
    observed = sink.observe(fewer, ("URL", "PASSWORD"), DIGEST)
    assert dict(observed.key_digests or ()) == written.key_digests  # URL is gone


def check_remote_retire_removes_only_what_it_provably_wrote(sink: Any, make: RemoteFactory, tamper: Tamper) -> None:
    target = make("retire", ("URL", "PASSWORD"))
    written = sink.write(target, context(), DIGEST)
    tamper(target, "URL", "changed-by-someone")
    reason = sink.retire(target, _keys(target), written.key_digests, DIGEST)
    assert reason, "a value someone changed was removed"
    if not getattr(sink, "removable", True):  # a store hepinfra can write but not delete from (exec)
        return
    other = make("retire-clean", ("URL", "PASSWORD"))
    clean = sink.write(other, context(), DIGEST)
    assert sink.retire(other, _keys(other), clean.key_digests, DIGEST) is None
    assert not sink.observe(other, _keys(other), DIGEST).exists


REMOTE_CHECKS: list[Callable[[Any, RemoteFactory, Tamper], None]] = [
    check_remote_write_then_observe_agree,
    check_remote_missing_is_observed_as_missing,
    check_remote_new_password_and_tampering_are_seen_by_key,
    check_remote_rewrite_is_idempotent,
    check_remote_keys_no_longer_declared_go,
    check_remote_retire_removes_only_what_it_provably_wrote,
]
