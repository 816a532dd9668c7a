"""Runs the repository's ``action.yml`` as GitHub's runner does for a composite action: each step's
``run:`` script with ``bash --noprofile --norc -eo pipefail``, its ``env:`` and the action's inputs
evaluated (``${{ inputs.X }}``, ``${{ github.* }}``, ``${{ steps.ID.outputs.X }}``), a fresh
``GITHUB_OUTPUT`` and ``GITHUB_STEP_SUMMARY`` file per step, ``GITHUB_ENV`` and
``GITHUB_EVENT_PATH`` for the job; the action's outputs from its ``outputs:`` map."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import record_artifact

REPO = Path(__file__).resolve().parents[2]
_EXPR = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


@dataclass
class Run:
    outputs: dict[str, str]
    logs: str
    summaries: str
    code: int
    files: dict[str, str] = field(default_factory=dict)


def parse_file_command(text: str) -> dict[str, str]:
    """GitHub's file-command format: ``name=value`` lines and ``name<<DELIM`` heredocs."""
    found: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            end = lines.index(delim, i + 1)
            found[name] = "\n".join(lines[i + 1 : end])
            i = end + 1
            continue
        if "=" in line:
            name, value = line.split("=", 1)
            found[name] = value
        i += 1
    return found


def evaluate(text: str, context: dict[str, Any]) -> str:
    def one(match: re.Match[str]) -> str:
        value: Any = context
        for part in match.group(1).split("."):
            value = value.get(part, "") if isinstance(value, dict) else ""
        return str(value)

    return _EXPR.sub(one, text)


def run_action(
    *,
    inputs: dict[str, str],
    event_name: str,
    event: dict[str, Any],
    workspace: Path,
    runner_temp: Path,
    env: dict[str, str],
    sha: str = "",
) -> Run:
    action = yaml.safe_load((REPO / "action.yml").read_text())
    job = workspace.parent / f"job-{uuid.uuid4().hex[:8]}"
    job.mkdir()
    event_path = job / "event.json"
    event_path.write_text(json.dumps(event))
    github_env = job / "github_env"
    github_env.write_text("")
    given = {name: inputs.get(name, spec.get("default", "")) for name, spec in action["inputs"].items()}
    context: dict[str, Any] = {
        "github": {
            "action_path": str(REPO),
            "token": env.get("GITHUB_TOKEN_FOR_ACTION", ""),
            "workspace": str(workspace),
        },
        "steps": {},
    }
    context["inputs"] = {k: evaluate(str(v), context) for k, v in given.items()}
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(job),
        "GITHUB_ACTIONS": "true",
        "CI": "true",
        "GITHUB_EVENT_NAME": event_name,
        "GITHUB_EVENT_PATH": str(event_path),
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_SHA": sha,
        "GITHUB_ENV": str(github_env),
        "RUNNER_TEMP": str(runner_temp),
        **{k: v for k, v in env.items() if k != "GITHUB_TOKEN_FOR_ACTION"},
    }
    logs, summaries, files = [], [], {}
    code = 0
    for index, step in enumerate(action["runs"]["steps"]):
        output = job / f"output-{index}"
        summary = job / f"summary-{index}"
        output.write_text("")
        summary.write_text("")
        script = job / f"step-{index}.sh"
        script.write_text(evaluate(step["run"], context))
        step_env = {**base_env, "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary)}
        step_env.update({k: evaluate(str(v), context) for k, v in (step.get("env") or {}).items()})
        cwd = workspace / evaluate(step.get("working-directory", "."), context)
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=cwd,
            env=step_env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        logs.append(f"--- step {index}: {step.get('name', '')}\n{proc.stdout}{proc.stderr}")
        summaries.append(summary.read_text())
        files[f"GITHUB_OUTPUT {index}"] = output.read_text()
        if "id" in step:
            context["steps"][step["id"]] = {"outputs": parse_file_command(output.read_text())}
        if proc.returncode != 0:
            code = proc.returncode
            break
    outputs = {name: evaluate(spec["value"], context) for name, spec in action["outputs"].items()}
    files["GITHUB_ENV"] = github_env.read_text()
    run = Run(outputs, "\n".join(logs), "\n".join(summaries), code, files)
    record_artifact(f"action {inputs.get('command')} logs", run.logs)
    record_artifact(f"action {inputs.get('command')} summaries", run.summaries)
    for name, text in files.items():
        record_artifact(f"action {name}", text)
    return run
