"""State <-> bytes. Canonical JSON: sorted keys, two-space indent, trailing newline.

Owns: encoding and decoding, with one-line errors naming the source and the field.
Must not: touch files or the network.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from hepinfra.errors import StateError, first_validation_error
from hepinfra.state.model import FORMAT_VERSION, State


def encode(state: State) -> bytes:
    """Canonical bytes: fields in declaration order, mapping keys sorted (so diffs stay small).

    Uses pydantic's Rust serialiser: apply writes state after every batch of changes.
    """
    ordered = state.model_copy(
        update={
            "databases": dict(sorted(state.databases.items())),
            "ids": dict(sorted(state.ids.items())),
            "uploads": dict(sorted(state.uploads.items())),
            "outputs": dict(sorted(state.outputs.items())),
            "forgotten": dict(sorted(state.forgotten.items())),
        }
    )
    # no ids, uploads, crypto or forgotten databases: the file is exactly what a hepinfra without them
    # writes (and reads)
    absent = {name for name in ("ids", "uploads", "crypto", "forgotten") if not getattr(state, name)}
    return ordered.model_dump_json(indent=2, exclude=absent).encode() + b"\n"


def decode(data: bytes, source: str) -> State:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise StateError(f"{source}: not valid JSON: {exc}") from None
    except RecursionError:
        raise StateError(f"{source}: not a state file (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise StateError(f"{source}: a state file must hold a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise StateError(
            f"{source}: state format_version {_clip(repr(version))} is not supported (this hepinfra reads "
            f"{FORMAT_VERSION})"
        )
    try:
        return State.model_validate(raw)
    except ValidationError as exc:
        raise StateError(f"{source}: {first_validation_error(exc)}") from None


def _clip(text: str, limit: int = 40) -> str:
    from hepinfra.safety.paths import shown

    return shown(text, limit)
