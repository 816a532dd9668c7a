"""Shared benchmark helpers: an emulator process, CLI runs timed with peak memory, medians."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

KEY = "hepgg_db_bench_key_0123456789abcdef"


@contextmanager
def emulator(*args: str) -> Iterator[str]:
    data = tempfile.mkdtemp(prefix="hepinfra-bench-emu-")
    env = {**os.environ, "BENCH_KEY": KEY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hepinfra",
            "emulator",
            "--port",
            "0",
            "--data",
            data,
            "--db-key",
            "env:BENCH_KEY",
            *args,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().split()[-1]
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def request_count(url: str) -> int:
    with urllib.request.urlopen(url + "/_emulator/requests") as r:  # noqa: S310 (loopback)
        return len(json.load(r)["data"]["requests"])


def clear_requests(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/_emulator/requests", method="DELETE"))  # noqa: S310


def run_cli(args: list[str], url: str, cwd: Path) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Wall seconds, peak RSS (KiB) of the child, and the result."""
    env = {**os.environ, "HEPGG_URL": url, "HEPGG_DB_KEY": KEY}
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "hepinfra", *args], cwd=cwd, env=env, stdout=out_file, stderr=err_file, text=True
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS, not every child's
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        err_file.seek(0)
        proc = subprocess.CompletedProcess(child.args, child.returncode, out_file.read(), err_file.read())
    return wall, usage.ru_maxrss, proc


def median(values: list[float]) -> float:
    return statistics.median(values)


def emit(results: dict[str, Any], name: str) -> None:
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
