"""Ctrl-C in the middle of an apply (issue 22, item 9): the message names what finished, what was in
flight and what never started, and says what the next apply does only for what was in flight: a
database create in flight is not followed by words about ids or uploads.

The real executable runs in a subprocess against the local hep.gg with a slow API (fault injection),
and gets SIGINT while its database create waits for hep.gg's answer; the id and the upload of the
same manifest only had their deleted output to write again (no call), so they finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hepinfra.state.local import LocalBackend
from tests.cliutil import invoke, write_project
from tests.conftest import ENV, Server, record_artifact

KEY_ENV = {"HEPINFRA_STATE_KEY": "correct horse battery staple"}

DATABASE = """
databases:
  shop:
    outputs:
      - dotenv: .env.db
        keys: {SHOP_URL: "{{ db.connection_string }}"}
"""
MANIFEST = """
version: 1
environments:
  prod: {}
ids:
  token:
    type: uuid
    outputs:
      - dotenv: .env
        keys: {TOKEN: "{{ id.value }}"}
uploads:
  logo:
    file: logo.txt
    outputs:
      - dotenv: .env
        keys: {LOGO_URL: "{{ upload.url }}"}
"""


def creates(server: Server) -> int:
    return len([r for r in server.requests() if r["method"] == "POST" and r["path"].endswith("/databases")])


def test_ctrl_c_during_a_database_create_names_only_the_create_in_flight(tmp_path: Path, server: Server) -> None:
    project = write_project(tmp_path / "p", MANIFEST, {"logo.txt": "a logo\n"})
    first = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=KEY_ENV)
    assert first.code == 0, first.out + first.err
    project.write_text(project.read_text() + DATABASE)
    (project.parent / ".env").unlink()  # the id and the upload: a render each, no call
    server.faults(latency_ms=4000)  # the database create waits 4 s for its answer
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HEPGG_", "HEPINFRA_"))}
    environ.update({**ENV, **KEY_ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url})
    proc = subprocess.Popen(
        [sys.executable, "-m", "hepinfra", "apply", "-f", str(project), "--auto-approve"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    backend = LocalBackend(project.parent / ".hepinfra/state")
    deadline = time.monotonic() + 30
    while True:  # the create's intent is journaled: its request leaves right after
        found = backend.read("prod")
        if found is not None and any(j.op == "create" for j in found.journal):
            break
        assert proc.poll() is None and time.monotonic() < deadline, "the create never started"
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    record_artifact("apply interrupted during a create", out + err)
    assert proc.returncode == 1, out + err
    assert err == (
        "Error: interrupted: 2 finished (prod/ids.token, prod/uploads.logo); 1 in flight (prod/databases.shop), "
        "which the journal keeps for the next apply to settle (a database being created is found by name, never "
        "created twice); nothing left to start\n"
    )

    server.faults(latency_ms=0)
    result = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=KEY_ENV)
    assert result.code == 0, result.out + result.err
    assert creates(server) == 1  # the interrupted create landed; the next apply found it by name
