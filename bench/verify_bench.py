"""Benchmark: the rotation window with ``verify: true`` against real servers.

Starts a PostgreSQL cluster and a MariaDB server on loopback (as the tests do: tests/servers.py),
runs ``hepinfra emulator --postgres env:… --mariadb env:…``, applies N databases of each engine
with a dotenv output and ``verify: true``, then rotates them all R times. The window runs from
hep.gg's rotate answer to the credentials verified by a real login (``rotation_window_ms`` of
each ``done`` event), with and without verify. Medians and maxima over every rotation.
Run: python bench/verify_bench.py [--n 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import KEY, emit, run_cli

from tests.servers import mariadb_instance, postgres_cluster


def keys(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{engine[:2]}{i:02d}" for engine in ("postgres", "mariadb") for i in range(n)]


def manifest(n: int, verify: bool, prefix: str) -> str:
    lines = ["version: 1", f"defaults: {{verify: {str(verify).lower()}}}", "environments: {prod: {}}", "databases:"]
    for engine in ("postgres", "mariadb"):
        for i in range(n):
            lines += [
                f"  {prefix}{engine[:2]}{i:02d}:",
                f"    engine: {engine}",
                "    outputs:",
                "      - dotenv: .env",
                f'        keys: {{{prefix.upper()}{engine[:2].upper()}{i:02d}_URL: "{{{{ db.connection_string }}}}"}}',
            ]
    return "\n".join(lines) + "\n"


def windows(stdout: str) -> tuple[list[float], list[float]]:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    done = [e for e in events if e.get("event") == "done" and "rotation_window_ms" in e]
    return [e["rotation_window_ms"] for e in done], [e["verified_ms"] for e in done if "verified_ms" in e]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10, help="databases per engine")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, object] = {"n_per_engine": args.n, "rounds": args.rounds}
    with postgres_cluster("pg-" + secrets.token_hex(8)) as pg, mariadb_instance("my-" + secrets.token_hex(8)) as my:
        env = {**os.environ, "BENCH_KEY": KEY, "PG_ADMIN": pg.url, "MY_ADMIN": my.url}
        data = tempfile.mkdtemp(prefix="hepinfra-bench-emu-")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hepinfra", "emulator", "--port", "0", "--data", data, "--db-key", "env:BENCH_KEY",
             "--slots", str(4 * args.n + 10), "--postgres", "env:PG_ADMIN", "--mariadb", "env:MY_ADMIN"],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        try:
            for verify in (False, True):
                root = Path(tempfile.mkdtemp(prefix="hepinfra-bench-verify-"))
                prefix = "v" if verify else "n"  # each pass has its own databases
                (root / "hepinfra.yaml").write_text(manifest(args.n, verify, prefix))
                _, _, done = run_cli(["apply", "--auto-approve"], url, root)
                assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
                spans: list[float] = []
                checks: list[float] = []
                for _ in range(args.rounds):
                    _, _, rotated = run_cli(["rotate", "--auto-approve", "--json", *keys(args.n, prefix)], url, root)
                    assert rotated.returncode == 0, rotated.stdout[-2000:] + rotated.stderr[-2000:]
                    found, verified = windows(rotated.stdout)
                    spans += found
                    checks += verified
                label = "with_verify" if verify else "without_verify"
                row = {
                    "rotations": len(spans),
                    "window_median_ms": round(statistics.median(spans), 2),
                    "window_max_ms": round(max(spans), 2),
                }
                if checks:
                    row["verify_median_ms"] = round(statistics.median(checks), 2)
                results[label] = row
                print(f"{label:>15}: {row}")
        finally:
            proc.terminate()
            proc.wait(10)
    emit(results, "verify")


if __name__ == "__main__":
    main()
