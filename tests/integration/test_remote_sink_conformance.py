"""The remote-sink conformance suite (hepinfra.outputs.conformance.REMOTE_CHECKS) on every kind in
REMOTE_SINKS: exec against a real stand-in store process, Secrets Manager and SSM against moto in
server mode over real HTTP."""

from __future__ import annotations

import json
import stat
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hepinfra.outputs import REMOTE_SINKS
from hepinfra.outputs import conformance as oc
from hepinfra.values import OutputTarget
from tests.integration.test_aws_outputs import client
from tests.integration.test_exec_sink import STORE
from tests.servers import Moto


def _target(kind: str, path: str, keys: tuple[str, ...], **extra: Any) -> OutputTarget:
    return OutputTarget(kind=kind, path=path, keys=oc._remote_keys(*keys), template=None, template_source=None,  # type: ignore[arg-type]
                        mode=0o600, allow_tracked=False, allow_outside=False, definition_digest="d", **extra)  # fmt: skip


@pytest.fixture(params=sorted(REMOTE_SINKS))
def remote(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Any, Callable[..., OutputTarget], Callable[..., None]]]:
    kind = request.param
    run = uuid.uuid4().hex[:8]
    if kind == "exec":
        script = tmp_path / "bin" / "store"
        script.parent.mkdir()
        script.write_text(STORE.replace("#!PYTHON", "#!" + sys.executable))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)

        def make(name: str, keys: tuple[str, ...]) -> OutputTarget:
            argv = (str(script), "write", f"{run}-{name}")
            return _target("exec", "exec:" + " ".join(argv), keys, argv=argv,
                           read_argv=(str(script), "read", f"{run}-{name}"), cwd=str(tmp_path), timeout=10)  # fmt: skip

        def tamper(target: OutputTarget, key: str, value: str) -> None:
            file = tmp_path / "vault" / f"{target.argv[2]}.json"
            file.write_text(json.dumps({**json.loads(file.read_text()), key: value}))

        yield REMOTE_SINKS[kind], make, tamper
        return
    moto: Moto = request.getfixturevalue("moto_server")
    patch = pytest.MonkeyPatch()
    for name, value in moto.env.items():
        patch.setenv(name, value)
    env = dict(moto.env)
    if kind == "aws_secretsmanager":

        def make(name: str, keys: tuple[str, ...]) -> OutputTarget:
            return _target(kind, f"aws_secretsmanager:conf-{run}/{name}", keys)

        def tamper(target: OutputTarget, key: str, value: str) -> None:
            sm = client(env, "secretsmanager")
            name = target.path.split(":")[-1]
            there = json.loads(sm.get_secret_value(SecretId=name)["SecretString"])
            sm.put_secret_value(SecretId=name, SecretString=json.dumps({**there, key: value}))

    else:

        def make(name: str, keys: tuple[str, ...]) -> OutputTarget:
            return _target(kind, f"aws_ssm:/conf-{run}/{name}/", keys)

        def tamper(target: OutputTarget, key: str, value: str) -> None:
            client(env, "ssm").put_parameter(Name=target.path.split(":")[-1] + key, Value=value,
                                             Type="SecureString", Overwrite=True)  # fmt: skip

    yield REMOTE_SINKS[kind], make, tamper
    patch.undo()


@pytest.mark.parametrize("check", oc.REMOTE_CHECKS, ids=lambda c: c.__name__)
def test_remote_sink_conformance(check: Callable[..., None], remote: tuple[Any, Any, Any]) -> None:
    check(*remote)
