"""Output kinds: where rendered credentials go. Each is one module holding its manifest schema (a
spec with ``kind``, ``remote`` and ``resolve``) and its sink (``base.Sink`` or ``base.RemoteSink``);
this registry lists them.

Add an output kind with ``register(kind, "module:Spec", "module:Sink")``: the manifest accepts it at
once (``OutputSpec`` is made from ``SPECS``), plan and apply reach its sink, and its sink must pass
``hepinfra.outputs.conformance``. A sink is made the first time an output of its kind is observed,
written or retired; its client library (boto3, pyrage) is imported only then.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar, Union

from pydantic import Discriminator, Tag

from hepinfra.outputs.age import AgeOutput
from hepinfra.outputs.aws import AwsSecretsManagerOutput, AwsSsmOutput
from hepinfra.outputs.base import RemoteSink, Sink
from hepinfra.outputs.dotenv import DotenvOutput
from hepinfra.outputs.exec import ExecOutput
from hepinfra.outputs.pgbouncer import PgBouncerOutput
from hepinfra.outputs.template import TemplateOutput
from hepinfra.safety.paths import inside
from hepinfra.values import OUTPUT_KINDS

if TYPE_CHECKING:
    from hepinfra.state.model import OutputRecord

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Output kind -> sink instance, each made (its module imported) on first use."""

    def __init__(self, where: Mapping[str, str]) -> None:
        self._where = dict(where)
        self._made: dict[str, T] = {}
        OUTPUT_KINDS.update(where)

    def __getitem__(self, kind: str) -> T:
        if kind not in self._made:
            module, _, name = self._where[kind].partition(":")
            self._made[kind] = getattr(importlib.import_module(module), name)()
        return self._made[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def register(self, kind: str, where: str) -> None:
        """Add a sink (``"module:Class"``): how an output kind defined outside the package joins."""
        self._where[kind] = where
        self._made.pop(kind, None)
        OUTPUT_KINDS.add(kind)

    def unregister(self, kind: str) -> None:
        self._where.pop(kind, None)
        self._made.pop(kind, None)
        OUTPUT_KINDS.discard(kind)


SINKS: Registry[Sink] = Registry(  # files of the project
    {
        "dotenv": "hepinfra.outputs.dotenv:DotenvSink",
        "template": "hepinfra.outputs.template:TemplateSink",
        "age": "hepinfra.outputs.age:AgeSink",  # its write returns Written: a digest per key too
        "pgbouncer": "hepinfra.outputs.pgbouncer:PgBouncerSink",  # and a cut-over (base.CutOver)
    }
)
REMOTE_SINKS: Registry[RemoteSink] = Registry(  # secret stores, by API or command
    {
        "exec": "hepinfra.outputs.exec:ExecSink",
        "aws_secretsmanager": "hepinfra.outputs.aws:SecretsManagerSink",
        "aws_ssm": "hepinfra.outputs.aws:SsmSink",
    }
)

# output kind -> its manifest schema, in the order an output's kind key is looked for
_BUILT_IN = (
    DotenvOutput,
    TemplateOutput,
    ExecOutput,
    AwsSecretsManagerOutput,
    AwsSsmOutput,
    AgeOutput,
    PgBouncerOutput,
)
SPECS: dict[str, type[Any]] = {spec.kind: spec for spec in _BUILT_IN}
# the order messages name them
_SHOWN = ("dotenv", "template", "age", "exec", "aws_secretsmanager", "aws_ssm", "pgbouncer")


def output_kind(value: Any) -> str | None:
    """The kind of an output as written: the first kind key it holds."""
    if isinstance(value, dict):
        for kind in SPECS:
            if kind in value:
                return kind
    return None


def remote_kinds() -> frozenset[str]:
    """Output kinds whose target is no file of the project (observed only by a refreshing plan)."""
    return frozenset(kind for kind, spec in SPECS.items() if spec.remote)


def local_kinds() -> frozenset[str]:
    """Output kinds that are plaintext files for the machine that runs apply (``dotenv``, ``template``):
    what ``--skip-local-outputs`` leaves out of a CI run, whose runner is thrown away."""
    return frozenset(kind for kind, spec in SPECS.items() if getattr(spec, "local", False))


def output_spec() -> Any:
    """The manifest's type of one output: a union of every registered spec, told apart by its kind key."""
    members = [Annotated[spec, Tag(kind)] for kind, spec in SPECS.items()]
    names = [*(k for k in _SHOWN if k in SPECS), *(k for k in SPECS if k not in _SHOWN)]
    return Annotated[
        Union[tuple(members)],  # noqa: UP007 (a union built from the registry)
        Discriminator(
            output_kind,
            custom_error_type="output_kind",
            custom_error_message=f"an output needs one of the keys: {', '.join(names)}",
        ),
    ]


def register(kind: str, spec: type[Any], sink: str, *, remote: bool = False) -> None:
    """Add an output kind defined outside the package: its spec class (a ``SpecModel`` with ``kind``,
    ``remote`` and ``resolve``) and its sink (``"module:Class"``). Manifests loaded afterwards accept it."""
    SPECS[kind] = spec
    (REMOTE_SINKS if remote else SINKS).register(kind, sink)


if TYPE_CHECKING:
    OutputSpec = Any
else:
    OutputSpec = output_spec()

__all__ = ["REMOTE_SINKS", "SINKS", "SPECS", "OutputSpec", "Registry", "RemoteSink", "Sink", "register", "retire_left"]


def retire_left(project_dir: Path, record: OutputRecord, secret: bool) -> str | None:
    """Why (``is ...``, said after the path) retire will leave this record's output in place and only
    list it, or None (it is deleted if hepinfra can prove it wrote it). State is writable by others,
    so a record alone never authorises a deletion: a file outside the project (its real path; even
    one an ``allow_outside`` output wrote) is never deleted, and nothing is where the environment's
    digests are keyed by a public constant (``secret`` false: only uploads): anyone can compute them."""
    if record.kind not in REMOTE_SINKS:
        top = Path(os.path.realpath(project_dir))
        real = Path(os.path.realpath(top / record.path))
        if not inside(real, top):
            return "is outside the project"
    if not secret:
        return (
            "is recorded in the state of an environment without a secret key (only uploads), "
            "so the record cannot prove hepinfra wrote it"
        )
    return None
