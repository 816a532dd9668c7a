"""The AWS outputs: Secrets Manager (one secret: a JSON object of the keys, or one plain value)
and SSM Parameter Store (one SecureString parameter per key under a prefix).

Owns: the calls, idempotent writes (PutSecretValue with a ClientRequestToken derived from the
write; PutParameter with Overwrite), reading back for drift (GetSecretValue; GetParameters
WithDecryption), removing keys the manifest no longer declares, and retiring what hepinfra
provably wrote (only values whose keyed digests match the record).
- A target's ``path`` names it: ``aws_secretsmanager:[REGION:]NAME`` or ``aws_ssm:[REGION:]PREFIX``
  (neither a secret name nor a parameter name may hold ':'), so a record alone can reach it again.
- Secrets Manager keeps keys that are not hepinfra's: a write merges into the JSON object there.
The two outputs' schema and resolution live here too (``AwsSecretsManagerOutput``, ``AwsSsmOutput``).
Must not: put a value in a message; create anything but the named secret or parameters.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field, StringConstraints, model_validator

from hepinfra.aws import AwsError, code_of, failure, make_client
from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.outputs.base import Written, delivered, observed, render_keys
from hepinfra.safety.paths import shown
from hepinfra.spec import ARGV_VARIABLES, EnvVarName, OutputSpecBase, definition_digest
from hepinfra.values import ObservedOutput, OutputTarget

if TYPE_CHECKING:
    from hepinfra.resolution import Resolution

PLAIN = "SecretString"  # the key name of a plain-value secret (``value:`` instead of ``keys:``)
_TOKEN_SPACE = uuid.UUID("8d1b4c02-6a43-4e0b-9d0c-6b2f0c1e7a55")


def locate(path: str) -> tuple[str | None, str]:
    """(region or None, name) from ``kind:[REGION:]NAME``."""
    parts = path.split(":")
    return (parts[1], parts[2]) if len(parts) == 3 else (None, parts[1])


_CLIENTS: dict[Any, Any] = {}


def _clients(service: str, region: str | None, where: str) -> Any:
    """One client per service, region and AWS configuration (the AWS_* variables) for this process:
    made once per run, not per write."""
    import os

    key = (service, region, frozenset((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = make_client(service, region, where)
    return client


class SecretsManagerSink:
    kind = "aws_secretsmanager"

    def _client(self, target: OutputTarget) -> Any:
        return _clients("secretsmanager", locate(target.path)[0], target.path)

    def _state(self, target: OutputTarget) -> tuple[str, str | None]:
        """("missing" | "deleted" | "there", the SecretString)."""
        client = self._client(target)
        name = locate(target.path)[1]
        try:
            answer = client.get_secret_value(SecretId=name)
        except Exception as exc:
            code = code_of(exc)
            if code == "ResourceNotFoundException":
                return "missing", None
            if code == "InvalidRequestException":  # scheduled for deletion
                return "deleted", None
            raise failure(exc, target.path, "secretsmanager") from None
        found = answer.get("SecretString")
        return "there", str(found) if found is not None else None

    def _current(self, target: OutputTarget) -> str | None:
        return self._state(target)[1]

    def write(
        self,
        target: OutputTarget,
        context: dict[str, Any],
        digest: Digester,
        *,
        previous_keys: tuple[str, ...] = (),
        recorded: dict[str, str] | None = None,
    ) -> Written:
        values = render_keys(target, context)
        state, there = self._state(target)
        client = self._client(target)
        name = locate(target.path)[1]
        if state == "deleted":  # an output hepinfra retired, declared again: restore it, then write
            try:
                client.restore_secret(SecretId=name)
            except Exception as exc:
                raise failure(exc, target.path, "secretsmanager") from None
        if target.plain:
            if state == "there" and there and not (recorded or {}).get(PLAIN):
                raise OutputError(
                    f"{target.path}: the secret already holds a value hepinfra did not write; it will not replace it "
                    "(declare another name, or delete it first)"
                )
            body = values[PLAIN]
        else:
            merged: dict[str, Any] = {}
            if there is not None:
                found = _raw_object(there)
                if found is None:
                    raise OutputError(
                        f"{target.path}: the secret holds something other than a JSON object; hepinfra will not "
                        "replace it (use value: for a plain secret, or another name)"
                    )
                merged = found
            for key in previous_keys:  # hepinfra's keys no longer declared: only values it provably wrote
                if key in merged and (recorded or {}).get(key) == digest(_text(merged[key])):
                    del merged[key]
            merged.update(values)
            body = json.dumps(merged, sort_keys=True, ensure_ascii=False)
        token = str(uuid.uuid5(_TOKEN_SPACE, f"{name}\0{digest(body)}\0{uuid.uuid4()}"))  # one per write
        try:
            if state == "missing":
                extra = {"KmsKeyId": target.kms_key_id} if target.kms_key_id else {}
                try:
                    client.create_secret(
                        Name=name,
                        SecretString=body,
                        ClientRequestToken=token,
                        Tags=[{"Key": "managed-by", "Value": "hepinfra"}],
                        **extra,
                    )
                except Exception as exc:
                    if code_of(exc) != "ResourceExistsException":  # another run created it meanwhile
                        raise
                    client.put_secret_value(SecretId=name, SecretString=body, ClientRequestToken=token)
            else:
                client.put_secret_value(SecretId=name, SecretString=body, ClientRequestToken=token)
        except Exception as exc:
            raise failure(exc, target.path, "secretsmanager") from None
        return delivered(values, digest)

    def observe(self, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        try:
            there = self._current(target)
        except AwsError as exc:
            return ObservedOutput(exists=True, problem=f"cannot read it back: {exc.message}")
        if there is None:
            return ObservedOutput(exists=False)
        if target.plain:
            values = {PLAIN: there}
        else:
            found = _raw_object(there) or {}
            values = {k: _text(v) for k, v in found.items() if k in keys}
        return observed(values, digest)

    def retire(
        self, target: OutputTarget, keys: tuple[str, ...], recorded: dict[str, str], digest: Digester
    ) -> str | None:
        """Only values whose keyed digests match the record go (a record can be edited: proof first)."""
        state, there = self._state(target)
        if state != "there" or there is None:
            return None
        left = "left in place (it is not provably what hepinfra wrote; remove hepinfra's keys by hand if unused)"
        client = self._client(target)
        name = locate(target.path)[1]
        if keys == (PLAIN,):
            if not recorded.get(PLAIN) or recorded[PLAIN] != digest(there):
                return left
            rest: dict[str, Any] | None = None
        else:
            found = _raw_object(there)
            proven = found is not None and all(k in found and recorded.get(k) == digest(_text(found[k])) for k in keys)
            if found is None or not keys or not proven:
                return left
            rest = {k: v for k, v in found.items() if k not in keys}
        try:
            if rest:
                client.put_secret_value(SecretId=name, SecretString=json.dumps(rest, sort_keys=True))
            else:  # nothing but hepinfra's: scheduled for deletion (restorable for 30 days)
                client.delete_secret(SecretId=name, RecoveryWindowInDays=30)
        except Exception as exc:
            raise failure(exc, target.path, "secretsmanager") from None
        return None


class SsmSink:
    kind = "aws_ssm"

    def _client(self, target: OutputTarget) -> Any:
        return _clients("ssm", locate(target.path)[0], target.path)

    def _names(self, target: OutputTarget, keys: tuple[str, ...]) -> dict[str, str]:
        prefix = locate(target.path)[1]
        return {f"{prefix}{k}": k for k in keys}

    def _read(self, target: OutputTarget, keys: tuple[str, ...]) -> dict[str, str]:
        """key -> value of the parameters there now (missing ones absent)."""
        names = self._names(target, keys)
        client = self._client(target)
        found: dict[str, str] = {}
        ordered = sorted(names)
        for start in range(0, len(ordered), 10):  # GetParameters takes 10 names at a time
            try:
                answer = client.get_parameters(Names=ordered[start : start + 10], WithDecryption=True)
            except Exception as exc:
                raise failure(exc, target.path, "ssm") from None
            for parameter in answer.get("Parameters", []):
                found[names[parameter["Name"]]] = parameter["Value"]
        return found

    def write(
        self,
        target: OutputTarget,
        context: dict[str, Any],
        digest: Digester,
        *,
        previous_keys: tuple[str, ...] = (),
        recorded: dict[str, str] | None = None,
    ) -> Written:
        values = render_keys(target, context)
        client = self._client(target)
        extra = {"KeyId": target.kms_key_id} if target.kms_key_id else {}
        for name, key in sorted(self._names(target, tuple(values)).items()):
            try:
                client.put_parameter(Name=name, Value=values[key], Type="SecureString", Overwrite=True, **extra)
            except Exception as exc:
                raise failure(exc, f"{target.path}{key}", "ssm") from None
        stale = tuple(k for k in previous_keys if k not in values)
        there = self._read(target, stale) if stale else {}
        proven = tuple(k for k, v in there.items() if (recorded or {}).get(k) == digest(v))  # only what it wrote
        gone = sorted(self._names(target, proven))
        for start in range(0, len(gone), 10):
            try:
                client.delete_parameters(Names=gone[start : start + 10])
            except Exception as exc:
                raise failure(exc, target.path, "ssm") from None
        return delivered(values, digest)

    def observe(self, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        try:
            values = self._read(target, keys)
        except AwsError as exc:
            return ObservedOutput(exists=True, problem=f"cannot read it back: {exc.message}")
        return observed(values, digest)

    def retire(
        self, target: OutputTarget, keys: tuple[str, ...], recorded: dict[str, str], digest: Digester
    ) -> str | None:
        there = self._read(target, keys)
        ours = [k for k, v in there.items() if recorded.get(k) == digest(v)]
        if len(ours) != len(there) or not recorded:
            return "some parameters changed since hepinfra wrote them; left in place (remove them by hand if unused)"
        names = sorted(self._names(target, tuple(ours)))
        for start in range(0, len(names), 10):
            try:
                self._client(target).delete_parameters(Names=names[start : start + 10])
            except Exception as exc:
                raise failure(exc, target.path, "ssm") from None
        return None


def _raw_object(text: str) -> dict[str, Any] | None:
    """A secret's JSON object as stored (values of any type), or None when it is not one."""
    try:
        found = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return found if isinstance(found, dict) else None


def _text(value: Any) -> str:
    """A value as hepinfra digests it (its own values are strings)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# --- the manifest's ``aws_secretsmanager:`` and ``aws_ssm:`` outputs ------------------------------

_AWS_REGION = r"^[a-z]{2}(-[a-z0-9]+){1,4}$"
_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
_PARAMETER_PREFIX = re.compile(r"[A-Za-z0-9_./-]{1,1000}")


class _AwsOutput(OutputSpecBase):
    kind: ClassVar[str]
    remote: ClassVar[bool] = True
    claims: ClassVar[str] = "remote"  # nothing of the project

    region: Annotated[str, StringConstraints(pattern=_AWS_REGION)] | None = None  # else the default chain
    kms_key_id: str | None = Field(default=None, min_length=1, max_length=2048)

    def _name_source(self) -> str:
        raise NotImplementedError

    def _check_name(self, r: Resolution, name: str, node: tuple[str | int, ...]) -> None:
        raise NotImplementedError

    def resolve(
        self, r: Resolution, base: tuple[str | int, ...], context: dict[str, Any], value_context: dict[str, Any]
    ) -> OutputTarget:
        """Its secret name or parameter prefix rendered now, its values dry-run."""
        from hepinfra.extras import missing

        kind = self.kind
        node = (*base, kind)
        problem = missing("boto3", f"the {kind} output", "aws")
        if problem:
            raise r.error(node, problem)
        source = self._name_source()
        r.refuse_secrets_in_argv(source, node, what="a secret or parameter name")
        name = r.render(source, {k: context[k] for k in ARGV_VARIABLES if k in context}, node)
        self._check_name(r, name, node)
        plain = self.value if isinstance(self, AwsSecretsManagerOutput) else None
        declared_keys = getattr(self, "keys", None)
        keys = tuple(declared_keys.items()) if declared_keys else (("SecretString", plain or ""),)
        for k, value_source in keys:
            where = (*base, "keys", k) if declared_keys else (*base, "value")
            r.dry_render(value_source, value_context, where)
        path = f"{kind}:{self.region + ':' if self.region else ''}{name}"
        definition = {"kind": kind, "name": name, "region": self.region, "keys": sorted(keys),
                      "kms_key_id": self.kms_key_id}  # fmt: skip
        return OutputTarget(
            kind=kind,
            path=path,
            keys=keys,
            template=None,
            template_source=None,
            mode=0o600,
            allow_tracked=False,
            allow_outside=False,
            definition_digest=definition_digest(definition),
            node=node,
            kms_key_id=self.kms_key_id,
            plain=plain is not None,
        )


class AwsSecretsManagerOutput(_AwsOutput):
    """One secret: a JSON object of the keys (merged with keys that are not hepinfra's), or one value."""

    kind: ClassVar[str] = "aws_secretsmanager"
    review_fields: ClassVar[tuple[str, ...]] = ("aws_secretsmanager", "region", "kms_key_id", "keys", "value")

    aws_secretsmanager: str = Field(min_length=1)  # the secret's name, a template (env, key, name, vars)
    keys: dict[EnvVarName, str] | None = Field(default=None, min_length=1)
    value: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_of(self) -> AwsSecretsManagerOutput:
        if (self.keys is None) == (self.value is None):
            raise ValueError("give either keys: (a JSON object) or value: (a plain string), not both or neither")
        return self

    def _name_source(self) -> str:
        return self.aws_secretsmanager

    @classmethod
    def remote_claims(cls, target: Any) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
        """One key of a secret, or a plain secret that no one writes keys of (regions aside: the same
        name with and without ``region:`` may be one secret)."""
        name = target.path.split(":")[-1]
        if target.plain:
            return [("sm-plain", name)], [("sm-plain", name), ("sm-keyed", name)]
        wanted = [("sm", name, key) for key, _ in target.keys]
        return [*wanted, ("sm-keyed", name)], [*wanted, ("sm-plain", name)]

    def _check_name(self, r: Resolution, name: str, node: tuple[str | int, ...]) -> None:
        if not _SECRET_NAME.fullmatch(name):
            raise r.error(node, f"secret name '{shown(name)}' is not valid: 1 to 512 letters, digits and /_+=.@- only")


class AwsSsmOutput(_AwsOutput):
    """One SecureString parameter per key: <prefix><KEY>."""

    kind: ClassVar[str] = "aws_ssm"
    review_fields: ClassVar[tuple[str, ...]] = ("aws_ssm", "region", "kms_key_id", "keys")

    aws_ssm: str = Field(min_length=1)  # the name prefix, a template (env, key, name, vars)
    keys: dict[EnvVarName, str] = Field(min_length=1)

    def _name_source(self) -> str:
        return self.aws_ssm

    @classmethod
    def remote_claims(cls, target: Any) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
        """One SSM parameter per key."""
        name = target.path.split(":")[-1]
        wanted: list[tuple[str, ...]] = [("ssm", name + key) for key, _ in target.keys]
        return wanted, wanted

    def _check_name(self, r: Resolution, name: str, node: tuple[str | int, ...]) -> None:
        longest = max(len(k) for k in (self.keys or {}))
        if (
            not _PARAMETER_PREFIX.fullmatch(name)
            or ("/" in name and not name.startswith("/"))
            or (name.lower().lstrip("/").startswith(("aws", "ssm")) or len(name) + longest > 1011)
        ):
            raise r.error(
                node,
                f"parameter prefix '{shown(name)}' is not valid: letters, digits and _.-/ only, starting with '/' "
                "when it has one, not starting with aws or ssm (reserved), names at most 1011 characters",
            )
