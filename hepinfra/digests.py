"""Keyed digests: detect edited or stale outputs without storing any secret.

Owns: deriving the digest key from the environment's database API key and the state's
lineage (no extra secret to manage; whoever can read state without the key cannot test
guesses against it), digesting values, and saying whether the key is a secret at all (``secret``:
only such a digest may authorise deleting an output). Must not: be used for anything but comparison.
"""

from __future__ import annotations

import hashlib
import hmac


class Digester:
    """``secret``: keyed by a secret of the environment (its database key or state key). A digest keyed
    by a public constant proves nothing about who wrote a record: nothing is deleted on its word."""

    def __init__(self, api_key: str, lineage: str, *, secret: bool = True) -> None:
        self._key = hmac.new(api_key.encode(), b"hepinfra-digest-v1:" + lineage.encode(), hashlib.sha256).digest()
        self.secret = secret

    def __call__(self, data: str | bytes) -> str:
        raw = data.encode() if isinstance(data, str) else data
        return hmac.new(self._key, raw, hashlib.sha256).hexdigest()[:40]

    def sign(self, data: str | bytes) -> str:
        """An HMAC under a key of its own (derived from this one), so that no digest kept in state can
        stand for a signature: a saved plan's."""
        raw = data.encode() if isinstance(data, str) else data
        key = hmac.new(self._key, b"hepinfra-signing-key-v1", hashlib.sha256).digest()
        return hmac.new(key, raw, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "Digester(<keyed>)"
