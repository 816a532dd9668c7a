"""Fixtures of the action's tests: the session's RUNNER_TEMP and a fake GitHub API per test."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import record_artifact
from tests.github.fake_api import FakeGitHub, serve
from tests.github.harness import REPO

TOKEN = "ghs_" + "Q7" * 18  # the job's GITHUB_TOKEN (a secret: scanned for)


@pytest.fixture(scope="session")
def runner_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One RUNNER_TEMP for the whole run, shared by every pytest-xdist worker: the install step's
    virtual environment (ci/action-install.sh, about 40 s) is made once, by the first worker to get
    here, under a lock; every later install step finds it stamped and ends at once, as a job's second
    step does on GitHub. Nothing else of the action writes to RUNNER_TEMP."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "runner-temp"
    shared.mkdir(exist_ok=True)
    with (shared.parent / "runner-temp.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        env = {**os.environ, "ACTION_PATH": str(REPO), "RUNNER_TEMP": str(shared)}
        done = subprocess.run(["bash", str(REPO / "ci/action-install.sh")], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    return shared


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    fake = FakeGitHub(token=TOKEN)
    server, _ = serve(fake)
    yield fake
    server.shutdown()
    for request in fake.requests:
        record_artifact(f"fake GitHub {request['method']} {request['path']}", json.dumps(request))
