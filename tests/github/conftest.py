"""Fixtures of the action's tests: the session's RUNNER_TEMP and a fake GitHub API per test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import record_artifact
from tests.github import venv
from tests.github.fake_api import FakeGitHub, serve

TOKEN = "ghs_" + "Q7" * 18  # the job's GITHUB_TOKEN (a secret: scanned for)


@pytest.fixture(scope="session")
def runner_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One RUNNER_TEMP for the whole run, its venv installed once (tests/github/venv.py: begun in the
    background at the session's start when any of the action's tests was collected)."""
    return venv.ready(tmp_path_factory.getbasetemp())


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    fake = FakeGitHub(token=TOKEN)
    server, _ = serve(fake)
    yield fake
    server.shutdown()
    for request in fake.requests:
        record_artifact(f"fake GitHub {request['method']} {request['path']}", json.dumps(request))
