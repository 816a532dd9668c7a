"""Benchmark: one state read, one state write, and one lock + unlock, per backend.

"first read" is a new backend object's first read (a run's start: boto3 client or PostgreSQL
connection included); the others reuse the object, as a run does.

The state holds N managed databases with one output each (N=250 by default: a large team). S3 is
moto in server mode and PostgreSQL a real server on loopback, both started here as the tests start
them, so the figures are round trips over real sockets on this machine (a cloud region adds its
network latency to each call: S3 read 1 GET, write 1 conditional PUT; PostgreSQL 1 statement each).
Run: python bench/state_bench.py [--runs 50] [--databases 250]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from tempfile import mkdtemp
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from common import emit, median  # noqa: E402

from hepinfra.state.backend import Backend, LockInfo  # noqa: E402
from hepinfra.state.local import LocalBackend  # noqa: E402
from hepinfra.state.model import ManagedDatabase, OutputRecord, State  # noqa: E402
from hepinfra.state.postgres import PostgresBackend  # noqa: E402
from hepinfra.state.s3 import S3Backend  # noqa: E402
from hepinfra.state.spec import PostgresState, S3State  # noqa: E402
from tests.servers import moto_process, postgres_cluster  # noqa: E402


def big_state(n: int) -> State:
    now = datetime.now(UTC)
    dbs = {
        f"svc{i:04d}": ManagedDatabase(
            key=f"svc{i:04d}", name=f"svc{i:04d}-prod", id=f"ID{i:08d}", engine="postgres", managed_since=now
        )
        for i in range(n)
    }
    outputs = {
        State.output_id(k, f"env/{k}.env"): OutputRecord(
            database=k,
            path=f"env/{k}.env",
            kind="dotenv",
            digest="d" * 64,
            password_digest="p" * 64,
            definition_digest="f" * 64,
            keys=("DATABASE_URL", "DB_PASSWORD"),
            written_at=now,
        )
        for k in dbs
    }
    return State(environment="prod", databases=dbs, outputs=outputs)


def measure(factory: Callable[[], Backend], state: State, runs: int) -> dict[str, float]:
    backend = factory()
    stored = backend.write("prod", state)
    opens, reads, writes, locks = [], [], [], []
    for i in range(runs):
        started = time.perf_counter()
        fresh = factory()
        fresh.read("prod")
        opens.append(time.perf_counter() - started)
        fresh.close()
        started = time.perf_counter()
        current = backend.read("prod")
        reads.append(time.perf_counter() - started)
        assert current is not None
        changed = current.model_copy(update={"databases": {**current.databases, "x": stored.databases["svc0000"]}})
        if i % 2:
            changed = current.model_copy(update={"databases": dict(list(current.databases.items())[:-1])})
        started = time.perf_counter()
        backend.read("prod")
        stored = backend.write("prod", changed)
        writes.append(time.perf_counter() - started)
        started = time.perf_counter()
        held = backend.lock("prod", LockInfo())
        backend.unlock("prod", held.id)
        locks.append(time.perf_counter() - started)
    backend.close()
    return {
        "first_read_ms": round(1000 * median(opens), 2),
        "read_ms": round(1000 * median(reads), 2),
        "read_write_ms": round(1000 * median(writes), 2),
        "lock_unlock_ms": round(1000 * median(locks), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--databases", type=int, default=250)
    args = parser.parse_args()
    state = big_state(args.databases)
    size = len(state.model_dump_json(indent=2))
    print(f"state of {args.databases} databases: {size / 1024:.0f} KiB; medians of {args.runs} runs")
    print(f"{'backend':<10} {'first read ms':>14} {'read ms':>9} {'read+write ms':>14} {'lock+unlock ms':>15}")
    results: dict[str, dict[str, float]] = {}
    directory = Path(mkdtemp(prefix="hepinfra-bench-state-"))
    results["local"] = measure(lambda: LocalBackend(directory), state, args.runs)
    with moto_process("bench-" + secrets.token_hex(8)) as moto, mock.patch.dict("os.environ", moto.env):
        spec = S3State(backend="s3", bucket=moto.bucket(), prefix="bench/")
        results["s3"] = measure(lambda: S3Backend(spec), state, args.runs)
    with postgres_cluster("bench-" + secrets.token_hex(8)) as server:
        pg = PostgresState(backend="postgres", schema=f"b_{uuid.uuid4().hex[:8]}")
        environ = {"HEPINFRA_STATE_PG": server.url}
        results["postgres"] = measure(lambda: PostgresBackend(pg, environ), state, args.runs)
    for name, row in results.items():
        cells = f"{row['first_read_ms']:>14.2f} {row['read_ms']:>9.2f} {row['read_write_ms']:>14.2f}"
        print(f"{name:<10} {cells} {row['lock_unlock_ms']:>15.2f}")
    emit({**results, "databases": args.databases, "state_kib": round(size / 1024)}, "state")  # type: ignore[dict-item]


if __name__ == "__main__":
    main()
