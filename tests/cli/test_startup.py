"""``hepinfra --version`` stays light: no heavy module is imported."""

from __future__ import annotations

import subprocess
import sys

HEAVY = [
    "httpx",
    "pydantic",
    "starlette",
    "uvicorn",
    "jinja2",
    "rich",
    "yaml",
    "deepdiff",
    "cryptography",
    "sqlite3",
    "psycopg",
    "pymysql",
    "boto3",
]


def test_version_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from hepinfra.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["hepinfra, version 0.1.0", "[]"]
