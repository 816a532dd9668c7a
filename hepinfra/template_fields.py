"""Template variables that hold fields (``db``, ``id``, ``upload``, ``vars``) and the message a missing
field gets: ``db has no field 'conection_string' (did you mean 'connection_string'?)``.

Owns: ``Fields`` (a dict that knows its variable's name, so the sandbox's undefined value can say
whose field is missing), wrapping a render's context in it, and the wording of a missing field or
name.
Must not: put a value in a message (field names only) or import Jinja2 (start-up path).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class Fields(dict[str, Any]):
    """A template variable that holds fields (``db``, ``id``, ``upload``, ``vars``), knowing its own
    name, so a missing field is reported as ``db has no field 'x' (did you mean 'y'?)``."""

    __slots__ = ("_variable",)

    def __init__(self, variable: str, fields: dict[str, Any]) -> None:
        super().__init__(fields)
        self._variable = variable  # a '_' name: the sandbox refuses it to templates


def missing_field(variable: str, name: object, fields: Iterable[object]) -> str:
    """``db has no field 'conection_string' (did you mean 'connection_string'?)``: field names only,
    never a value."""
    import difflib

    from hepinfra.values import clip

    known = sorted(str(f) for f in fields)
    wanted = clip(str(name), 80)
    close = difflib.get_close_matches(str(name), known, n=1) if isinstance(name, str) else []
    if close:
        hint = f"did you mean {close[0]!r}?"
    elif known:
        hint = "its fields: " + ", ".join(known[:12]) + (f" and {len(known) - 12} more" if len(known) > 12 else "")
    else:
        hint = "it has no fields"
    return f"{variable} has no field {wanted!r} ({hint})"


def missing_name(name: str, known: Iterable[str]) -> str:
    """``'dbb' is undefined (did you mean 'db'?)``: a top-level name the render's context lacks."""
    import difflib

    from hepinfra.values import clip

    names = sorted(k for k in known if not k.startswith("_"))
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        hint = f" (did you mean {close[0]!r}?)"
    else:
        hint = f" (a template here can use: {', '.join(names)})" if names else ""
    return f"{clip(name, 80)!r} is undefined{hint}"


def with_names(context: dict[str, Any]) -> dict[str, Any]:
    """The context with each variable of fields wrapped in ``Fields`` (its name travels with it)."""
    return {k: Fields(k, v) if type(v) is dict else v for k, v in context.items()}
