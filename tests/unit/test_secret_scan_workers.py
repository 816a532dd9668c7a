"""The session's secret scan under pytest-xdist: the controller joins every worker's dump, so a
secret issued by one worker's world and printed by another's test is found, as are state files."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import WORKER_DUMP, scan_every_worker


def dump(root: Path, worker: str, issued: list[str], artifacts: list[tuple[str, str]]) -> None:
    (root / f"{WORKER_DUMP}{worker}.json").write_text(json.dumps({"issued": issued, "artifacts": artifacts}))


def test_a_secret_of_one_worker_in_anothers_output_is_found(tmp_path: Path) -> None:
    dump(tmp_path, "gw0", ["pw-issued-by-gw0-abcdef"], [("stdout", "nothing here")])
    dump(tmp_path, "gw1", ["pw-issued-by-gw1-abcdef"], [("stderr", "Error: pw-issued-by-gw0-abcdef was wrong")])
    workers, leaks = scan_every_worker(tmp_path)
    assert workers == 2 and leaks == [("secret-scan-gw1: stderr", "pw-i...")]


def test_state_files_of_every_worker_are_scanned_and_clean_runs_pass(tmp_path: Path) -> None:
    dump(tmp_path, "gw0", ["pw-issued-by-gw0-abcdef"], [])
    dump(tmp_path, "gw1", [], [("stdout", "clean")])
    workers, leaks = scan_every_worker(tmp_path)
    assert (workers, leaks) == (2, [])
    state = tmp_path / "popen-gw1" / "t0" / ".hepinfra" / "state" / "prod.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"password": "pw-issued-by-gw0-abcdef"}')
    assert scan_every_worker(tmp_path)[1] == [(str(state), "pw-i...")]
