"""Fixtures of the action's tests: the session's RUNNER_TEMP and a fake GitHub API per test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import record_artifact
from tests.github.fake_api import FakeGitHub, serve

TOKEN = "ghs_" + "Q7" * 18  # the job's GITHUB_TOKEN (a secret: scanned for)


@pytest.fixture(scope="session")
def runner_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One RUNNER_TEMP for the session: the install step's virtual environment is made once (GitHub
    makes it once per job)."""
    return tmp_path_factory.mktemp("runner-temp")


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    fake = FakeGitHub(token=TOKEN)
    server, _ = serve(fake)
    yield fake
    server.shutdown()
    for request in fake.requests:
        record_artifact(f"fake GitHub {request['method']} {request['path']}", json.dumps(request))
