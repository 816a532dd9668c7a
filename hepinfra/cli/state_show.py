"""``hepinfra state show``'s text form: one managed resource, its output records and its pending
journal, readable on a terminal (``--format json`` is the document).

Owns: laying out a record's fields, whatever its kind (field by field, no kind named here).
Must not: show a value state keeps sealed (an id's ciphertext is said to be encrypted) or a whole
digest (shortened: they identify content, they are not for reading), or print state unescaped
(state is input: every field passes ``shown``).
"""

from __future__ import annotations

import json
from typing import Any

from hepinfra.safety.paths import shown

_SEALED = ("ciphertext",)


def _value(field: str, value: Any) -> str:
    if field in _SEALED:
        return "(encrypted; `hepinfra output` shows the value)" if value else "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if field.endswith("digest") and isinstance(value, str) and len(value) > 16:
        return value[:12] + "…"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return shown(", ".join(value), 200)
    if isinstance(value, dict | list):
        return shown(json.dumps(value, sort_keys=True), 200)
    if field.endswith(("_at", "_since")) and isinstance(value, str):
        return _when(value)
    return shown(str(value), 200)


def _when(value: str) -> str:
    """An ISO time as ``2026-12-03 07:36:35 UTC`` (state is input: anything else is shown as it is)."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return shown(value, 200)
    if moment.tzinfo is None:
        return shown(value, 200)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fields(record: dict[str, Any], skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    return [(k, _value(k, v)) for k, v in record.items() if k not in skip and v not in (None, [], {}, ())]


def _aligned(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{indent}{k.replace('_', ' ').ljust(width)}  {v}" for k, v in rows]


def show_text(document: dict[str, Any]) -> str:
    """``document`` as ``state show --format json`` prints it: address, the record (under its kind's
    singular), outputs, journal."""
    address = document["address"]
    record_key = next(k for k in document if k not in ("address", "outputs", "journal"))
    lines = [f"{shown(address, 200)} ({record_key})", *_aligned(_fields(document[record_key]))]
    outputs = document["outputs"]
    lines.append(f"outputs: {len(outputs)}" if outputs else "outputs: none recorded")
    for out in outputs:
        lines.append(f"  {shown(out['path'], 200)} ({shown(out['kind'])})")
        lines += _aligned(_fields(out, skip=("path", "kind", "database")), indent="    ")
    journal = document["journal"]
    lines.append(
        f"pending journal: {len(journal)} (the next apply finishes it)" if journal else "pending journal: none"
    )
    for entry in journal:
        lines.append(f"  {shown(entry['op'])} (id {shown(entry['id'])})")
        lines += _aligned(_fields(entry, skip=("op", "id", "database")), indent="    ")
    return "\n".join(lines) + "\n"
