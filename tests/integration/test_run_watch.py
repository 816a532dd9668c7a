"""``hepinfra run --watch``: a supervised program is restarted with the new values after a rotation
(from a rendered .env on a host with no hepinfra credential, or polling hep.gg), is given SIGTERM
then SIGKILL after the grace period, and stops with hepinfra; no value reaches hepinfra's output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cliutil import invoke, write_project
from tests.conftest import ENV, Server, record_artifact

MANIFEST = """
version: 1
environments: {prod: {}}
databases:
  shop:
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
"""
# the supervised program: one line per start (the URL's digest, never the URL), and how it ended
CHILD = """
import hashlib, os, signal, sys, time
log = sys.argv[1]
ignore = len(sys.argv) > 2
def line(text):
    with open(log, "a") as f:
        f.write(text + "\\n")
def on_term(*_):
    line("term")
    if not ignore:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
line("start " + hashlib.sha256(os.environ["SHOP_URL"].encode()).hexdigest()[:12])
while True:
    time.sleep(0.05)
"""


def wait_for(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def watch(tmp_path: Path, server: Server, *args: str, credentials: bool = True) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEPGG_")}
    if credentials:
        env.update(ENV, HEPGG_URL=server.url, HEPGG_ID_URL=server.url)
    return subprocess.Popen(
        [sys.executable, "-m", "hepinfra", "run", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=60)
    record_artifact("hepinfra run --watch", out + err)
    return proc.returncode, err


def test_a_rotation_restarts_the_program_from_the_rendered_file_without_credentials(
    tmp_path: Path, server: Server
) -> None:
    path = write_project(tmp_path, MANIFEST, {"child.py": CHILD, ".gitignore": ".env\n"})
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    log = tmp_path / "child.log"
    proc = watch(tmp_path, server, "--watch", "--from", ".env", "--interval", "100ms", "--", sys.executable,
                 "child.py", str(log), credentials=False)  # fmt: skip
    wait_for(lambda: len(lines(log)) == 1)
    assert invoke(["rotate", "shop", "-f", str(path), "--auto-approve"], server=server).code == 0
    wait_for(lambda: len(lines(log)) == 3)
    first, term, second = lines(log)
    assert first.startswith("start ") and term == "term" and second.startswith("start ") and second != first
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0 and lines(log)[-1] == "term"
    assert "hepinfra run: SHOP_URL changed; restarting" in err
    assert "postgres" not in err and "mysql" not in err  # no value, no URL


def test_polling_hepgg_sees_a_rotation_and_a_stubborn_program_is_killed_after_the_grace(
    tmp_path: Path, server: Server
) -> None:
    path = write_project(tmp_path, MANIFEST, {"child.py": CHILD, ".gitignore": ".env\n"})
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert invoke(["apply", "-f", str(path), "--auto-approve"], server=server).code == 0
    log = tmp_path / "child.log"
    proc = watch(tmp_path, server, "-e", "prod", "--watch", "--interval", "200ms", "--grace", "300ms", "--",
                 sys.executable, "child.py", str(log), "ignore-term")  # fmt: skip
    wait_for(lambda: len(lines(log)) == 1)
    assert invoke(["rotate", "shop", "-f", str(path), "--auto-approve"], server=server).code == 0
    wait_for(lambda: len(lines(log)) == 3)
    assert lines(log)[1] == "term" and lines(log)[2] != lines(log)[0]
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc)
    assert code == 128 + signal.SIGKILL  # it ignored SIGTERM: killed after the grace period
    assert err.count("did not exit within 0.3s of SIGTERM; killing it") == 2


def test_the_program_ending_ends_the_watch_and_bad_options_are_one_line(tmp_path: Path, server: Server) -> None:
    (tmp_path / ".env").write_text("A=1\n")
    done = watch(tmp_path, server, "--watch", "--from", ".env", "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert finish(done)[0] == 3
    for args, message in [
        (["--from", ".env", "-e", "prod"], "-e and --from"),
        (["--interval", "1s", "--from", ".env"], "are for --watch"),
        (["--watch", "--interval", "soon", "--from", ".env"], "--interval: 'soon' is not a duration"),
        ([], "run needs -e ENV"),
    ]:
        result = invoke(["run", *args, "--", "true"], cwd=tmp_path)
        assert result.code == 1 and result.err.count("\n") == 1 and message in result.err, result.err
