"""Output sinks: where rendered credentials go. One protocol (``base.Sink``), registered here.

Add a sink by implementing ``Sink`` and adding it to ``SINKS`` (``"module:Class"``); it must pass
``hepinfra.outputs.conformance``. A sink's module is imported the first time an output of its kind
is observed, written or retired, so a run imports only the sinks its manifest uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from hepinfra.outputs.base import RemoteSink, Sink

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Output kind -> sink instance, each made (its module imported) on first use."""

    def __init__(self, where: Mapping[str, str]) -> None:
        self._where = dict(where)
        self._made: dict[str, T] = {}

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


SINKS: Registry[Sink] = Registry(  # files of the project
    {
        "dotenv": "hepinfra.outputs.dotenv:DotenvSink",
        "template": "hepinfra.outputs.template:TemplateSink",
        "age": "hepinfra.outputs.age:AgeSink",  # its write returns Written: a digest per key too
    }
)
REMOTE_SINKS: Registry[RemoteSink] = Registry(  # secret stores, by API or command
    {
        "exec": "hepinfra.outputs.exec:ExecSink",
        "aws_secretsmanager": "hepinfra.outputs.aws:SecretsManagerSink",
        "aws_ssm": "hepinfra.outputs.aws:SsmSink",
    }
)

__all__ = ["REMOTE_SINKS", "SINKS", "Registry", "RemoteSink", "Sink"]
