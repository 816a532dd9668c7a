"""Benchmark: what one rotation costs a consumer (failed connections, ms of outage), by strategy.

Starts a PostgreSQL cluster and a MariaDB server on loopback (tests/servers.py), the local hep.gg
backed by them (``hepinfra emulator --postgres env:… --mariadb env:…``), and a project whose
databases write their credentials to a ``.env`` (and, for PgBouncer, a ``pgbouncer`` output). For
each scenario a ``Probe`` (bench/probe.py) opens a new connection every 10 ms with the credential
as the consumer reads it, and holds one connection running ``SELECT 1`` every 10 ms, while
``hepinfra rotate KEY`` runs N times (the CLI, as a user runs it). Per rotation: failed new
connections and ms of outage (first failure -> first success after it); over all: drops of the
held connection. Medians and maxima; JSON in bench/results/outage.json.

Scenarios: ``dotenv-postgres``, ``dotenv-mariadb`` (today's single-user rotation: the consumer
re-reads ``.env``), ``pgbouncer-session``, ``pgbouncer-transaction`` (the consumer dials PgBouncer
with its own stable credential; hepinfra cuts PgBouncer over: docs/pgbouncer.md), ``alternating-postgres``,
``alternating-mariadb`` (``rotation: {strategy: alternating}``: the consumer re-reads ``.env``, which
carries one of two login roles; the emulator runs with ``--role-privilege``: docs/rotation-strategies.md),
``watch-postgres``, ``watch-mariadb`` (single-user rotation; the consumer is a process that reads its
URL from its environment once, supervised by ``hepinfra run --watch --from .env`` with the default
``--interval`` (2 s), which restarts it when the file changes: bench/probe.py's ``--journal`` mode).
Run: python bench/outage_bench.py [--rotations 50] [--scenarios dotenv-postgres,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent))
from bench.probe import JournalProbe, Probe, Report, from_dotenv, from_url

KEY = "hepgg_db_bench_key_0123456789abcdef"
SCENARIOS = (
    "dotenv-postgres",
    "dotenv-mariadb",
    "pgbouncer-session",
    "pgbouncer-transaction",
    "alternating-postgres",
    "alternating-mariadb",
    "watch-postgres",
    "watch-mariadb",
)

MANIFEST = """\
version: 1
environments: {prod: {}}
databases:
  shop:
    engine: postgres
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
  orders:
    engine: mariadb
    outputs:
      - dotenv: .env
        keys: {ORDERS_URL: "{{ db.connection_string }}"}
"""
PGBOUNCER = """\
  pooled:
    engine: postgres
    outputs:
      - pgbouncer: deploy/pgbouncer/databases.ini
        database: pooled
        admin_url_env: PGBOUNCER_ADMIN_URL
"""


@dataclass
class World:
    root: Path
    url: str  # the local hep.gg
    env: dict[str, str]

    def hepinfra(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "hepinfra", *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"hepinfra {' '.join(args)} failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")
        return done


@contextlib.contextmanager
def world(pgbouncer: bool, alternating: bool = False) -> Iterator[World]:
    """Real PostgreSQL and MariaDB, the local hep.gg backed by them, and a project (not applied yet)."""
    from tests.servers import mariadb_instance, postgres_cluster

    with postgres_cluster("pg-" + secrets.token_hex(8)) as pg, mariadb_instance("my-" + secrets.token_hex(8)) as my:
        env = {**os.environ, "BENCH_KEY": KEY, "PG_ADMIN": pg.url, "MY_ADMIN": my.url}
        data = tempfile.mkdtemp(prefix="hepinfra-bench-emu-")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hepinfra", "emulator", "--port", "0", "--data", data, "--db-key", "env:BENCH_KEY",
             "--postgres", "env:PG_ADMIN", "--mariadb", "env:MY_ADMIN", *(["--role-privilege"] if alternating else [])],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        try:
            root = Path(tempfile.mkdtemp(prefix="hepinfra-bench-outage-"))
            manifest = MANIFEST.replace("version: 1\n", "version: 1\ndefaults: {rotation: {strategy: alternating}}\n")
            (root / "hepinfra.yaml").write_text(
                (manifest if alternating else MANIFEST) + (PGBOUNCER if pgbouncer else "")
            )
            clean = {k: v for k, v in os.environ.items() if not k.startswith(("HEPGG_", "HEPINFRA_"))}
            state_key = {"HEPINFRA_STATE_KEY": "bench-" + secrets.token_hex(16)}  # the roles' passwords, sealed
            yield World(root, url, {**clean, "HEPGG_URL": url, "HEPGG_DB_KEY": KEY, **state_key})
        finally:
            proc.terminate()
            proc.wait(10)


def rotations(w: World, probe: Probe, key: str, n: int) -> list[float]:
    """Rotate ``key`` n times under the probe, each until the probe has seen 3 working connections in
    a row; returns when each began (a rotation's window ends where the next begins)."""
    marks = []
    for _ in range(n):
        marks.append(probe.mark())
        w.hepinfra("rotate", key, "--auto-approve")
        probe.wait(successes=3, since=probe.mark())
    return marks


def summary(reports: list[Report], started: Report) -> dict[str, Any]:
    failed = [r.failures for r in reports]
    outage = [r.outage_ms for r in reports]
    return {
        "rotations": len(reports),
        "failed_per_rotation_median": statistics.median(failed),
        "failed_per_rotation_max": max(failed),
        "outage_ms_median": round(statistics.median(outage), 1),
        "outage_ms_max": round(max(outage), 1),
        "connections_per_rotation_median": statistics.median(r.attempts for r in reports),
        "slowest_connect_ms": max(r.max_connect_ms for r in reports),
        "held_drops": started.held_drops,
        "held_failures": started.held_failures,
        "held_slowest_ms": started.held_max_ms,
        "longest_gap_ms_median": round(statistics.median(r.longest_gap_ms for r in reports), 1),
        "restarts": started.restarts,
        "errors": started.errors,
        "failed_per_rotation": failed,
        "outage_ms": outage,
    }


def run_scenario(name: str, n: int) -> dict[str, Any]:
    pooled = name.startswith("pgbouncer")
    with world(pooled, alternating=name.startswith("alternating")) as w:
        key, variable = ("shop", "SHOP_URL") if name.endswith("-postgres") else ("orders", "ORDERS_URL")
        if name.startswith("watch"):
            w.hepinfra("apply", "--auto-approve")
            return watched(w, variable, key, n)
        if not pooled:
            w.hepinfra("apply", "--auto-approve")
            return measure(w, Probe(from_dotenv(w.root / ".env", variable)), key, n)
        from tests.servers import pgbouncer_instance

        include = w.root / "deploy/pgbouncer/databases.ini"  # PgBouncer starts with it empty
        users = {"app": "app-" + secrets.token_hex(8), "pgb_admin": "adm-" + secrets.token_hex(8)}
        with pgbouncer_instance(include, name.split("-")[1], users) as bouncer:
            w.env["PGBOUNCER_ADMIN_URL"] = bouncer.admin_url
            w.hepinfra("apply", "--auto-approve")
            return measure(w, Probe(from_url(bouncer.url("pooled"))), "pooled", n)


def watched(w: World, variable: str, key: str, n: int) -> dict[str, Any]:
    """The consumer as a process under ``hepinfra run --watch --from .env``, journaling its attempts."""
    journal = w.root / "probe.jsonl"
    consumer = [sys.executable, str(Path(__file__).parent / "probe.py"), "--env", variable, "--journal", str(journal)]
    supervise = [sys.executable, "-m", "hepinfra", "run", "--watch", "--from", ".env", "--", *consumer]
    watch = subprocess.Popen(supervise, cwd=w.root, env=w.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        return measure(w, JournalProbe(journal), key, n)
    finally:
        watch.terminate()
        _, err = watch.communicate(timeout=60)
        restarts = err.count("restarting")
        print(f"run --watch: {restarts} restart line(s)", file=sys.stderr)


def measure(w: World, probe: Probe, key: str, n: int) -> dict[str, Any]:
    probe.start()
    probe.wait(successes=3)
    try:
        marks = rotations(w, probe, key, n)
    finally:
        whole = probe.stop()
    ends: list[float | None] = [*marks[1:], None]
    return summary([probe.report(since=a, until=b) for a, b in zip(marks, ends, strict=True)], whole)


def table(results: dict[str, dict[str, Any]]) -> str:
    head = f"{'scenario':<22} {'rot':>4} {'failed/rot med':>14} {'max':>5} {'outage ms med':>14} {'max':>8} " \
           f"{'conns/rot':>9} {'held drops':>10} {'restarts':>8} {'gap ms med':>10}"  # fmt: skip
    rows = [head, "-" * len(head)]
    for name, r in results.items():
        rows.append(
            f"{name:<22} {r['rotations']:>4} {r['failed_per_rotation_median']:>14} {r['failed_per_rotation_max']:>5} "
            f"{r['outage_ms_median']:>14} {r['outage_ms_max']:>8} {r['connections_per_rotation_median']:>9} "
            f"{r['held_drops']:>10} {r.get('restarts', 0):>8} {r.get('longest_gap_ms_median', 0):>10}"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rotations", type=int, default=50, help="rotations per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    out = Path(__file__).parent / "results"
    saved = out / "outage.json"  # the scenarios not run now keep their last figures
    results: dict[str, dict[str, Any]] = json.loads(saved.read_text()) if saved.exists() else {}
    for name in args.scenarios.split(","):
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
        started = time.perf_counter()
        results[name] = run_scenario(name, args.rotations)
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: done in {results[name]['seconds']} s", file=sys.stderr)
        out.mkdir(exist_ok=True)
        saved.write_text(json.dumps(results, indent=2) + "\n")  # after each scenario
    print(table(results))


if __name__ == "__main__":
    main()
