"""Plain values at the bottom: what every layer above passes around.

Owns: addresses (``ref_of``, ``split_ref``), durations, the closed set of actions, the resolved
declarations (``Declared``, ``OutputTarget``), the plan values (``Change``, ``Diagnostic``, ``Plan``:
serialisable, no secrets) and the facts the fetch step gathers (``ObservedOutput``, ``EnvFacts``).
Must not: import anything of hepinfra but the package's version (this module is the bottom layer:
a test checks it), do I/O, or hold a secret.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from hepinfra import __version__


class DatabaseSummary(Protocol):
    """What a List answer says of one database (``hepgg.models.DatabaseSummary`` has it)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def engine(self) -> str: ...
    @property
    def status(self) -> str | None: ...


RESOURCE_SECTIONS = ("databases", "ids", "uploads")  # the resource kinds, in plan order
# every output kind with a sink: the package's own, and any ``hepinfra.outputs.register`` adds. A state
# record naming another kind is refused when state is read (even by a process that never loads the
# sinks), so state that others can write never reaches code by a made-up kind
OUTPUT_KINDS: set[str] = {"dotenv", "template", "exec", "aws_secretsmanager", "aws_ssm", "age"}

# --- durations -------------------------------------------------------------------------------------

DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> int:
    """``30d`` -> seconds. Units s, m, h, d; a positive whole number."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a duration such as 30d, 12h, 90m or 3600s")
    match = DURATION.match(str(value)) if isinstance(value, str) else None
    if not match:
        shown = f"'{clip(value)}'" if isinstance(value, str) else str(value)
        raise ValueError(f"bad duration {shown}: use a whole number and a unit s, m, h or d (e.g. 30d)")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("the duration must be more than zero")
    return seconds


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


QUOTE_LIMIT = 60  # characters of user input quoted in a message
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clip(text: object, limit: int = QUOTE_LIMIT) -> str:
    """User input as a message may show it: control characters escaped, at most ``limit`` characters."""
    raw = str(text)
    head = raw[: limit * 4]  # escaping can only lengthen: never scan more than needed
    visible = _CONTROL.sub(lambda m: repr(m.group())[1:-1], head)
    return visible if len(visible) <= limit and len(raw) == len(head) else visible[: limit - 1] + "…"


DotenvReader = Literal["python-dotenv", "compose", "bash"]
DOTENV_READERS: tuple[DotenvReader, ...] = ("python-dotenv", "compose", "bash")


# --- resolved declarations -------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputTarget:
    """One output of one database in one environment, paths rendered, ready for a sink."""

    kind: str  # the output kind: dotenv, template, exec, aws_secretsmanager, aws_ssm, age, or a registered one
    path: str  # relative to the project directory (or absolute with allow_outside), POSIX form; exec: its name
    keys: tuple[tuple[str, str], ...]  # dotenv: (name, value template source)
    template: str | None  # template: the file's path relative to the project directory
    template_source: str | None
    mode: int
    allow_tracked: bool
    allow_outside: bool
    definition_digest: str  # changes when what would be rendered changes (not the secret)
    real: str = ""  # the real path checked at load time (every link resolved); "" in hand-made targets
    node: tuple[str | int, ...] = ()  # where in the manifest the path is declared
    readers: tuple[str, ...] = DOTENV_READERS  # dotenv: who reads the file (templates.dotenv_quote)
    # exec: the command (rendered argv), its read-back command, timeout (s), variables let through,
    # variables kept from it (the manifest's credential variables), and its working directory
    argv: tuple[str, ...] = ()
    read_argv: tuple[str, ...] = ()
    timeout: int = 30
    pass_env: tuple[str, ...] = ()
    scrub: tuple[str, ...] = ()
    cwd: str = ""
    kms_key_id: str | None = None  # aws outputs
    recipients: tuple[str, ...] = ()  # age
    plain: bool = False  # aws_secretsmanager with value: (one plain string, not a JSON object)


@dataclass(frozen=True)
class Declared:
    """One resource of one kind declared in one environment, resolved."""

    env: str
    key: str
    name: str  # a database's platform name; an id's or an upload's key
    engine: str  # a database's engine; an id's type; "file" for an upload
    rotate_every: int | None
    outputs: tuple[OutputTarget, ...]
    kind: str = "databases"
    options: tuple[tuple[str, str | int | float | bool], ...] = ()  # ids: the type's options, sorted
    file: str = ""  # uploads: as declared
    file_real: str = ""  # uploads: its real path, checked at load time
    file_digest: str = ""  # uploads: sha256 of its content at load time
    allow_outside: bool = False
    verify: bool = False  # databases: connect with the rendered credentials after every change
    verify_timeout: int = 10
    after_rotate: tuple[str, ...] = ()  # databases: the hook's argv, rendered (never a secret)
    after_rotate_timeout: int = 60
    hook_scrub: tuple[str, ...] = ()  # the manifest's credential variables, kept from the hook
    hook_pass_env: tuple[str, ...] = ()  # after_rotate_pass_env: variables the hook is given
    hook_once: bool = False  # after_rotate_once: run once after all of a run's rotations (apply.after_all)
    rotation: str = "single"  # databases: the rotation strategy (single, alternating)
    rotate_window: RotateWindow | None = None  # when a due rotation may run (None: any time)
    max_failed_rotations: int = 0  # databases: failed rotations in a row before a due one is held (0: never)

    @property
    def address(self) -> str:
        return f"{self.env}/{self.kind}.{self.key}"

    @property
    def ref(self) -> str:
        """How state refers to it (output records, journal): databases by key (they came first),
        other kinds as ``KIND.KEY``, so keys of different kinds never collide."""
        return ref_of(self.kind, self.key)


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class RotateWindow:
    """``rotate_window:`` resolved: the weekdays it opens on (0 is Monday; every day when none were
    named), its start and end in minutes after midnight, and the IANA zone they are read in. An end at
    or before the start spans midnight: it closes the next day (``days`` name the day it opens)."""

    days: tuple[int, ...]
    start: int
    end: int
    tz: str = "UTC"

    def next_opening(self, now: datetime) -> datetime | None:
        """None while the window is open at ``now``, else when it opens next (in its zone)."""
        from datetime import time, timedelta
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(self.tz)
        today = now.astimezone(zone).date()
        soonest: datetime | None = None
        for offset in range(-1, 9):
            day = today + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opens = datetime.combine(day, time(self.start // 60, self.start % 60), zone)
            closes = datetime.combine(day + timedelta(days=int(self.end <= self.start)),
                                      time(self.end // 60, self.end % 60), zone)  # fmt: skip
            if opens.timestamp() <= now.timestamp() < closes.timestamp():
                return None
            if opens.timestamp() > now.timestamp() and (soonest is None or opens.timestamp() < soonest.timestamp()):
                soonest = opens
        return soonest

    def describe(self, when: datetime) -> str:
        """An opening as the plan says it: ``2026-12-05 02:00 UTC``."""
        return f"{when:%Y-%m-%d %H:%M} {self.tz}"


class Held(BaseModel):
    """A rotation due by ``rotate_every`` that this plan does not make, and why: ``window`` (its
    ``rotate_window`` is closed until ``until``), ``max-rotations`` (the run's ``--max-rotations`` is
    used by more overdue ones) or ``failed-rotations`` (its last rotations failed in a row)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    reason: Literal["window", "max-rotations", "failed-rotations"]
    message: str  # what the plan says: the due reason, then what it waits for
    until: datetime | None = None  # window: its next opening


def ref_of(kind: str, key: str) -> str:
    return key if kind == "databases" else f"{kind}.{key}"


def split_ref(text: str) -> tuple[str, str]:
    """``ids.KEY`` -> (ids, KEY); ``databases.KEY`` or a bare ``KEY`` -> (databases, KEY)."""
    kind, dot, key = text.partition(".")
    if dot and kind in RESOURCE_SECTIONS:
        return kind, key
    return "databases", text


# --- plan values ------------------------------------------------------------------------------------

PLAN_FORMAT = 1


class Action(StrEnum):
    CREATE = "create"
    ADOPT = "adopt"
    ROTATE = "rotate"
    RENDER = "render"
    FORGET = "forget"
    MOVE = "move"  # a state-only rename (``moved:``): no API call, nothing rotated or written
    NOOP = "noop"

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]


_SYMBOLS = {
    Action.CREATE: "+",
    Action.ADOPT: "<=",
    Action.ROTATE: "~",
    Action.RENDER: ">",
    Action.FORGET: "-",
    Action.MOVE: "~>",
    Action.NOOP: " ",
}


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class OutputChange(_Value):
    path: str
    kind: str  # the output kind: dotenv, template, exec, aws_secretsmanager, aws_ssm, age, or a registered one
    reason: str


class Change(_Value):
    address: str
    env: str
    key: str
    action: Action
    reasons: tuple[str, ...] = ()
    name: str  # a database's platform name; an id's or an upload's key
    engine: str  # a database's engine; an id's type; "file" for an upload
    kind: str = "databases"  # the resource kind: databases, ids, uploads
    database_id: str | None = None
    outputs: tuple[OutputChange, ...] = ()  # outputs this change writes
    retire: tuple[str, ...] = ()  # outputs no longer declared: hepinfra's keys/files are removed
    retire_left: dict[str, str] = {}  # of ``retire``, those left in place and only listed: path -> why
    finish_rotation: bool = False  # an interrupted rotation: apply uses Reveal, never a second rotate
    rotate_after_adopt: bool = False
    moved_to: str | None = None  # a move: the new address (same environment and kind); ``address`` is the old one
    held: Held | None = None  # a due rotation this plan does not make (its change renders or is a noop)
    revoke_previous: bool = False  # rotate --revoke (alternating): disable the previous role once published


class Diagnostic(_Value):
    severity: Literal["error", "warning"]
    message: str
    env: str | None = None
    address: str | None = None
    hint: str | None = None


class EnvPin(_Value):
    lineage: str | None
    serial: int
    remote_digest: str | None


class ReviewItem(_Value):
    """``plan --base``: one change to what runs or where values go at apply, for a reviewer."""

    where: str  # manifest, state, a resource (databases.shop) or a program
    what: str


class Plan(_Value):
    format_version: int = PLAN_FORMAT
    hepinfra_version: str = __version__
    created_at: datetime
    manifest: str
    manifest_digest: str
    refreshed: bool
    environments: dict[str, EnvPin]
    changes: tuple[Change, ...]
    diagnostics: tuple[Diagnostic, ...] = ()
    base: str | None = None  # plan --base REF: the revision whose manifest was trusted
    review: tuple[ReviewItem, ...] = ()  # plan --base: what the change would run or send where
    rotate: tuple[str, ...] = ()  # --rotate as given: a saved plan is checked by planning again with it
    signatures: dict[str, str] = {}  # a saved plan: env -> HMAC under the environment's secret digest key
    skipped_outputs: tuple[str, ...] = ()  # --skip-local-outputs: the output kinds left out of this plan
    # (env, output id) of committed outputs whose write-back is merged: apply clears their write_back_from
    settled_write_backs: tuple[tuple[str, str], ...] = ()
    targets: tuple[str, ...] = ()  # --target as given: a partial plan of only these resources
    left_out: int = 0  # a partial plan: how many resources --target left out
    max_rotations: int | None = None  # --max-rotations as given: due rotations beyond it are held

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    @property
    def actionable(self) -> list[Change]:
        return [c for c in self.changes if c.action is not Action.NOOP]

    @property
    def has_changes(self) -> bool:
        return bool(self.actionable)

    def counts(self) -> dict[str, int]:
        counts = {a.value: 0 for a in Action}
        for change in self.changes:
            counts[change.action.value] += 1
        return counts


# --- facts gathered by the fetch step --------------------------------------------------------------


@dataclass(frozen=True)
class ObservedOutput:
    exists: bool
    digest: str | None = None  # keyed digest of the managed content now on disk
    problem: str | None = None  # unreadable, not a dotenv file, ...
    key_digests: tuple[tuple[str, str], ...] | None = None  # per key, where a sink can tell
    trusted: bool = False  # cannot be read back: the recorded digest stands for it


@dataclass(frozen=True)
class EnvFacts:
    """What the fetch step learned about one environment. No secrets: digests only."""

    env: str
    databases: tuple[DatabaseSummary, ...] | None  # None: List could not be called
    error: Diagnostic | None = None
    outputs: Mapping[tuple[str, str], ObservedOutput] = field(default_factory=dict)  # (resource ref, path)
    password_digests: Mapping[str, str] = field(default_factory=dict)  # database id -> keyed digest
    refreshed: bool = False
    account_peers: tuple[str, ...] = ()  # other selected environments using the same database key
    peer_names: frozenset[str] = frozenset()  # platform names declared by unselected environments on that key
    missing: Mapping[str, str] = field(default_factory=dict)  # kind -> credential variables not set
    retire_left: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (ref, path) -> why it is kept

    @property
    def remote_digest(self) -> str | None:
        if self.databases is None:
            return None
        return remote_digest(self.databases)


def remote_digest(databases: Iterable[DatabaseSummary]) -> str:
    """A digest of what List said that matters to a plan (ids, names, engines), order-free."""
    rows = sorted((d.id, d.name, d.engine) for d in databases)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


@dataclass(frozen=True)
class RotateRequest:
    """``--rotate`` targets, parsed: (env or None for every env, resource ref: ``KEY`` of a
    database, ``ids.KEY``, ``uploads.KEY``)."""

    targets: frozenset[tuple[str | None, str]] = frozenset()
    limit: int | None = field(default=None, kw_only=True)  # --max-rotations: at most this many rotations in a run
    revoke: bool = field(default=False, kw_only=True)  # rotate --revoke: an alternating database's previous role too

    def wants(self, env: str, ref: str) -> bool:
        return (env, ref) in self.targets or (None, ref) in self.targets

    def revoking(self, revoke: bool) -> RotateRequest:
        """This request, with rotate --revoke (or without)."""
        from dataclasses import replace

        return replace(self, revoke=revoke) if revoke != self.revoke else self


@dataclass(frozen=True)
class TargetRequest(RotateRequest):
    """``--target`` addresses, parsed like ``--rotate`` (``given``: as typed, for the plan and its
    file). Empty: every resource. A move belongs to both of its addresses."""

    given: tuple[str, ...] = ()

    def covers(self, env: str, kind: str, key: str) -> bool:
        return not self.targets or self.wants(env, ref_of(kind, key))

    def covers_change(self, change: Change) -> bool:
        if self.covers(change.env, change.kind, change.key):
            return True
        return change.moved_to is not None and self.covers(change.env, change.kind, change.moved_to.rpartition(".")[2])

    def covers_address(self, address: str) -> bool:
        """``ENV/KIND.KEY`` (a diagnostic's address)."""
        env, _, rest = address.partition("/")
        return self.covers(env, *split_ref(rest))
