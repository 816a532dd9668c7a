"""The S3 state backend: ``<prefix><env>.json``, ``.json.backup`` and ``.lock`` in one bucket.

Owns: boto3 calls and turning their failures into one line naming the bucket and key.
- The lock is a ``PUT`` of ``<env>.lock`` with ``If-None-Match: *`` (S3 creates it only if it is
  absent), holding the holder's LockInfo; it is deleted on release with ``If-Match`` on its ETag.
- Each state write is a ``PUT`` with ``If-Match`` on the ETag read (``If-None-Match: *`` when
  there was none): a write that raced another is refused, never lost.
- The holder refreshes its lock object every refresh interval (``bounded.refresh_interval``: at
  most ``lock_ttl``/5; a conditional PUT on its ETag). A holder that dies leaves its lock. When it
  ran in this process space (same host, boot id and PID namespace) and its pid with its start time
  is gone, the next run takes the lock over at once; otherwise the next run's error names it, with
  how long ago it was last refreshed; ``state unlock ID`` clears it at once, and once ``lock_ttl``
  (default 10m) passes without a refresh, the next run takes it over (a conditional PUT on that
  ETag: one taker wins), with a warning naming the old holder. The age is S3's own clock (LastModified against the
  answer's Date), so no runner's clock matters. A holder that was only frozen and finds its lock
  taken stops writing; a write that raced anyway is refused by its If-Match.
- Every call has a deadline (``bounded.Deadlines``); a refresh with no answer ends the run.
Credentials come from boto3's default chain, the endpoint from ``AWS_ENDPOINT_URL(_S3)``.
Must not: import boto3 before it is used (start-up), or print a credential.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from email.utils import parsedate_to_datetime
from typing import Any

from hepinfra.errors import LockError, StateError
from hepinfra.safety.paths import shown
from hepinfra.state.backend import LockInfo, holder_from, holder_process_alive, holder_process_gone
from hepinfra.state.bounded import Deadlines, Heartbeat, NoAnswer, refresh_interval
from hepinfra.state.model import State
from hepinfra.state.spec import S3State
from hepinfra.state.stored import Conflict, StoredBackend

MAX_STATE_BYTES = 64 * 1024 * 1024
log = logging.getLogger("hepinfra.state")
_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict"}
DENIED_HINT = "the credentials need s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket there"


def client_for(spec: S3State) -> Any:
    """A boto3 S3 client from the default chain; StateError (one line) when that cannot be."""
    from hepinfra.aws import AwsError, make_client

    try:
        return make_client("s3", spec.region, f"state backend {spec.where()}", path_style=True, extra="s3")
    except AwsError as exc:
        raise StateError(exc.message, hint=exc.hint) from None


class S3Backend(StoredBackend):
    frees_dead_holders = True  # on this host: a holder whose process is gone is taken over at once

    def __init__(self, spec: S3State, client: Any = None) -> None:
        super().__init__()
        self.spec = spec
        self.where = spec.where()
        self._client = client
        self._beats: dict[str, _Heartbeat] = {}
        self._ages: dict[str, float] = {}  # env -> seconds since its holder last refreshed the lock
        self.deadlines = Deadlines(f"state backend s3 (s3://{spec.bucket}/{spec.prefix})")

    @property
    def s3(self) -> Any:
        if self._client is None:
            self._client = client_for(self.spec)
        return self._client

    def _key(self, env: str, suffix: str) -> str:
        return f"{self.spec.prefix}{env}{suffix}"

    def source(self, env: str) -> str:
        return f"s3://{self.spec.bucket}/{self._key(env, '.json')}"

    def close(self) -> None:
        for beat in list(self._beats.values()):
            beat.stop(wait=0 if self.deadlines.stalled else 1.0)
        self._beats.clear()
        if self._client is not None and hasattr(self._client, "close"):
            self._client.close()
        self._client = None

    # --- calls, each failure one line ------------------------------------------------------------------

    def _call(self, op: str, key: str, doing: str = "", **kwargs: Any) -> Any:
        """One S3 call within the request timeout; every failure one line."""
        self.s3  # noqa: B018  (the client is made, boto3 imported, before the clock starts)
        return self.deadlines.call(
            doing or _doing(op, key),
            lambda: self._call_now(op, key, **kwargs),
            place=f"state backend s3 (s3://{self.spec.bucket}/{key or self.spec.prefix})",
        )

    def _call_now(self, op: str, key: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.s3, op)(Bucket=self.spec.bucket, **({"Key": key} if key else {}), **kwargs)
        except ClientError as exc:
            raise _S3Failure(_code(exc), self._failure(exc, key)) from None
        except BotoCoreError as exc:
            raise self._failure(exc, key) from None
        except ValueError as exc:  # botocore's URL handling: an endpoint it cannot parse
            raise self._failure(exc, key) from None

    def _failure(self, exc: Exception, key: str) -> StateError:
        from hepinfra.aws import code_of, failure

        place = f"state backend s3 (s3://{self.spec.bucket}/{key})"
        if code_of(exc) == "NoSuchBucket":
            return StateError(
                f"{place}: bucket '{self.spec.bucket}' does not exist",
                hint="create it (hepinfra never creates buckets) or fix 'bucket' in the state: block",
            )
        found = failure(exc, place, "s3", denied_hint=DENIED_HINT)
        return StateError(found.message, hint=found.hint)

    def _get(self, key: str) -> tuple[bytes, str] | None:
        try:
            answer = self._call("get_object", key)
        except _S3Failure as failure:
            if failure.code in ("NoSuchKey", "404"):
                return None
            raise failure.error from None
        if int(answer.get("ContentLength") or 0) > MAX_STATE_BYTES:
            raise StateError(f"s3://{self.spec.bucket}/{key}: larger than {MAX_STATE_BYTES} bytes; not a state")
        return answer["Body"].read(MAX_STATE_BYTES + 1), str(answer["ETag"])

    def _put_object(self, key: str, data: bytes, **conditions: str) -> str:
        try:
            answer = self._call("put_object", key, Body=data, ContentType="application/json", **conditions)
        except _S3Failure as failure:
            if failure.code in _CONFLICT or ("IfMatch" in conditions and failure.code in ("NoSuchKey", "404")):
                raise Conflict from None  # changed, or removed, since its ETag was read
            raise failure.error from None
        return str(answer.get("ETag", ""))

    # --- StoredBackend primitives ---------------------------------------------------------------------

    def _load(self, env: str) -> tuple[bytes, str] | None:
        return self._get(self._key(env, ".json"))

    def _store(self, env: str, data: bytes, state: State, expect: str | None) -> str:
        condition = {"IfMatch": expect} if expect is not None else {"IfNoneMatch": "*"}
        try:
            return self._put_object(self._key(env, ".json"), data, **condition)
        except Conflict:
            # botocore retries a request whose answer was lost: its retry of our own successful PUT
            # meets our own new object. Only bytes equal to ours (serial and all) are that case.
            found = self._get(self._key(env, ".json"))
            if found is not None and found[0] == data:
                return found[1]
            raise

    def _backup(self, env: str, data: bytes) -> None:
        self._put_object(self._key(env, ".json.backup"), data)

    def _names(self) -> list[str]:
        names: list[str] = []
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            try:
                page = self._call("list_objects_v2", "", Prefix=self.spec.prefix, **extra)
            except _S3Failure as failure:
                raise failure.error from None
            for item in page.get("Contents", []):
                rest = str(item["Key"])[len(self.spec.prefix) :]
                if rest.endswith(".json") and "/" not in rest:
                    names.append(rest[: -len(".json")])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return names

    def _try_lock(self, env: str, mine: LockInfo) -> LockInfo | None:
        key = self._key(env, ".lock")
        mine = dataclasses.replace(mine, lease_s=self.spec.lock_ttl)
        body = json.dumps(mine.as_dict()).encode()
        for _ in range(5):
            try:
                self._held_since(env, body, self._put_object(key, body, IfNoneMatch="*"))
                return None
            except Conflict:
                found = self._lock_object(env)
                if found is None:
                    continue  # released between our PUT and our GET: try again at once
                holder, etag, age = found
                if holder.id == mine.id:  # botocore's retry of our own PUT, whose answer was lost: ours
                    self._held_since(env, body, etag)
                    return None
                self._ages[env] = age
                lease = holder.lease_s if holder.lease_s else self.spec.lock_ttl  # the holder's own promise
                dead = holder_process_gone(holder, strict=True)  # same host, boot and PID namespace
                if age <= lease and not dead:
                    return holder
                try:
                    taken = self._put_object(key, body, IfMatch=etag)
                except Conflict:
                    continue  # another run took it over first, or its holder refreshed it just now
                why = _taken_because(holder, dead, age, lease)
                log.warning("took over the lock of environment '%s' from %s: %s", env, holder.describe(), why)
                self._held_since(env, body, taken)
                return None
        return LockInfo(id="?", pid=0, host="?", user="?", created="?", command="(changing hands)")

    def _held_since(self, env: str, body: bytes, etag: str) -> None:
        beat = _Heartbeat(self, env, body, etag, refresh_interval(self.spec.lock_ttl))
        self._beats[env] = beat
        beat.start()

    def _lock_object(self, env: str) -> tuple[LockInfo, str, float] | None:
        """The lock's holder, ETag, and seconds since it was last written by S3's clock."""
        try:
            answer = self._call("get_object", self._key(env, ".lock"))
        except _S3Failure as failure:
            if failure.code in ("NoSuchKey", "404"):
                return None
            raise failure.error from None
        data = answer["Body"].read(65536)
        age = 0.0
        try:
            now = parsedate_to_datetime(answer["ResponseMetadata"]["HTTPHeaders"]["date"])
            age = max(0.0, (now - answer["LastModified"]).total_seconds())
        except (KeyError, TypeError, ValueError):
            pass  # no usable clock: never judged stale
        return holder_from(data), str(answer["ETag"]), age

    def stuck_hint(self, env: str, holder: LockInfo) -> str:
        age = self._ages.get(env)
        refreshed = f"it was last refreshed {age:.0f}s ago; " if age is not None else ""
        lease = holder.lease_s or self.spec.lock_ttl
        return (
            f"{refreshed}wait with --lock-timeout DURATION; if that run is gone (a killed runner), the next run "
            f"takes the lock over once it is {lease}s old (its lock_ttl), or clear it now with "
            f"'hepinfra state unlock {shown(str(holder.id), 40)} -e {env}'"
        )

    def _still_held(self, env: str) -> None:
        """Before each state write: the lock object is still ours (its ETag as last refreshed); one GET,
        so a run that was frozen past its lease never writes over the new holder's view."""
        beat = self._beats.get(env)
        if beat is not None and not beat.lost:
            found = self._lock_object(env)
            if found is None or found[0].id != self._held.get(env):
                beat.lost = True
        if beat is not None and beat.lost:
            raise LockError(
                f"the lock of environment '{env}' in {self.where} was taken over by another run, or cleared with "
                f"'state unlock' (after {self.spec.lock_ttl}s without a refresh: this run was frozen or cut off from "
                "S3); this run stops writing state",
                hint="run again; an interrupted step is finished from the journal",
            )

    # --- Locker -------------------------------------------------------------------------------------

    def lock_holder(self, env: str) -> LockInfo | None:
        found = self._get(self._key(env, ".lock"))
        return holder_from(found[0]) if found is not None else None

    def holder_alive(self, env: str) -> bool:
        holder = self.lock_holder(env)
        if holder is None or self._held.get(env) == holder.id:
            return False
        return holder_process_alive(holder)

    def unlock(self, env: str, lock_id: str, *, force: bool = False) -> None:
        key = self._key(env, ".lock")
        beat = self._beats.pop(env, None)
        if beat is not None:  # its refresh in flight ends within the request timeout
            beat.stop(wait=0 if self.deadlines.stalled else self.deadlines.timeout)
        try:
            self.deadlines.call(
                "releasing the lock",
                lambda: self._unlock_now(env, key, lock_id),
                place=f"state backend s3 (s3://{self.spec.bucket}/{key})",
                after_stall=True,
            )
        finally:
            if self._held.get(env) == lock_id:
                del self._held[env]

    def _unlock_now(self, env: str, key: str, lock_id: str) -> None:
        found = self._get(key)
        if found is None:
            raise LockError(f"the state of environment '{env}' in {self.where} is not locked")
        holder = holder_from(found[0])
        if holder.id != lock_id:
            raise LockError(f"lock id {shown(lock_id, 40)} does not match the lock held by {holder.describe()}")
        try:
            self._call("delete_object", key, IfMatch=found[1])
        except _S3Failure as failure:
            if failure.code in ("NoSuchKey", "404"):
                return  # botocore's retry of our own delete, whose answer was lost: gone, as asked
            if failure.code in _CONFLICT:
                raise LockError(f"the lock of environment '{env}' changed while it was being released") from None
            if failure.code != "NotImplemented":
                raise failure.error from None
            self._call("delete_object", key)  # a store without conditional deletes


class _Heartbeat(Heartbeat):
    """Refreshes one held lock object every ``interval`` seconds (a conditional PUT on its ETag); a
    refresh with no answer within the request timeout ends the run (``bounded.report_stall``)."""

    def __init__(self, backend: S3Backend, env: str, body: bytes, etag: str, interval: float) -> None:
        super().__init__(f"hepinfra-lock-{env}", interval, self.beat)
        self.backend, self.env, self.body, self.etag = backend, env, body, etag
        self.lost = False

    def beat(self) -> bool:
        """Refresh once; False once the lock is found taken over or cleared (then ``lost``)."""
        try:
            answer = self.backend._call(
                "put_object", self.backend._key(self.env, ".lock"), "refreshing the lock", Body=self.body,
                IfMatch=self.etag,
            )  # fmt: skip
            self.etag = str(answer.get("ETag", ""))
        except _S3Failure as failure:
            if failure.code in (*_CONFLICT, "NoSuchKey", "404"):  # taken over, or cleared by 'state unlock'
                self.lost = True
                log.warning("the lock of environment '%s' was taken over or cleared by another run", self.env)
                return False
            log.debug("could not refresh the lock of environment '%s': %s", self.env, failure.error)
        except NoAnswer:
            raise  # the backend stopped answering: the run ends
        except Exception as exc:  # S3 unreachable for a moment: the next beat tries again
            log.debug("could not refresh the lock of environment '%s': %s", self.env, type(exc).__name__)
        return True


class _S3Failure(Exception):
    def __init__(self, code: str, error: StateError) -> None:
        super().__init__(code)
        self.code = code
        self.error = error


def _code(exc: Any) -> str:
    from hepinfra.aws import code_of

    return code_of(exc)


def _doing(op: str, key: str) -> str:
    """What a call is doing, for messages: "writing state", "reading the lock", ..."""
    if key.endswith(".lock"):
        return {"get_object": "reading the lock", "put_object": "taking the lock"}.get(op, "releasing the lock")
    what = "the state backup" if key.endswith(".backup") else "state"
    verb = {"get_object": "reading", "put_object": "writing", "delete_object": "deleting"}.get(op)
    return f"{verb} {what}" if verb else "listing environments"


def _taken_because(holder: LockInfo, dead: bool, age: float, lease: int) -> str:
    if dead:
        return f"its process (pid {holder.pid} on this host) is gone"
    return f"not refreshed for {age:.0f}s (its lock_ttl {lease}s), so its run is gone"
