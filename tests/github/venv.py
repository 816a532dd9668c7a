"""The action's virtual environment for the tests: installed once per run, in the background.

ci/action-install.sh takes about 40 s. It runs in a thread (the install itself is a child process,
with the same bare environment as the harness gives the action's steps) from the start of the
session, into a directory shared by every pytest-xdist worker, under a lock: the first worker
installs, the others find it stamped. Each worker's own RUNNER_TEMP gets a symlink to it, so the
action's install step finds the venv stamped and ends at once, as a job's second install step does
on GitHub; should the stamp no longer match (pyproject.toml edited during a run), that step's
``rm -rf`` removes only this worker's symlink and installs into its own RUNNER_TEMP. Meanwhile the
workers run other tests; the action's tests wait for the install (``ready``).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV = "hepinfra-action"  # ci/action-install.sh's venv, under RUNNER_TEMP
_job: dict[str, Any] = {}
_guard = threading.Lock()


def start(base: Path) -> None:
    """Install in the background, once per process (a second call is a no-op)."""
    with _guard:
        if "thread" in _job:
            return
        shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "action-venv"
        shared.mkdir(exist_ok=True)

        def install() -> None:
            try:
                with (shared.parent / "action-venv.lock").open("w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(shared),
                           "ACTION_PATH": str(REPO), "RUNNER_TEMP": str(shared)}  # fmt: skip
                    done = subprocess.run(["bash", "--noprofile", "--norc", str(REPO / "ci/action-install.sh")],
                                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
                    _job["failed"] = "" if done.returncode == 0 else done.stdout + done.stderr
            except Exception as exc:  # reported by ready()
                _job["failed"] = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=install, name="action-venv", daemon=True)
        _job.update(thread=thread, shared=shared, base=base)
        thread.start()


def ready(base: Path) -> Path:
    """This worker's RUNNER_TEMP, its venv a symlink to the installed one (waiting for the install)."""
    start(base)
    _job["thread"].join()
    assert not _job.get("failed", "missing"), f"the action's install failed: {_job.get('failed')}"
    runner_temp = base / "runner-temp"
    runner_temp.mkdir(exist_ok=True)
    link = runner_temp / VENV
    if not link.is_symlink() and not link.exists():
        link.symlink_to(Path(_job["shared"]) / VENV, target_is_directory=True)
    return runner_temp
