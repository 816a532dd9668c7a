"""The ``ids`` kind: values minted by the ID Generator (POST https://id.hep.gg/), kept for the life
of the resource.

Owns: the plan rules of ids (mint when missing, mint again when due, asked for, or when the type
or its options change; render; forget) and the ``id`` template variable (``id.value``;
``id.private`` for a keypair; ``id.type``). hep.gg has no Reveal for ids, so the value lives in
state as AES-256-GCM ciphertext (``state.crypto``). Minting again never invalidates the old
value on hep.gg's side: an interrupted mint is simply minted again. Apply steps: ``kinds.ids_apply``.
Must not: do I/O or see a value (only keyed digests).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, model_validator

from hepinfra.kinds.base import Kind
from hepinfra.kinds.rules import Decision, EnvInput, plan_held, render_headline
from hepinfra.outputs import OutputSpec
from hepinfra.spec import Duration, Ident, SpecModel
from hepinfra.values import Action, Change, Declared, Diagnostic, clip
from hepinfra.windows import RotateWindowSpec, rotation_settings

if TYPE_CHECKING:
    from hepinfra.hepgg import Hepgg
    from hepinfra.resolution import Resolution

SECTION = "ids"


def options_digest(decl: Declared) -> str:
    """The type and options a value was minted with: a change of either mints a new value."""
    return hashlib.sha256(json.dumps([decl.engine, list(decl.options)], sort_keys=True).encode()).hexdigest()[:32]


def id_vars(manifest: Any, env: str, hepgg: Hepgg) -> tuple[str, str]:
    """The variables holding the ID Generator's username and token for ``env``."""
    from hepinfra.hepgg.config import ID_TOKEN_VAR, ID_USERNAME_VAR

    spec = manifest.env_spec(env)
    if hepgg.local:  # the local hep.gg's own credentials, filled in under the default names
        return ID_USERNAME_VAR, ID_TOKEN_VAR
    return spec.id_username_env or ID_USERNAME_VAR, spec.id_token_env or ID_TOKEN_VAR


def missing_credentials(manifest: Any, env: str, hepgg: Any) -> str | None:
    """The ID Generator's username and token variables of ``env`` that are not set."""
    unset = [v for v in id_vars(manifest, env, hepgg) if not (hepgg.environ.get(v) or "").strip()]
    if not unset:
        return None
    return " and ".join(unset) + (" are" if len(unset) > 1 else " is") + " not set"


def _headline(change: Change) -> str:
    return {
        Action.CREATE: f"will be minted ({change.engine})",
        Action.ADOPT: "will be adopted",
        Action.ROTATE: f"will be minted again ({change.engine}); the outputs get the new value",
        Action.RENDER: render_headline(change, "outputs"),
        Action.FORGET: "will no longer be managed: its value is dropped from state",
        Action.NOOP: "is up to date",
    }[change.action]


def _decide(here: EnvInput) -> Decision:
    def decide(decl: Declared, managed: Any, pending: set[str]) -> list[str]:
        wanted = here.rotate.wants(here.env, decl.ref)
        if managed is None:
            first = ("an interrupted mint: its value was never recorded or written, so a new one is minted"
                     if "create" in pending else "not minted yet")  # fmt: skip
            return [first] + (["requested rotation not needed: a new value is minted anyway"] if wanted else [])
        if "rotate" in pending:
            return [
                "an interrupted rotation: the value minted then was never recorded or written, so a new one is "
                "minted (the current value stays valid meanwhile)"
            ]
        if wanted:
            return ["requested"]
        if managed.options_digest != options_digest(decl):
            return ["its type or options changed: a new value is minted"]
        when = here.rotation_due(decl, managed.rotated_at)
        return [when] if when else []

    return decide


def plan(here: EnvInput) -> tuple[list[Change], list[Diagnostic], set[str]]:
    return plan_held(
        here,
        SECTION,
        _decide(here),
        outputs_reason="with the new value",
        credentials=("minting needs the ID Generator's credentials",
                     "export them (from the dashboard: ID Generator -> API Keys)"),
        forget_reason="no longer declared: its encrypted value is dropped from state (hep.gg keeps no copy of an "
        "id); its outputs are left in place",
        engine_of=lambda managed: str(managed.type),
    )  # fmt: skip


# --- the manifest's ``ids:`` section ----------------------------------------------------------------

_ID_FIELDS = ("type", "rotate_every", "rotate_window", "environments", "outputs")
_ID_RESERVED = ("username", "token")  # the request's own fields: never an option


class IdSpec(SpecModel):
    """A value minted by the ID Generator; every other key is an option of its type, sent as written."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True)

    type: Literal["uuid", "nanoid", "2fa", "license", "words", "word", "snowflake", "keypair", "cuid"]
    rotate_every: Duration | None = None
    rotate_window: RotateWindowSpec | None = None  # due mints wait for it (else defaults'; null: any time)
    environments: list[Ident] | None = None
    outputs: list[OutputSpec] = []

    @model_validator(mode="after")
    def _options(self) -> IdSpec:
        for name, value in (self.model_extra or {}).items():
            if name in _ID_RESERVED:
                raise ValueError(f"'{name}' is not an option: the ID Generator's credentials come from the environment")
            guess = difflib.get_close_matches(name, _ID_FIELDS, n=1, cutoff=0.8) if len(name) < 100 else []
            if guess:
                raise ValueError(f"unknown field '{clip(name)}' (did you mean '{guess[0]}'?)")
            if not isinstance(value, str | int | float) or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"option '{clip(name)}' must be a string, a finite number or true/false")
        if self.type == "nanoid" and (self.model_extra or {}).get("length") in (None, ""):
            raise ValueError("a nanoid needs length: (hep.gg answers 'Please specify the length')")
        return self

    @property
    def options(self) -> dict[str, str | int | float | bool]:
        return dict(sorted((self.model_extra or {}).items()))


def declare(r: Resolution, env: str, key: str, context: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    from hepinfra.templates import placeholder_id

    spec = r.model.section("ids")[key]
    assert isinstance(spec, IdSpec)
    return {
        "name": key,
        "engine": spec.type,
        "rotate_every": spec.rotate_every,
        "options": tuple(spec.options.items()),
        "value": {"id": placeholder_id(spec.type)},
        **rotation_settings(r.model.defaults, spec),
    }


KIND = Kind(
    section=SECTION,
    var="id",
    plan=plan,
    headline=_headline,
    steps="hepinfra.kinds.ids_apply",
    forgotten="no longer managed; its value is gone from state",
    needs_state_key=True,
    engine_field="type",
    in_flight=lambda change: "an id whose answer was not recorded is minted again",
    credentials=missing_credentials,
    spec=IdSpec,
    declare=declare,
    history=lambda m: (m.rotated_at, m.rotations),
)
