"""The one place where hep.gg HTTP answers become hepinfra exceptions.

Owns: the table (service, status, code or message) -> exception class, and the one-line
message. Must not: include request bodies, headers or credentials in any message.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from hepinfra import errors as E
from hepinfra.safety.paths import shown

# (service, status, machine code or exact server message) -> class. Looked up most specific first.
_BY_DETAIL: dict[tuple[str, int, str], type[E.ApiError]] = {
    ("databases", 401, "NO_KEY"): E.NoCredentialsError,
    ("databases", 401, "BAD_KEY"): E.BadCredentialsError,
    ("databases", 401, "KEY_DISABLED"): E.KeyDisabledError,
    ("databases", 402, "OUT_OF_SLOTS"): E.OutOfSlotsError,
    ("databases", 404, "NOT_FOUND"): E.NotFoundError,
    ("databases", 400, "ENGINE_DISABLED"): E.EngineDisabledError,
    ("idgen", 401, "Please provide a username and token"): E.NoCredentialsError,
    ("idgen", 401, "Invalid username or token"): E.BadCredentialsError,
    ("uploader", 401, "Missing bearer token"): E.NoCredentialsError,
    ("uploader", 401, "Token revoked"): E.BadCredentialsError,
    ("uploader", 403, "ACCESS_REQUIRED"): E.AccessRequiredError,
}

_BY_STATUS: dict[tuple[str, int], type[E.ApiError]] = {
    ("databases", 400): E.InvalidNameError,  # the only documented 400 without a code
    ("databases", 409): E.NameTakenError,
    ("idgen", 400): E.IdOptionError,
}

_GENERIC: dict[int, type[E.ApiError]] = {
    400: E.BadRequestError,
    401: E.AuthError,
    402: E.PaymentRequiredError,
    403: E.ForbiddenError,
    404: E.NotFoundError,
    409: E.ConflictError,
    429: E.RateLimitedError,
}

SERVICE_NAMES = {"databases": "database API", "idgen": "ID Generator", "uploader": "uploader"}


def _body(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = json.loads(response.content)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def error_class(service: str, status: int, code: str | None, message: str | None) -> type[E.ApiError]:
    for detail in (code, message):
        if detail and (cls := _BY_DETAIL.get((service, status, detail))):
            return cls
    if service == "idgen" and status == 400 and message and message.startswith("ID Type "):
        return E.UnsupportedIdTypeError
    if cls := _BY_STATUS.get((service, status)):
        return cls
    if status >= 500:
        return E.ServerError
    return _GENERIC.get(status, E.ApiError)


def error_from_response(service: str, request: str, response: httpx.Response) -> E.ApiError:
    """Build the exception for a non-2xx answer. ``request`` is ``METHOD /path`` (no secrets)."""
    body = _body(response)
    message = body.get("error") if body else None
    code = body.get("code") if body else None
    message = message if isinstance(message, str) else None
    code = code if isinstance(code, str) else None
    cls = error_class(service, response.status_code, code, message)
    detail = " ".join(x for x in (code, message) if x) or response.reason_phrase or "no message"
    detail = shown(detail, 300)  # the server's words, as they are: but no terminal escapes, no novel
    text = f"hep.gg {SERVICE_NAMES.get(service, service)}: {request} returned {response.status_code}: {detail}"
    return cls(text, service=service, status=response.status_code, code=code, server_message=message)
