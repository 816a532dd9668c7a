"""Benchmark: ``hepinfra plan`` on N declared databases against the emulator (a separate process).

Prints, for N in (250, 500, 1000): API calls, median wall seconds and peak RSS for
``plan --no-refresh`` and ``plan`` (refresh), after one apply created everything.
Run: python bench/plan_bench.py [--runs 5] [--sizes 250,500,1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import clear_requests, emit, emulator, median, request_count, run_cli


def manifest(n: int) -> str:
    lines = ["version: 1", "environments: {prod: {}}", "databases:"]
    for i in range(n):
        lines += [
            f"  svc{i:04d}:",
            "    engine: postgres",
            "    rotate_every: 30d",
            "    outputs:",
            f"      - dotenv: env/svc{i:04d}.env",
            '        keys: {DATABASE_URL: "{{ db.connection_string }}", DB_PASSWORD: "{{ db.password }}"}',
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="250,500,1000")
    args = parser.parse_args()
    results = {}
    print(f"{'N':>5} {'mode':<12} {'API calls':>9} {'median s':>9} {'per DB ms':>9} {'peak MiB':>9}")
    for n in (int(s) for s in args.sizes.split(",")):
        with emulator("--slots", str(n + 10)) as url:
            root = Path(tempfile.mkdtemp(prefix="hepinfra-bench-plan-"))
            (root / "hepinfra.yaml").write_text(manifest(n))
            wall, _, proc = run_cli(["apply", "--auto-approve", "--parallelism", "16"], url, root)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            for mode, extra in (("--no-refresh", ["--no-refresh"]), ("refresh", [])):
                walls, peaks, calls = [], [], []
                for _ in range(args.runs):
                    clear_requests(url)
                    wall, peak, proc = run_cli(["plan", "--detailed-exitcode", *extra], url, root)
                    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
                    walls.append(wall)
                    peaks.append(peak)
                    calls.append(request_count(url))
                row = {
                    "api_calls": calls[0],
                    "median_s": round(median(walls), 3),
                    "min_s": round(min(walls), 3),
                    "peak_rss_mib": round(max(peaks) / 1024, 1),
                }
                results[f"{n}/{mode}"] = row
                print(
                    f"{n:>5} {mode:<12} {row['api_calls']:>9} {row['median_s']:>9.3f} "
                    f"{1000 * row['median_s'] / n:>9.3f} {row['peak_rss_mib']:>9.1f}"
                )
    emit(results, "plan")


if __name__ == "__main__":
    main()
