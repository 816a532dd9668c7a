"""A resource kind and an output kind defined here, in the test suite, joined through the registries
(``hepinfra.kinds.register``, ``hepinfra.outputs.register``): plan and apply run them end to end
against the local hep.gg without any module of the package knowing them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from pydantic import Field

from hepinfra.apply.executor import now
from hepinfra.digests import Digester
from hepinfra.fsutil import atomic_write
from hepinfra.kinds import KINDS, Kind
from hepinfra.kinds import register as register_kind
from hepinfra.outputs import SINKS, SPECS, OutputSpec
from hepinfra.outputs import register as register_output
from hepinfra.outputs.base import existing_mode, observe_whole_file, remove_whole_file
from hepinfra.spec import EnvVarName, FileOutputBase, Ident, SpecModel
from hepinfra.state.model import JournalEntry
from hepinfra.values import Action, Change, Diagnostic, ObservedOutput, OutputTarget
from tests.cliutil import invoke, write_project

if TYPE_CHECKING:
    from hepinfra.kinds.rules import EnvInput
    from hepinfra.resolution import Resolution

# --- a kind: ``greetings``, a text declared in the manifest, rendered into outputs ------------------


class GreetingSpec(SpecModel):
    text: str = Field(min_length=1)
    environments: list[Ident] | None = None
    outputs: list[OutputSpec] = []


def declare(r: Resolution, env: str, key: str, context: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    spec = r.model.section("greetings")[key]
    text = r.render(spec.text, context, ("greetings", key, "text"))
    return {"name": key, "engine": "text", "rotate_every": None, "options": (("text", text),),
            "value": {"greeting": {"text": text}}}  # fmt: skip


def plan(here: EnvInput) -> tuple[list[Change], list[Diagnostic], set[str]]:
    return [here.render_or_noop(decl, None) for decl in here.declared("greetings")], [], set()


async def render(ex: Any, change: Change) -> Any:
    decl = ex.decl(change)
    paths = tuple(o.path for o in change.outputs)
    intent = JournalEntry(op="render", database=decl.ref, name=decl.key, started_at=now(), outputs=paths)
    await ex.journal(change, intent)
    text = dict(decl.options)["text"]
    failures, _ = await ex.finish(change, {"text": text}, text, intent, lambda s: s)
    return ex.outcome(change, f"rendered {len(paths)} output(s)", failures)


STEPS = {Action.RENDER: render}

GREETINGS = Kind(section="greetings", var="greeting", plan=plan, headline=lambda c: f"greeting ({c.action.value})",
                 steps=__name__, spec=GreetingSpec, declare=declare)  # fmt: skip


# --- an output kind: ``jsonfile``, the keys as one JSON object in a file of their own ---------------


class JsonFileOutput(FileOutputBase):
    kind: ClassVar[str] = "jsonfile"
    claims: ClassVar[str] = "whole"

    jsonfile: str = Field(min_length=1)
    keys: dict[EnvVarName, str] = Field(min_length=1)

    def resolve(
        self, r: Resolution, base: tuple[str | int, ...], context: dict[str, Any], value_context: dict[str, Any]
    ) -> OutputTarget:
        node: tuple[str | int, ...] = (*base, "jsonfile")
        path, real = r.check_path(r.render(self.jsonfile, context, node), self, node)
        for key, source in self.keys.items():
            r.dry_render(source, value_context, (*base, "keys", key))
        definition = {"kind": "jsonfile", "keys": sorted(self.keys.items()), "path": path, "mode": self.mode}
        return OutputTarget(kind="jsonfile", path=path, keys=tuple(self.keys.items()), template=None,
                            template_source=None, mode=int(self.mode, 8), allow_tracked=self.allow_tracked,
                            allow_outside=self.allow_outside, real=str(real), node=node,
                            definition_digest=hashlib.sha256(json.dumps(definition).encode()).hexdigest()[:32])  # fmt: skip


class JsonFileSink:
    kind = "jsonfile"

    def observe(self, file: Path, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        return observe_whole_file(file, digest)

    def write(self, file: Path, target: OutputTarget, context: dict[str, Any], digest: Digester, *,
              previous_keys: tuple[str, ...] = ()) -> str:  # fmt: skip
        from hepinfra.templates import render_string

        data = json.dumps({k: render_string(source, context) for k, source in target.keys}, sort_keys=True).encode()
        atomic_write(file, data, existing_mode(file, target.mode), sync_dir=False)
        return digest(data)

    def retire(self, file: Path, keys: tuple[str, ...]) -> None:
        remove_whole_file(file)


@pytest.fixture
def extended() -> Iterator[None]:
    register_kind(GREETINGS)
    register_output("jsonfile", JsonFileOutput, f"{__name__}:JsonFileSink")
    try:
        yield
    finally:
        del KINDS["greetings"]
        del SPECS["jsonfile"]
        SINKS.unregister("jsonfile")


MANIFEST = """
version: 1
hepgg: {url: local}
environments: {dev: {vars: {who: world}}}
databases:
  shop:
    engine: postgres
    outputs:
      - jsonfile: "out/{{ env }}/shop.json"
        keys: {URL: "{{ db.connection_string }}"}
greetings:
  hello:
    text: "hello {{ vars.who }}"
    outputs:
      - jsonfile: "out/{{ env }}/hello.json"
        keys: {GREETING: "{{ greeting.text }} from {{ env }}"}
      - dotenv: "out/{{ env }}/.env"
        keys: {GREETING: "{{ greeting.text }}"}
"""


def test_a_kind_and_an_output_from_outside_the_package_plan_and_apply(extended: None, tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", MANIFEST)
    assert invoke(["validate", "-f", str(project)]).code == 0
    first = invoke(["plan", "-f", str(project), "--json", "--no-refresh"])
    assert first.code == 0, first.err
    actions = {c["address"]: c["action"] for c in first.json()["changes"]}
    assert actions == {"dev/databases.shop": "create", "dev/greetings.hello": "render"}
    applied = invoke(["apply", "-f", str(project), "--auto-approve"])
    assert applied.code == 0, applied.out + applied.err
    out = tmp_path / "p/out/dev"
    assert json.loads((out / "hello.json").read_text()) == {"GREETING": "hello world from dev"}
    assert json.loads((out / "shop.json").read_text())["URL"].startswith("postgresql://")
    assert (out / ".env").read_text() == "GREETING='hello world'\n"
    assert (out / "hello.json").stat().st_mode & 0o777 == 0o600
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"]).code == 0  # converged
    (out / "hello.json").write_text("{}")  # drift in the new output kind is seen and repaired
    again = invoke(["plan", "-f", str(project), "--detailed-exitcode"])
    assert again.code == 2 and "dev/greetings.hello" in again.out
    assert invoke(["apply", "-f", str(project), "--auto-approve"]).code == 0
    assert json.loads((out / "hello.json").read_text()) == {"GREETING": "hello world from dev"}


def test_an_unknown_key_of_the_new_output_is_a_located_error(extended: None, tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "p",
        MANIFEST.replace('keys: {GREETING: "{{ greeting.text }} from', 'kyes: {GREETING: "{{ greeting.text }} from'),
    )
    result = invoke(["validate", "-f", str(project)])
    assert (
        result.code == 1
        and ":16:9: greetings.hello.outputs[0].kyes: unknown key 'kyes' (did you mean 'keys'?)" in result.err
    )


def test_without_registration_the_section_is_unknown(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", MANIFEST)
    result = invoke(["validate", "-f", str(project)])
    assert result.code == 1 and "unknown key 'greetings'" in result.err
