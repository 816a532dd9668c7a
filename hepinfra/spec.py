"""The manifest's schema building blocks, shared by the loader, every kind and every output.

Owns: names (``Ident``), variable names, durations, file modes, the base model every block of the
manifest uses (frozen, unknown keys refused), and what a template in an argv or a name may use.
Must not: know a kind or an output (they build on this), do I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints, WithJsonSchema

from hepinfra.values import OutputTarget, parse_duration

IDENT = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
ENV_VAR = r"^[A-Za-z_][A-Za-z0-9_]*$"
PLATFORM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# what an exec argv may use: a secret in argv is visible to every user of the machine (ps, /proc)
ARGV_VARIABLES = ("env", "key", "name", "vars")
SECRET_VARIABLES = ("db", "id", "upload")  # the resources' values: never in argv or a name

Ident = Annotated[str, StringConstraints(pattern=IDENT, max_length=63)]
EnvVarName = Annotated[str, StringConstraints(pattern=ENV_VAR)]
Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": r"^\s*\d+\s*[smhd]\s*$", "examples": ["30d", "12h"]}),
]
MODE_HELP = "must be a file mode such as 0600 (octal; the owner reads it: 0600, 0400 or 0700)"


def check_mode(value: Any) -> Any:
    """A secret file's mode: the owner can read it and nobody else has any access.

    ``0600``, ``"0600"``, ``600`` and ``0o600`` all mean 0600 (an unquoted mode reaches here as
    its source text, see ``load``). Returns the digits as written, without a ``0o`` prefix.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(MODE_HELP)
    text = str(value)
    digits = text[2:] if text[:2] in ("0o", "0O") else text
    if not re.fullmatch(r"0?[0-7]{3}", digits):
        raise ValueError(MODE_HELP)
    bits = int(digits, 8)
    if bits & 0o077:
        raise ValueError(
            f"mode {bits:04o} gives group or other users access to the file, which would expose the secret; "
            "use 0600 (or 0400)"
        )
    if not bits & 0o400:
        raise ValueError(f"mode {bits:04o} does not let the owner read the file; use 0600 (or 0400)")
    return digits


Mode = Annotated[str, StringConstraints(pattern=r"^0?[0-7]{3}$"), BeforeValidator(check_mode)]


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False, defer_build=True)


class RotationSpec(SpecModel):
    """``rotation:`` of a database (or under ``defaults:``): ``single`` (hep.gg's rotate: the one user's
    password changes, the old one dies at once) or ``alternating`` (two login roles hepinfra makes and
    takes turns with: the previous one stays valid until the next rotation; PostgreSQL and MariaDB)."""

    strategy: Literal["single", "alternating"] = "single"


class OutputSpecBase(SpecModel):
    """What every output kind's spec declares besides its fields: its ``kind`` (the key that names it in
    the manifest), whether it is ``remote`` (no file of the project: observed only by a refreshing plan),
    what it ``claims`` ("keys" inside a file, a "whole" file, or "remote"), whether it is ``local`` (a
    plaintext file for the machine that runs apply: CI runs leave it out), the fields a pull request's
    review lists when it is new or changed (``review_fields``), and ``resolve`` (-> OutputTarget)."""

    kind: ClassVar[str]
    remote: ClassVar[bool] = False
    claims: ClassVar[str] = "remote"
    review_fields: ClassVar[tuple[str, ...]] = ()  # empty: nothing it does at apply needs review
    # a plaintext file for the machine that runs apply (never committed): --skip-local-outputs leaves it out
    local: ClassVar[bool] = False

    def runs(self) -> list[str]:
        """argv templates of the programs it runs at apply (their files are tracked for review)."""
        return []

    @classmethod
    def remote_claims(cls, target: Any) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
        """A remote output's claims: what it writes, and what no other declaration may write then."""
        return [], []


class FileOutputBase(OutputSpecBase):
    allow_tracked: bool = False
    allow_outside: bool = False
    mode: Mode = "0600"

    def file_target(
        self, path: str, real: Any, node: tuple[str | int, ...], definition: dict[str, Any], **fields: Any
    ) -> OutputTarget:
        """The resolved target of a file of the project; ``definition`` (what is rendered, never a
        value) gains its path and mode before it is digested."""
        values: dict[str, Any] = {"keys": (), "template": None, "template_source": None, **fields}
        return OutputTarget(
            kind=self.kind,
            path=path,
            mode=int(self.mode, 8),
            allow_tracked=self.allow_tracked,
            allow_outside=self.allow_outside,
            definition_digest=definition_digest({**definition, "path": path, "mode": self.mode}),
            real=str(real),
            node=node,
            **values,
        )


def definition_digest(definition: dict[str, Any]) -> str:
    """Changes when what an output would render changes (its templates, names, paths), not the secret."""
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:32]
