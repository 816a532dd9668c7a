"""Output sinks: where rendered credentials go. One protocol (``base.Sink``), registered here.

Add a sink by implementing ``Sink`` and adding it to ``SINKS``; it must pass
``hepinfra.outputs.conformance``.
"""

from __future__ import annotations

from hepinfra.outputs.base import RemoteSink, Sink
from hepinfra.outputs.dotenv import DotenvSink
from hepinfra.outputs.exec import ExecSink
from hepinfra.outputs.template import TemplateSink

SINKS: dict[str, Sink] = {"dotenv": DotenvSink(), "template": TemplateSink()}  # files of the project
REMOTE_SINKS: dict[str, RemoteSink] = {"exec": ExecSink()}  # secret stores, by API or command

__all__ = ["REMOTE_SINKS", "SINKS", "RemoteSink", "Sink"]
