"""Output sinks: where rendered credentials go. One protocol (``base.Sink``), registered here.

Add a sink by implementing ``Sink`` and adding it to ``SINKS``; it must pass
``hepinfra.outputs.conformance``.
"""

from __future__ import annotations

from hepinfra.outputs.age import AgeSink
from hepinfra.outputs.aws import SecretsManagerSink, SsmSink
from hepinfra.outputs.base import RemoteSink, Sink
from hepinfra.outputs.dotenv import DotenvSink
from hepinfra.outputs.exec import ExecSink
from hepinfra.outputs.template import TemplateSink

SINKS: dict[str, Sink] = {  # files of the project
    "dotenv": DotenvSink(),
    "template": TemplateSink(),
    "age": AgeSink(),  # its write returns Written: a digest per key too
}
REMOTE_SINKS: dict[str, RemoteSink] = {  # secret stores, by API or command
    "exec": ExecSink(),
    "aws_secretsmanager": SecretsManagerSink(),
    "aws_ssm": SsmSink(),
}

__all__ = ["REMOTE_SINKS", "SINKS", "RemoteSink", "Sink"]
