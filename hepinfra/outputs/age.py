"""The age sink: a dotenv body encrypted to the manifest's recipients (age's format, by pyrage),
a file that is safe to commit: what a GitOps repository keeps.

Owns: rendering the keys as dotenv entries (quoted so that python-dotenv, compose and bash read
them back exactly), encrypting, and writing atomically with the file sinks' path rules, locks and
mode. hepinfra cannot decrypt the file: it records a keyed digest of the ciphertext it wrote (and
of each plaintext value), so an edited or missing file is found, and a stale password by the
password digest, as for any output.
The ``age:`` output's schema and resolution live here too (``AgeOutput``).
Must not: hold an identity (private key), or put a value in an exception.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, model_validator

from hepinfra.digests import Digester
from hepinfra.errors import OutputError
from hepinfra.fsutil import atomic_write
from hepinfra.outputs.base import Written, delivered, existing_mode, observe_whole_file, remove_whole_file, render_keys
from hepinfra.spec import EnvVarName, FileOutputBase
from hepinfra.values import ObservedOutput, OutputTarget

if TYPE_CHECKING:
    from hepinfra.resolution import Resolution


def recipients(texts: tuple[str, ...]) -> list[Any]:
    """pyrage recipients (age X25519 ``age1...`` or SSH ``ssh-ed25519``/``ssh-rsa`` keys); ValueError
    naming the first that is not one."""
    from hepinfra.extras import MissingExtraError, require

    try:
        require("pyrage", "the age output", "age")
    except MissingExtraError as exc:
        raise ValueError(exc.message) from None
    from pyrage import ssh, x25519

    out: list[Any] = []
    for i, text in enumerate(texts):
        try:
            out.append(ssh.Recipient.from_str(text) if text.startswith("ssh-") else x25519.Recipient.from_str(text))
        except Exception:
            raise ValueError(
                f"recipient {i + 1} is not an age recipient (age1...) or an SSH public key (ssh-ed25519 / ssh-rsa)"
            ) from None
    if not out:
        raise ValueError("an age output needs at least one recipient")
    return out


class AgeSink:
    kind = "age"
    deterministic = False  # age encrypts with a fresh file key each time

    def observe(self, file: Path, target: OutputTarget, keys: tuple[str, ...], digest: Digester) -> ObservedOutput:
        return observe_whole_file(file, digest)

    def write(
        self,
        file: Path,
        target: OutputTarget,
        context: dict[str, Any],
        digest: Digester,
        *,
        previous_keys: tuple[str, ...] = (),
    ) -> Written:
        from hepinfra.extras import require

        encrypt = require("pyrage", "the age output", "age").encrypt
        from hepinfra.templates import QuotingError, dotenv_quote

        values = render_keys(target, context)
        lines = []
        for key, value in values.items():
            try:
                lines.append(f"{key}={dotenv_quote(value)}\n")
            except QuotingError as exc:
                raise OutputError(f"{target.path}: {key}: the value cannot be a dotenv entry: {exc}") from None
        try:
            data = encrypt("".join(lines).encode(), recipients(target.recipients))
        except ValueError as exc:
            raise OutputError(f"{target.path}: {exc}") from None
        atomic_write(file, data, existing_mode(file, target.mode), sync_dir=False)
        return Written(digest(data), delivered(values, digest).key_digests)  # the file's digest, each value's

    def retire(self, file: Path, keys: tuple[str, ...]) -> None:
        remove_whole_file(file)


# --- the manifest's ``age:`` output ---------------------------------------------------------------


class AgeOutput(FileOutputBase):
    """A dotenv body encrypted to recipients with age: a file that is safe to commit."""

    kind: ClassVar[str] = "age"
    review_fields: ClassVar[tuple[str, ...]] = ("age", "recipients", "recipients_file", "keys")
    claims: ClassVar[str] = "whole"  # keys inside a file, a whole file, or nothing of the project
    remote: ClassVar[bool] = False

    age: str = Field(min_length=1)  # the file's path, a template
    keys: dict[EnvVarName, str] = Field(min_length=1)
    recipients: list[str] | None = Field(default=None, min_length=1)  # age1... or ssh-ed25519/ssh-rsa keys
    recipients_file: str | None = Field(default=None, min_length=1)  # one per line, # comments
    allow_tracked: bool = True  # an encrypted file is meant to be committed

    @model_validator(mode="after")
    def _one_of(self) -> AgeOutput:
        if (self.recipients is None) == (self.recipients_file is None):
            raise ValueError("give either recipients: or recipients_file:, not both or neither")
        return self

    def resolve(
        self, r: Resolution, base: tuple[str | int, ...], context: dict[str, Any], value_context: dict[str, Any]
    ) -> OutputTarget:
        """A file like a dotenv one, its recipients parsed now (offline)."""
        node: tuple[str | int, ...] = (*base, "age")
        path, real = r.check_path(r.render(self.age, context, node), self, node)
        if self.recipients_file is not None:
            where = (*base, "recipients_file")
            source = r.template_file(self.recipients_file, where, self.allow_outside)
            found = tuple(ln.strip() for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#"))
        else:
            where, found = (*base, "recipients"), tuple(x.strip() for x in self.recipients or ())
        try:
            recipients(found)
        except ValueError as exc:
            raise r.error(where, str(exc)) from None
        for k, source_text in self.keys.items():
            r.dry_render(source_text, value_context, (*base, "keys", k))
        definition = {"kind": "age", "keys": sorted(self.keys.items()), "recipients": sorted(found)}
        return self.file_target(path, real, node, definition, keys=tuple(self.keys.items()), recipients=found)
