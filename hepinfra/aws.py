"""AWS clients for everything hepinfra reaches in AWS (the s3 state backend, the Secrets Manager
and SSM outputs): one place for boto3's default chain, timeouts, retries and failure wording.

Owns: making a client (credentials from the default chain, registered with the redactor; the
endpoint from AWS_ENDPOINT_URL or the service's own AWS_ENDPOINT_URL_<SERVICE>; standard
retries, so throttling is retried with backoff) and one line per failure (no credentials,
access denied, refused credentials, unreachable, a missing KMS key, anything else by its code).
Must not: import boto3 before it is used, or put a credential or a value in a message.
"""

from __future__ import annotations

import os
from typing import Any

from hepinfra.errors import HepinfraError

_DENIED = {"AccessDenied", "AccessDeniedException", "AllAccessDisabled", "403", "Forbidden"}
_REFUSED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidToken",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "TokenRefreshRequired",
}
_ENDPOINT_VARS = {"s3": "AWS_ENDPOINT_URL_S3", "secretsmanager": "AWS_ENDPOINT_URL_SECRETS_MANAGER",
                  "ssm": "AWS_ENDPOINT_URL_SSM"}  # fmt: skip


class AwsError(HepinfraError):
    """One line naming the place and the cause."""


def endpoint(service: str) -> str | None:
    return os.environ.get(_ENDPOINT_VARS.get(service, "")) or os.environ.get("AWS_ENDPOINT_URL")


def make_client(service: str, region: str | None, where: str, *, path_style: bool = False, extra: str = "aws") -> Any:
    """A boto3 client from the default chain; AwsError (one line, ``where`` first) when it cannot be
    (``extra``: the hepinfra extra that installs boto3 for this use, named when it is missing)."""
    from hepinfra.extras import require

    boto3 = require("boto3", where, extra)
    require("botocore", where, extra)
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    from hepinfra.safety.redact import register

    quiet_botocore()
    try:
        session = boto3.session.Session(region_name=region)
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        raise AwsError(f"{where}: cannot read the AWS configuration: {type(exc).__name__}") from None
    if credentials is None:
        raise AwsError(f"{where}: no AWS credentials found", hint=NO_CREDENTIALS)
    frozen = credentials.get_frozen_credentials()
    register(frozen.secret_key or "", frozen.token or "")
    custom = endpoint(service)
    config = Config(
        connect_timeout=5,
        read_timeout=15,
        retries={"max_attempts": _attempts(), "mode": "standard"},  # throttling: retried with backoff
        s3={"addressing_style": "path"} if path_style and custom else {},
    )
    try:
        return session.client(service, config=config)
    except (BotoCoreError, ValueError) as exc:
        raise AwsError(f"{where}: cannot make an AWS client: {endpoint_problem(exc, custom)}") from None


def _attempts() -> int:
    """AWS_MAX_ATTEMPTS when set (AWS's own setting), else 5: throttling and dropped connections are
    retried with backoff, an unreachable endpoint fails within about 15 s."""
    try:
        return max(1, min(20, int(os.environ.get("AWS_MAX_ATTEMPTS", "") or 5)))
    except ValueError:
        return 5


def quiet_botocore() -> None:
    """botocore logs request and response bodies (secret values) at DEBUG: such records are never
    made, whatever logging a caller configured."""
    import logging

    for name in ("botocore", "boto3", "s3transfer"):
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


NO_CREDENTIALS = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an IAM role"


def endpoint_problem(exc: Exception, custom: str | None) -> str:
    from hepinfra.safety.redact import redact

    if custom and isinstance(exc, ValueError):
        return f"the endpoint {redact(custom)[:100]!r} (AWS_ENDPOINT_URL) is not a valid URL"
    return f"{type(exc).__name__}: {redact(str(exc))[:200]}"


def code_of(exc: Any) -> str:
    answer = getattr(exc, "response", None) or {}
    return str(answer.get("Error", {}).get("Code", "") or answer.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def failure(exc: Exception, where: str, service: str, *, denied_hint: str = "") -> AwsError:
    """One line for any boto3/botocore failure; never the value being written."""
    from botocore import exceptions as bx

    from hepinfra.safety.redact import redact

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return AwsError(f"{where}: no AWS credentials found", hint=NO_CREDENTIALS)
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError):
        url = getattr(exc, "kwargs", {}).get("endpoint_url", "") or endpoint(service) or service
        return AwsError(f"{where}: cannot reach {url}: {type(exc).__name__}")
    if isinstance(exc, bx.ClientError):
        code = code_of(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        if code in _DENIED:
            return AwsError(f"{where}: access denied", hint=denied_hint or None)
        if code in _REFUSED:
            return AwsError(f"{where}: the AWS credentials were refused ({code})")
        if code in ("ThrottlingException", "Throttling", "TooManyUpdates", "SlowDown"):
            return AwsError(f"{where}: throttled by AWS ({code}), still after retries with backoff")
        if code in ("KMSInvalidStateException", "KMSNotFoundException", "NotFoundException") or "KMS" in code:
            return AwsError(f"{where}: the KMS key cannot be used ({code})")
        return AwsError(f"{where}: {redact(code)[:60]} (HTTP {status})")
    if isinstance(exc, ValueError):
        return AwsError(f"{where}: {endpoint_problem(exc, endpoint(service))}")
    return AwsError(f"{where}: {type(exc).__name__}: {redact(str(exc))[:200]}")
