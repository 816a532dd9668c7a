"""Benchmark: ``hepinfra apply`` of N creates against the emulator with added latency.

For each parallelism P, compares the execution phase (``elapsed_ms`` of the JSON summary)
with the ideal ceil(N/P) x latency, then rotates every database and reports the rotation
windows (rotate answer -> last output written). Median of --runs fresh worlds per P.
Run: python bench/apply_bench.py [--n 200] [--latency 50] [--parallelism 1,8,16] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, emulator, run_cli


def manifest(n: int) -> str:
    lines = ["version: 1", "environments: {prod: {}}", "databases:"]
    for i in range(n):
        lines += [
            f"  app{i:03d}:",
            "    outputs:",
            f"      - dotenv: env/app{i:03d}.env",
            '        keys: {DATABASE_URL: "{{ db.connection_string }}"}',
        ]
    return "\n".join(lines) + "\n"


def summary(stdout: str) -> dict:  # type: ignore[type-arg]
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--latency", type=float, default=50.0)
    parser.add_argument("--parallelism", default="1,8,16")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, object] = {"n": args.n, "latency_ms": args.latency}
    print(f"N={args.n}, latency {args.latency:g} ms")
    print(f"{'P':>3} {'ideal ms':>9} {'median ms':>10} {'ratio':>6} {'wall s':>7} {'rot. window median/max ms':>27}")
    for p in (int(x) for x in args.parallelism.split(",")):
        elapsed, walls, windows = [], [], []
        for _ in range(args.runs):
            with emulator("--slots", str(args.n + 10), "--latency", str(args.latency)) as url:
                root = Path(tempfile.mkdtemp(prefix="hepinfra-bench-apply-"))
                (root / "hepinfra.yaml").write_text(manifest(args.n))
                wall, _, proc = run_cli(["apply", "--auto-approve", "--json", "--parallelism", str(p)], url, root)
                assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
                elapsed.append(summary(proc.stdout)["elapsed_ms"])
                walls.append(wall)
                _, _, proc = run_cli(
                    [
                        "rotate",
                        "--auto-approve",
                        "--json",
                        "--parallelism",
                        str(p),
                        *[f"app{i:03d}" for i in range(args.n)],
                    ],
                    url,
                    root,
                )
                assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
                windows.extend(summary(proc.stdout)["rotation_windows_ms"].values())
        ideal = math.ceil(args.n / p) * args.latency
        med = statistics.median(elapsed)
        row = {
            "ideal_ms": ideal,
            "median_ms": round(med, 1),
            "ratio": round(med / ideal, 3),
            "median_wall_s": round(statistics.median(walls), 3),
            "rotation_window_median_ms": round(statistics.median(windows), 2),
            "rotation_window_max_ms": round(max(windows), 2),
        }
        results[f"p{p}"] = row
        print(
            f"{p:>3} {ideal:>9.0f} {med:>10.1f} {row['ratio']:>6.2f} {row['median_wall_s']:>7.2f} "
            f"{row['rotation_window_median_ms']:>13.2f} / {row['rotation_window_max_ms']:<10.2f}"
        )
    emit(results, "apply")


if __name__ == "__main__":
    main()
