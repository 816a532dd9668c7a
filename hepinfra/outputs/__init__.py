"""Output sinks: where rendered credentials go. One protocol (``base.Sink``), registered here.

Add a sink by implementing ``Sink`` and adding it to ``SINKS``; it must pass
``hepinfra.outputs.conformance``.
"""

from __future__ import annotations

from hepinfra.outputs.base import Sink
from hepinfra.outputs.dotenv import DotenvSink
from hepinfra.outputs.template import TemplateSink

SINKS: dict[str, Sink] = {"dotenv": DotenvSink(), "template": TemplateSink()}

__all__ = ["SINKS", "Sink"]
