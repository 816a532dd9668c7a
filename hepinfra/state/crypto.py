"""Encrypted values in state: AES-256-GCM keyed from ``HEPINFRA_STATE_KEY``, as OpenTofu encrypts state.

Owns: turning the variable into a 256-bit key (a base64 string of exactly 32 bytes is used as the
key; anything else is a passphrase run through scrypt with the state's own random salt), the
check value that tells a wrong key before anything is decrypted or minted, and sealing/opening
one id's value bound to the state's lineage and its address (a ciphertext copied to another
state, even one sharing the key, or to another id does not open). Values sealed before that
binding (bound to the address only) open only when their record says so, and are sealed again.
``state rekey``'s ciphers: the old key's, and a new one whose crypto block also seals the old digest
key (an environment's keyed digests outlive a new state key: no output looks edited after a rekey).
Must not: store, log or raise the key, the passphrase or a plaintext value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from hepinfra.errors import StateError
from hepinfra.safety.redact import register
from hepinfra.state.model import State, StateCrypto

KEY_VAR = "HEPINFRA_STATE_KEY"
OLD_KEY_VAR = "HEPINFRA_STATE_KEY_OLD"  # state rekey: the key the state is sealed with now
_CHECK = b"hepinfra-state-key-check-v1"
_NONCE = 12
_DERIVED: dict[tuple[str, str, int, int, int], bytes] = {}  # scrypt is slow on purpose: once per run


class StateKeyError(StateError):
    """No key, or the wrong one: raised before any API call."""


def _raw_key(secret: str) -> bytes | None:
    text = secret.strip()
    if len(text) not in (43, 44):
        return None
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None,
                               validate=True)  # fmt: skip
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def _derive(secret: str, crypto: StateCrypto) -> bytes:
    if crypto.kdf == "raw":
        raw = _raw_key(secret)
        if raw is None:
            raise StateKeyError(
                f"{KEY_VAR} is a passphrase, but this state's ids were encrypted with a raw 32-byte key",
                hint=f"set {KEY_VAR} to the base64 key that encrypted it",
            )
        return raw
    secret = secret.strip()  # a CI secret stored with a trailing newline is the same passphrase
    marker = (secret, crypto.salt, crypto.n, crypto.r, crypto.p)
    found = _DERIVED.get(marker)
    if found is None:
        found = hashlib.scrypt(
            secret.encode(), salt=base64.b64decode(crypto.salt), n=crypto.n, r=crypto.r, p=crypto.p,
            maxmem=256 * 1024 * 1024, dklen=32,
        )  # fmt: skip
        _DERIVED[marker] = found
    return found


class Cipher:
    """One state's key. ``seal``/``open`` bind each value to its address (associated data)."""

    def __init__(self, key: bytes, crypto: StateCrypto, env: str, lineage: str | None = None) -> None:
        self._key, self.crypto, self._env = key, crypto, env
        self.lineage = lineage  # of the state it was opened for (None: no state yet)

    def __repr__(self) -> str:
        return "Cipher(<key>)"

    def _aead(self) -> object:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(self._key)

    def seal(self, plaintext: bytes, address: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead().encrypt(nonce, plaintext, address.encode())  # type: ignore[attr-defined]
        return base64.b64encode(nonce + sealed).decode()

    def open(self, token: str, address: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.b64decode(token, validate=True)
            opened: bytes = self._aead().decrypt(raw[:_NONCE], raw[_NONCE:], address.encode())  # type: ignore[attr-defined]
        except (InvalidTag, binascii.Error, ValueError):
            raise StateKeyError(
                f"{address}: its encrypted value in the state of environment '{self._env}' does not open with "
                f"{KEY_VAR} (wrong key, or the state was edited); no new value was minted",
                hint=f"set {KEY_VAR} to the key this state was written with",
            ) from None
        return opened

    def seal_id(self, plaintext: bytes, address: str, lineage: str) -> str:
        """An id's value, bound to this state's lineage and the id's address (``bound: lineage+address``)."""
        return self.seal(plaintext, id_binding(address, lineage))

    def open_id(self, token: str, address: str, lineage: str, bound: str | None) -> bytes:
        """An id's value. ``bound`` (from its record): "lineage+address", or None for a value sealed before
        lineage binding, which alone is opened bound to the address only. A value that does not open here
        was sealed for another state or address (copied), or the state was edited: nothing falls back."""
        try:
            return self.open(token, id_binding(address, lineage) if bound is not None else address)
        except StateKeyError:
            raise StateKeyError(
                f"{address}: its encrypted value in the state of environment '{self._env}' (lineage {lineage}) "
                "does not open: it was not sealed for this id in this state (copied from another state or id, "
                "or edited); nothing was decrypted, minted or written",
                hint="restore the state from its backup, or 'hepinfra state rm' the id and apply to mint a new one",
            ) from None

    def digest_key(self) -> str:
        """Key material for the environment's keyed digests when it has no database key: derived from
        this key, or (a rekeyed state) the first key's, kept sealed in the crypto block."""
        sealed = self.crypto.digest_key
        if sealed is None:
            return hashlib.sha256(b"hepinfra-digest-key:" + self._key).hexdigest()
        try:
            assert self.lineage is not None  # a crypto block that seals a digest key is a state's
            return self.open(sealed, _digest_binding(self.lineage)).decode()
        except (StateKeyError, AssertionError, UnicodeDecodeError):
            raise StateKeyError(
                f"the state of environment '{self._env}': its sealed digest key (crypto.digest_key) does not "
                "open (edited?); nothing was decrypted or written",
                hint="restore the state from its backup",
            ) from None


def id_binding(address: str, lineage: str) -> str:
    """The associated data of an id's value: the state's lineage and the id's address."""
    return f"hepinfra-id-v2\x00{lineage}\x00{address}"


def _digest_binding(lineage: str) -> str:
    return f"hepinfra-digest-key-v1\x00{lineage}"


def local_key(project_dir: Path) -> str:
    """The state key of the embedded local hep.gg (``url: local``) when HEPINFRA_STATE_KEY is unset: a
    random 32-byte key in ``.hepinfra/local/state.key`` (mode 0600), made at first use. Only the
    sandbox gets one: against a real hep.gg the variable is required."""
    from hepinfra.fsutil import refuse_links

    path = project_dir / ".hepinfra" / "local" / "state.key"
    refuse_links(path.parent, project_dir)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:  # never replaced: it is the only copy of the key
        raise StateKeyError(f"{path}: the local hep.gg's state key cannot be read ({exc}); not replaced") from None
    if text:
        if _raw_key(text) is None:
            raise StateKeyError(
                f"{path}: the local hep.gg's state key is not a base64 32-byte key (edited?); not replaced",
                hint="restore it, or set HEPINFRA_STATE_KEY",
            )
        register(text)
        return text
    text = base64.b64encode(os.urandom(32)).decode()
    write_key_file(path, text)
    register(text)
    return text


def write_key_file(path: Path, text: str) -> None:
    """A key file, mode 0600, whole or not at all (written beside it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def cipher_for(env: str, state: State | None, environ: Mapping[str, str], source: str = KEY_VAR) -> Cipher:
    """The state's cipher: its key checked against the stored check value, or a new salt and check
    for a state that has none yet (written with the first minted id). Raises before any API call.
    ``source``: where the key came from, for messages (the variable, or the sandbox's key file)."""
    secret = environ.get(KEY_VAR, "")
    if state is not None and state.sealed() and state.crypto is None:
        raise StateKeyError(
            f"the state of environment '{env}' holds ids but no 'crypto' block (edited?): their values cannot be "
            "opened; nothing was decrypted or minted",
            hint="restore the state from its backup (state pull / state push), or 'hepinfra state rm' the ids",
        )
    if not secret.strip():
        raise StateKeyError(
            f"environment '{env}' manages ids or alternating roles, whose values are kept encrypted in state: "
            f"{KEY_VAR} is not set",
            hint=f"export {KEY_VAR} (a passphrase, or a base64 32-byte key: openssl rand -base64 32); keep it "
            "in your CI's secret store",
        )
    register(secret, secret.strip())
    crypto = state.crypto if state is not None else None
    if crypto is not None and state is not None and not state.sealed() and not _opens(secret, crypto, env):
        crypto = None  # nothing is encrypted under the old key any more: start afresh with this one
    if crypto is None:
        return _fresh(secret, env, state.lineage if state is not None else None)
    key = _derive(secret, crypto)  # a passphrase given for a raw key (or the reverse) says so
    if not _opens(secret, crypto, env):
        raise StateKeyError(
            f"{source} is not the key the state of environment '{env}' was encrypted with; nothing was "
            "decrypted or minted",
            hint=f"set {KEY_VAR} to the key this state was written with",
        )
    return Cipher(key, crypto, env, state.lineage if state is not None else None)


def _fresh(secret: str, env: str, lineage: str | None) -> Cipher:
    """A cipher under ``secret`` with a new salt and check value."""
    raw = _raw_key(secret)
    draft = StateCrypto.model_construct(
        kdf="raw" if raw is not None else "scrypt", salt=base64.b64encode(os.urandom(16)).decode(), check=""
    )
    key = raw if raw is not None else _derive(secret, draft)
    cipher = Cipher(key, draft, env, lineage)
    cipher.crypto = StateCrypto.model_validate({**draft.model_dump(), "check": cipher.seal(_CHECK, "check")})
    return cipher


def same_key(one: str, other: str) -> bool:
    """Whether two values of the variable are one key (a raw key in either base64 alphabet, a
    passphrase with or without its trailing newline)."""
    raw_one, raw_other = _raw_key(one), _raw_key(other)
    if raw_one is not None or raw_other is not None:
        return raw_one == raw_other
    return one.strip() == other.strip()


def rekey_ciphers(env: str, state: State, old: str, new: str, old_source: str) -> tuple[Cipher, Cipher] | None:
    """``state rekey``: the state's cipher under the ``old`` key and a new cipher under ``new`` (a new
    salt and check value; the old cipher's digest key sealed in its crypto block, so every keyed digest
    of the environment stays valid), or None when the state is under ``new`` already (a re-run after a
    rekey that stopped partway). Raises when ``old`` does not open it."""
    crypto = state.crypto
    assert crypto is not None
    register(old, old.strip(), new, new.strip())
    if _opens(new, crypto, env):
        return None
    if not _opens(old, crypto, env):
        raise StateKeyError(
            f"{old_source} is not the key the state of environment '{env}' was encrypted with (nor is "
            f"{KEY_VAR}); nothing was decrypted or written",
            hint=f"set {old_source} to the key this state was written with",
        )
    opened = Cipher(_derive(old, crypto), crypto, env, state.lineage)
    fresh = _fresh(new, env, state.lineage)
    sealed = fresh.seal(opened.digest_key().encode(), _digest_binding(state.lineage))
    fresh.crypto = StateCrypto.model_validate({**fresh.crypto.model_dump(), "digest_key": sealed})
    return opened, fresh


def _opens(secret: str, crypto: StateCrypto, env: str) -> bool:
    """Does ``secret`` open this state's check value?"""
    try:
        return Cipher(_derive(secret, crypto), crypto, env).open(crypto.check, "check") == _CHECK
    except StateKeyError:
        return False
