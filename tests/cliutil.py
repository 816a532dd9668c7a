"""Run the real CLI in-process (same entry point as the console script) against a test server."""

from __future__ import annotations

import contextlib
import io
import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from hepinfra.cli import main
from tests.conftest import ENV, Server, record_artifact


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def invoke(
    args: list[str],
    *,
    server: Server | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str = "",
    secret_ok: bool = False,
) -> Result:
    """Run ``hepinfra ARGS``. Its output joins the session's secret scan unless ``secret_ok``
    (only ``output``, which prints secrets on explicit request)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEPGG_")}
    if server is not None:
        environ.update(ENV, HEPGG_URL=server.url, HEPGG_ID_URL=server.url)
    environ.update(env or {})
    environ.pop("NO_COLOR", None)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    previous = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with (
            mock.patch.dict(os.environ, environ, clear=True),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            mock.patch("sys.stdin", io.StringIO(stdin)),
        ):
            try:
                main(args)
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        os.chdir(previous)
    if not secret_ok:
        record_artifact(f"hepinfra {' '.join(args)}", out.getvalue() + err.getvalue())
    return Result(code, out.getvalue(), err.getvalue())


def write_project(root: Path, manifest: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "hepinfra.yaml"
    path.write_text(textwrap.dedent(manifest))
    for name, content in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(content))
    return path


BASIC = """
version: 1
environments:
  prod: {}
databases:
  shop:
    engine: postgres
    rotate_every: 30d
    outputs:
      - dotenv: ".env.{{ env }}"
        keys:
          SHOP_DATABASE_URL: "{{ db.connection_string }}"
          SHOP_DB_PASSWORD: "{{ db.password }}"
      - template: shop.json.j2
        path: "deploy/{{ env }}/shop.json"
"""
BASIC_FILES = {"shop.json.j2": '{"url": {{ db.connection_string | json }}, "user": {{ db.user | json }}}\n'}
