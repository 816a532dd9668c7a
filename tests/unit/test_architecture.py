"""The shape of the package: an import graph without cycles (imports inside functions count), plain
values at the bottom, and commands that import only what they use."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "hepinfra"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere: top level, inside a function, or for type
    checking only (a layer's types come from below it too)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_plain_values_import_nothing_of_hepinfra_above_them() -> None:
    assert import_graph()["hepinfra.values"] <= {"hepinfra"}


def test_no_module_over_600_lines_and_no_class_over_250() -> None:
    sizes: dict[str, int] = {}
    for name, path in _modules().items():
        text = path.read_text()
        sizes[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                sizes[f"{name}.{node.name}"] = node.end_lineno - node.lineno + 1  # type: ignore[operator]
    over = {n: s for n, s in sizes.items() if s > (250 if n.rpartition(".")[2][:1].isupper() else 600)}
    assert over == {}


def _imported(args: list[str], cwd: Path) -> list[str]:
    code = textwrap.dedent(
        f"""
        import json, sys
        from hepinfra.cli import main
        try:
            main({args!r})
        except SystemExit:
            pass
        sys.stderr.write(json.dumps(sorted(sys.modules)))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})  # fmt: skip
    return json.loads(proc.stderr.splitlines()[-1])


MANIFEST = """version: 1
hepgg: {url: "http://127.0.0.1:9"}
environments: {prod: {}}
databases:
  shop:
    outputs:
      - dotenv: .env
        keys: {SHOP_URL: "{{ db.connection_string }}"}
"""
NEVER = ("hepinfra.emulator", "starlette", "uvicorn", "sqlite3", "boto3", "pyrage", "psycopg", "pymysql")


def test_version_validate_and_plan_import_only_what_they_use(tmp_path: Path) -> None:
    (tmp_path / "hepinfra.yaml").write_text(MANIFEST)
    version = _imported(["--version"], tmp_path)
    commands = ("hepinfra.cli.plan_apply", "hepinfra.cli.state", "hepinfra.cli.output_run", "hepinfra.cli.emulator")
    assert not [m for m in version if m.startswith(("hepinfra.manifest", *commands, "pydantic", "yaml"))]
    validate = _imported(["validate"], tmp_path)
    assert "hepinfra.manifest" in validate and "hepinfra.cli.plan_apply" in validate
    assert "httpx" not in validate  # (an entry point may load httpx._main alone: not the client)
    assert not [m for m in validate if m.startswith((*NEVER, "hepinfra.cli.state", "hepinfra.hepgg"))]
    plan = _imported(["plan", "--no-refresh"], tmp_path)
    assert "hepinfra.plan" in plan
    assert not [m for m in plan if m.startswith(NEVER)]  # a sink's client library loads when it is used
    assert not [m for m in plan if m.startswith(("hepinfra.cli.state", "hepinfra.cli.emulator", "hepinfra.verify"))]


def test_the_local_hepgg_is_imported_only_for_url_local(tmp_path: Path) -> None:
    (tmp_path / "hepinfra.yaml").write_text(MANIFEST.replace('"http://127.0.0.1:9"', "local"))
    assert "hepinfra.emulator.app" in _imported(["plan", "--no-refresh"], tmp_path)
