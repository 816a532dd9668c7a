"""The hepinfra exception tree: every error the tool raises on purpose.

Owns: the classes, their exit codes and their one-line rendering.
Must not: import anything heavy, or ever hold a secret in a message. Messages are
built from field names, statuses and the server's *message*, never from request
bodies, headers or credentials.

    HepinfraError                      exit 1; .message, .hint; str() is one line
    ├── UsageError                     bad flags, arguments or environment
    ├── ManifestError                  the manifest is wrong: file:line:col, key path
    ├── StateError                     a state file is unreadable or inconsistent
    │   └── LockError                  the state lock is held: names the holder
    ├── Interrupted                    Ctrl-C / SIGTERM mid-apply: what finished, was in flight, never started
    ├── PlanError                      a plan cannot be made or applied
    │   └── StalePlanError             a saved plan no longer matches state or remote
    ├── OutputError                    an output cannot be written safely
    └── ApiError                       talking to hep.gg failed: .service, .status, .code
        ├── TransportError             unreachable, timed out or connection dropped (after retries)
        │   └── AmbiguousResultError   a mutation may or may not have happened
        ├── ProtocolError              the response is not in the documented shape
        ├── AuthError                  401
        │   ├── NoCredentialsError     NO_KEY / "Please provide a username and token" /
        │   │                          "Missing bearer token"
        │   ├── BadCredentialsError    BAD_KEY / "Invalid username or token" / "Token revoked"
        │   └── KeyDisabledError       KEY_DISABLED
        ├── PaymentRequiredError       402
        │   └── OutOfSlotsError        OUT_OF_SLOTS
        ├── ForbiddenError             403 (account suspended or not allowed)
        │   └── AccessRequiredError    ACCESS_REQUIRED (uploader access revoked)
        ├── NotFoundError              404 NOT_FOUND
        ├── ConflictError              409
        │   └── NameTakenError         409 on create: the name exists on this account
        ├── BadRequestError            400
        │   ├── InvalidNameError       400 without code on create
        │   ├── EngineDisabledError    ENGINE_DISABLED
        │   ├── UnsupportedIdTypeError "ID Type <type> not supported."
        │   └── IdOptionError          a missing or out-of-range ID option
        ├── RateLimitedError           429 (after retries)
        └── ServerError                5xx (after retries)
"""

from __future__ import annotations

from typing import Any


def first_validation_error(exc: Any) -> str:
    """``loc: msg`` of a pydantic ValidationError's first error, never its input (it may be secret)."""
    err = exc.errors(include_input=False, include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{loc}: {err['msg']}"


class HepinfraError(Exception):
    """Base of every deliberate hepinfra error. ``str()`` is a single line."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = " ".join(message.split())  # one line, always
        self.hint = hint
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class UsageError(HepinfraError):
    """Bad command-line flags, arguments or environment variables."""


class ManifestError(HepinfraError):
    """A manifest problem, located as ``file:line:col: key.path: what is wrong``."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file, self.line, self.column, self.path = file, line, column, path
        where = ""
        if file is not None:
            where = file
            if line is not None:
                where += f":{line}"
                if column is not None:
                    where += f":{column}"
            where += ": "
        key = f"{path}: " if path else ""
        super().__init__(f"{where}{key}{message}", hint=hint)


class Interrupted(HepinfraError):
    """Ctrl-C or SIGTERM during an apply; the message says what was done, in flight, and not started."""


class StateError(HepinfraError):
    """A state file is unreadable, of an unknown version, or inconsistent."""


class LockError(StateError):
    """The state lock is held by someone else; the message names the holder."""


class PlanError(HepinfraError):
    """A plan cannot be made, read or applied."""


class StalePlanError(PlanError):
    """A saved plan no longer matches the state or the remote it was made against."""


class PlanChangedError(StalePlanError):
    """``apply --expect-fingerprint``: the plan made now is not the change set that was reviewed."""

    reason = "plan-changed"


class OutputError(HepinfraError):
    """An output cannot be written safely."""


class ApiError(HepinfraError):
    """A hep.gg API call failed.

    ``service`` is ``databases``, ``idgen`` or ``uploader``; ``status`` the HTTP status
    (None when no response arrived); ``code`` the machine code if the server sent one;
    ``server_message`` the server's human message, verbatim.
    """

    default_hint: str | None = None

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        status: int | None = None,
        code: str | None = None,
        server_message: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.service = service
        self.status = status
        self.code = code
        self.server_message = server_message
        super().__init__(message, hint=hint if hint is not None else self.default_hint)


class TransportError(ApiError):
    default_hint = "check HEPGG_URL / HEPGG_ID_URL and the network; the call was retried"


class AmbiguousResultError(TransportError):
    default_hint = "the next plan finds out what happened; nothing is retried blindly"


class ProtocolError(ApiError):
    default_hint = "the server answered outside the documented contract"


class AuthError(ApiError):
    pass


class NoCredentialsError(AuthError):
    default_hint = "set the credential in the environment (see README: Credentials)"


class BadCredentialsError(AuthError):
    default_hint = "the credential does not match any key on file; copy it again from the dashboard"


class KeyDisabledError(AuthError):
    default_hint = "the key was disabled, by you or by an account suspension; mint a new one in the dashboard"


class PaymentRequiredError(ApiError):
    pass


class OutOfSlotsError(PaymentRequiredError):
    default_hint = "free a slot in the dashboard or buy a pack (Top Up tab)"


class ForbiddenError(ApiError):
    default_hint = "the owning account is suspended or not allowed to use this app; contact support"


class AccessRequiredError(ForbiddenError):
    default_hint = "uploader access was revoked or suspended for the account; contact support"


class NotFoundError(ApiError):
    default_hint = "the database id is not one this key's account owns"


class ConflictError(ApiError):
    pass


class NameTakenError(ConflictError):
    default_hint = "the name is taken on this account; adopt it or pick another name"


class BadRequestError(ApiError):
    pass


class InvalidNameError(BadRequestError):
    default_hint = "names are 1-63 letters, digits, '_' or '-', starting with a letter or digit"


class EngineDisabledError(BadRequestError):
    default_hint = "this deployment does not offer that engine; choose another engine"


class UnsupportedIdTypeError(BadRequestError):
    default_hint = "types: uuid, nanoid, 2fa, license, words, snowflake, keypair, cuid"


class IdOptionError(BadRequestError):
    pass


class RateLimitedError(ApiError):
    default_hint = "hep.gg is rate limiting; lower --parallelism or try again later"


class ServerError(ApiError):
    default_hint = "hep.gg had a server error; try again later"
