"""Benchmark: CLI start-up, "before" (a commit) against "after" (this working tree), in one run.

Each tree is a copy in a temporary directory: "before" is ``git archive REV`` (default
``8291092``, the commit before the architecture change), "after" a copy of this checkout's
``hepinfra/`` and ``examples/`` as they are now (the header says whether they had uncommitted
edits), or ``git archive`` of ``--after REV``. Both are byte-compiled first (``compileall``, as a
wheel install leaves them) and imported through ``PYTHONPATH=<tree>`` in a child with a minimal
environment (PATH, HOME, PYTHONPATH only: no PYTHONDONTWRITEBYTECODE), with ``-s`` when the
dependencies import without the user site. Before anything is timed, each tree's child must
import ``hepinfra`` from that tree, not from the editable install.

Timed (wall time of the whole process; median of --runs, before and after alternating, after one
untimed warm-up each):

* ``python -c pass``, and the import floors: the base libraries the example needs, with and
  without Starlette and SQLite (``url: local`` serves the embedded hep.gg with them), and for
  each command the floor of exactly the libraries it imports (found by one untimed run);
* ``hepinfra --version``, run as the ``hepinfra`` executable runs it (``hepinfra.cli.entry``);
* ``plan --no-refresh --detailed-exitcode`` on ``examples/hepgg.yaml`` (``url: local``), in a
  copy per tree, after one ``apply --auto-approve`` there (exit 0: no changes);
* the same on a generated manifest of --databases databases (default 1,000; ``url: local``, one
  environment, each with a key in one dotenv file), after one apply. The embedded hep.gg allows
  100 databases (``LOCAL_SLOTS``): the set-up apply alone raises that limit, in its own process;
  the timed plans run unmodified (a --no-refresh plan lists, it creates nothing).

Run: python bench/startup_bench.py [--runs 15] [--before 8291092] [--after REV] [--databases 1000]
Results also in bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, median

REPO = Path(__file__).resolve().parent.parent
BASE_LIBS = "pydantic, yaml, httpx, jinja2, click, rich, deepdiff, cryptography"
RUN_TIMEOUT = 120  # seconds, one timed run
SETUP_TIMEOUT = 3600  # seconds, the set-up apply of the generated manifest

PY = [sys.executable]  # "-s" is added in main() when the dependencies import without the user site


def cli(*args: str) -> str:
    """The command as the ``hepinfra`` executable runs it: ``hepinfra.cli.entry`` (``main`` where a
    tree has no ``entry``, as before ``entry`` existed)."""
    return (
        f"import sys; sys.argv = ['hepinfra', *{list(args)!r}]; import hepinfra.cli as c; getattr(c, 'entry', c.main)()"
    )


def cli_unlimited_slots(*args: str) -> str:
    """The set-up apply of the generated manifest only: the embedded hep.gg's slot limit raised."""
    return "import hepinfra.emulator.local as local; local.LOCAL_SLOTS = 1_000_000; " + cli(*args)


def which_libraries(code: str) -> str:
    """``code``, printing on stderr at exit which of the floor's libraries it imported."""
    libs = [*BASE_LIBS.split(", "), "starlette", "sqlite3", "uvicorn"]
    report = f"print('LIBS', *[m for m in {libs!r} if m in sys.modules], file=sys.stderr)"
    return f"import atexit, sys; atexit.register(lambda: {report}); {code}"


def which_modules(code: str, tree: Path) -> str:
    """``code``, printing on stderr at exit every module it loaded that is not the tree's own
    hepinfra nor the standard library's: the third-party libraries as they were used (pydantic's
    lazily-loaded internals and Starlette's submodules included, which a bare ``import`` skips)."""
    report = (
        "print('MODS', *sorted(n for n, m in list(sys.modules.items()) "
        "if 'site-packages' in (getattr(m, '__file__', None) or '') and not n.startswith('hepinfra')), "
        "file=sys.stderr)"
    )
    return f"import atexit, sys; atexit.register(lambda: {report}); {code}"


def child_env(tree: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "PYTHONPATH": str(tree),
    }


def run(
    code: str, tree: Path, cwd: Path, timeout: float = RUN_TIMEOUT
) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    proc = subprocess.run(
        [*PY, "-c", code], cwd=cwd, env=child_env(tree), capture_output=True, text=True, timeout=timeout
    )
    return time.perf_counter() - started, proc


def check(proc: subprocess.CompletedProcess[str], expect: int, what: str) -> None:
    if proc.returncode != expect:
        raise SystemExit(
            f"{what}: exit {proc.returncode}, expected {expect}\n"
            f"--- stdout (tail)\n{proc.stdout[-2000:]}\n--- stderr (tail)\n{proc.stderr[-2000:]}"
        )


def manifest(n: int) -> str:
    lines = ["version: 1", "hepgg: {url: local}", "environments: {prod: {}}", "databases:"]
    for i in range(n):
        lines += [
            f"  db{i:04d}:",
            "    outputs:",
            "      - dotenv: out/.env",
            f'        keys: {{DB{i}_URL: "{{{{ db.connection_string }}}}"}}',
        ]
    return "\n".join(lines) + "\n"


def sh(args: list[str], **kw: Any) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=300, **kw).stdout.strip()


def archive(rev: str, into: Path) -> None:
    into.mkdir()
    git = subprocess.Popen(["git", "-C", str(REPO), "archive", rev, "hepinfra", "examples"], stdout=subprocess.PIPE)
    assert git.stdout is not None
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=git.stdout, check=True, timeout=300)
    git.stdout.close()
    if git.wait(300) != 0:
        raise SystemExit(f"git archive {rev} failed")


def make_trees(work: Path, before_rev: str, after_rev: str | None) -> dict[str, Path]:
    before, after = work / "before", work / "after"
    archive(before_rev, before)
    if after_rev:
        archive(after_rev, after)
    else:
        skip = shutil.ignore_patterns("__pycache__", ".hepinfra", "out")
        shutil.copytree(REPO / "hepinfra", after / "hepinfra", ignore=skip)
        shutil.copytree(REPO / "examples", after / "examples", ignore=skip)
    for tree in (before, after):
        sh([sys.executable, "-m", "compileall", "-q", str(tree / "hepinfra")])
    return {"before": before, "after": after}


@dataclass
class Case:
    label: str
    code: str
    cwd: dict[str, Path]  # per tree
    floor: str | None = None  # the case whose median "after minus floor" subtracts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--before", default="8291092", help="the commit measured as 'before'")
    parser.add_argument(
        "--after", default=None, help="a commit measured as 'after' (default: this working tree, as it is now)"
    )
    parser.add_argument("--databases", type=int, default=1000, help="databases in the generated manifest")
    parser.add_argument("--keep", action="store_true", help="keep the temporary trees and projects")
    args = parser.parse_args()

    rev = sh(["git", "-C", str(REPO), "rev-parse", "--short", f"{args.before}^{{commit}}"])
    if args.after:
        head, dirty = sh(["git", "-C", str(REPO), "rev-parse", "--short", f"{args.after}^{{commit}}"]), ""
    else:
        head = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--", "hepinfra", "examples"])
    work = Path(tempfile.mkdtemp(prefix="hepinfra-bench-startup-"))
    try:
        trees = make_trees(work, rev, head if args.after else None)
        floor_libs = f"import {BASE_LIBS}"
        floor_local = f"import {BASE_LIBS}, starlette, sqlite3"
        probe = [sys.executable, "-s", "-c", floor_local]
        if (
            subprocess.run(probe, env=child_env(trees["after"]), capture_output=True, timeout=RUN_TIMEOUT).returncode
            == 0
        ):
            PY.append("-s")
        for name, tree in trees.items():
            _, proc = run("import hepinfra; print(hepinfra.__file__)", tree, work)
            check(proc, 0, f"{name}: import hepinfra")
            where = Path(proc.stdout.strip()).resolve()
            if not where.is_relative_to(tree.resolve()):
                raise SystemExit(f"{name}: hepinfra imported from {where}, not from {tree}")
            _, proc = run(floor_local, tree, work)
            check(proc, 0, f"{name}: the import floor")

        examples, generated = {}, {}
        for name, tree in trees.items():
            examples[name] = work / f"{name}-example"
            shutil.copytree(tree / "examples", examples[name], ignore=shutil.ignore_patterns(".hepinfra", "out"))
            wall, proc = run(cli("apply", "-f", "hepgg.yaml", "--auto-approve"), tree, examples[name], timeout=600)
            check(proc, 0, f"{name}: apply of the example")
            print(f"set-up: {name} example applied in {wall:.1f} s", file=sys.stderr)
        for name, tree in trees.items():
            generated[name] = work / f"{name}-n{args.databases}"
            generated[name].mkdir()
            (generated[name] / "hepinfra.yaml").write_text(manifest(args.databases))
            apply = cli_unlimited_slots("apply", "--auto-approve", "--parallelism", "16")
            wall, proc = run(apply, tree, generated[name], timeout=SETUP_TIMEOUT)
            check(proc, 0, f"{name}: apply of {args.databases} databases")
            print(f"set-up: {name} {args.databases} databases applied in {wall:.1f} s", file=sys.stderr)

        plan = cli("plan", "--no-refresh", "--detailed-exitcode", "-f", "hepgg.yaml")
        plan_n = cli("plan", "--no-refresh", "--detailed-exitcode", "-f", "hepinfra.yaml")
        same = {name: work for name in trees}
        commands = [
            Case("hepinfra --version", cli("--version"), same, floor="python -c pass"),
            Case("plan --no-refresh, example", plan, examples, floor="floor: + starlette, sqlite3"),
            Case(f"plan --no-refresh, {args.databases:,} DBs", plan_n, generated, floor="floor: + starlette, sqlite3"),
        ]
        # which of the libraries each command imports (one untimed run each): the floor of its own libraries
        imported: dict[str, list[str]] = {}
        own: dict[str, str] = {}  # command -> the label of its own-libraries floor
        used: dict[str, str] = {}  # plan -> the label of the floor of every third-party module it loads
        floors = {
            "python -c pass": "pass",
            "floor: base libraries": floor_libs,
            "floor: + starlette, sqlite3": floor_local,
        }
        for case in commands:
            for name, tree in trees.items():
                _, proc = run(which_libraries(case.code), tree, case.cwd[name])
                check(proc, 0, f"{name}: {case.label}")
                found = [ln for ln in proc.stderr.splitlines() if ln.startswith("LIBS")]
                imported[f"{name}: {case.label}"] = found[-1].split()[1:] if found else []
            libs = imported[f"after: {case.label}"]
            own[case.label] = f"floor: libraries of {case.label}" if libs else "python -c pass"
            if libs:
                floors[own[case.label]] = f"import {', '.join(libs)}"
            if case.floor != "python -c pass":  # the plans: every third-party module they load
                _, proc = run(which_modules(case.code, trees["after"]), trees["after"], case.cwd["after"])
                check(proc, 0, f"after: {case.label}")
                mods = [ln for ln in proc.stderr.splitlines() if ln.startswith("MODS")][-1].split()[1:]
                used[case.label] = f"floor: modules of {case.label}"
                floors[used[case.label]] = f"import {', '.join([*mods, 'sqlite3'])}"
        cases = [Case(label, code, same) for label, code in floors.items()] + commands

        walls: dict[str, dict[str, list[float]]] = {}
        for case in cases:
            walls[case.label] = {name: [] for name in trees}
            for name, tree in trees.items():  # warm-up: the page cache, nothing else
                check(run(case.code, tree, case.cwd[name])[1], 0, f"{name}: {case.label}")
            for i in range(args.runs):
                for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
                    wall, proc = run(case.code, trees[name], case.cwd[name])
                    check(proc, 0, f"{name}: {case.label}")
                    walls[case.label][name].append(wall)

        ms = {label: {name: 1000 * median(v) for name, v in by.items()} for label, by in walls.items()}
        print(
            f"before {rev}, after {head}{' + uncommitted edits' if dirty else ''}; python {sys.version.split()[0]} "
            f"{' '.join(PY[1:])}; medians of {args.runs} runs (ms), wall of the whole process"
        )
        width = max(len(label) for label in ms)
        header = (
            f"{'command':<{width}} {'before':>7} {'after':>7} {'ratio':>6} {'after-floor':>11} {'after-own':>9} "
            f"{'after-used':>10}"
        )
        print(header)
        print("-" * len(header))
        results: dict[str, Any] = {
            "before": rev,
            "after": head,
            "after_dirty": bool(dirty),
            "python": sys.version.split()[0],
            "flags": PY[1:],
            "runs": args.runs,
        }
        for case in cases:
            b, a = ms[case.label]["before"], ms[case.label]["after"]
            row = f"{case.label:<{width}} {b:>7.0f} {a:>7.0f} {a / b:>6.2f}"
            if case.floor:
                row += f" {a - ms[case.floor]['after']:>11.0f} {a - ms[own[case.label]]['after']:>9.0f}"
                if case.label in used:
                    row += f" {a - ms[used[case.label]]['after']:>10.0f}"
            print(row)
            results[case.label] = {
                name: {
                    "median_ms": round(ms[case.label][name], 1),
                    "min_ms": round(1000 * min(walls[case.label][name]), 1),
                    "max_ms": round(1000 * max(walls[case.label][name]), 1),
                }
                for name in trees
            }
        print(
            "\nratio: after/before. after-floor: after minus the floor the brief names (--version: python -c pass;"
            "\nplans: the base libraries + starlette, sqlite3). after-own: after minus the floor of the libraries"
            "\nthat command imports, of: " + f"{BASE_LIBS}, starlette, sqlite3, uvicorn."
            "\nafter-used: after minus importing every third-party module the plan loads (pydantic's lazily"
            "\nloaded internals, Starlette's submodules) and sqlite3: hepinfra's own share."
            "\nImported by each command (of the libraries above):"
        )
        for key, libs in imported.items():
            print(f"  {key:<{width + 8}} {' '.join(libs) or '-'}")
        results["imports"] = imported
        emit(results, "startup")
    finally:
        if args.keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
