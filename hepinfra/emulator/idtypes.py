"""The eight ID Generator flavours of the local hep.gg, with plausible per-type options.

Owns: minting one ID from a type and its options, and the 400 messages for bad options.
The real options are undocumented except ``length`` (nanoid) and ``style`` (words); every
choice here is listed in docs/emulator.md. Must not: know about HTTP or credentials.
"""

from __future__ import annotations

import base64
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

NANOID_ALPHABET = string.ascii_letters + string.digits + "_-"
LICENSE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
SNOWFLAKE_EPOCH_MS = 1_420_070_400_000  # 2015-01-01, as Discord's
WORD_STYLES = ("kebab", "snake", "camel", "pascal", "space", "title")


class IdOptionError(ValueError):
    """A missing or invalid option; ``str()`` is the exact 400 message."""


def _int_option(options: Mapping[str, Any], name: str, *, default: int | None, low: int, high: int) -> int:
    raw = options.get(name)
    if raw is None or raw == "":
        if default is None:
            raise IdOptionError(f"Please specify the {name}")
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise IdOptionError(f"The {name} must be a whole number") from None
    if isinstance(raw, float) and raw != value:
        raise IdOptionError(f"The {name} must be a whole number")
    if not low <= value <= high:
        raise IdOptionError(f"The {name} must be between {low} and {high}")
    return value


def _nanoid(options: Mapping[str, Any]) -> dict[str, str]:
    length = _int_option(options, "length", default=None, low=1, high=255)
    alphabet = str(options.get("alphabet") or NANOID_ALPHABET)
    if len(set(alphabet)) < 2:
        raise IdOptionError("The alphabet must have at least 2 different characters")
    return {"id": "".join(secrets.choice(alphabet) for _ in range(length))}


def _two_fa(options: Mapping[str, Any]) -> dict[str, str]:
    length = _int_option(options, "length", default=32, low=16, high=128)
    raw = base64.b32encode(secrets.token_bytes(length)).decode().rstrip("=")
    return {"id": raw[:length]}


def _license(options: Mapping[str, Any]) -> dict[str, str]:
    segments = _int_option(options, "segments", default=5, low=1, high=16)
    size = _int_option(options, "segmentLength", default=5, low=1, high=16)
    parts = ("".join(secrets.choice(LICENSE_ALPHABET) for _ in range(size)) for _ in range(segments))
    return {"id": "-".join(parts)}


_WORDS: list[str] = []


def _word_list() -> list[str]:
    if not _WORDS:
        text = resources.files("hepinfra.emulator").joinpath("words.txt").read_text()
        _WORDS.extend(w for w in text.split() if w.isalpha())
    return _WORDS


def _words(options: Mapping[str, Any]) -> dict[str, str]:
    count = _int_option(options, "count", default=3, low=1, high=16)
    style = str(options.get("style") or "kebab")
    if style not in WORD_STYLES:
        raise IdOptionError(f"Unknown style {style}, use one of {', '.join(WORD_STYLES)}")
    words = [secrets.choice(_word_list()) for _ in range(count)]
    joined = {
        "kebab": "-".join(words),
        "snake": "_".join(words),
        "camel": words[0] + "".join(w.title() for w in words[1:]),
        "pascal": "".join(w.title() for w in words),
        "space": " ".join(words),
        "title": " ".join(w.title() for w in words),
    }[style]
    return {"id": joined}


class _Snowflake:
    """64 bits: 42 of milliseconds since 2015, 10 of worker, 12 of sequence; strictly increasing."""

    def __init__(self, worker: int = 1) -> None:
        self._lock = threading.Lock()
        self._last = 0
        self._seq = 0
        self._worker = worker & 0x3FF

    def __call__(self, options: Mapping[str, Any]) -> dict[str, str]:
        with self._lock:
            now = int(time.time() * 1000) - SNOWFLAKE_EPOCH_MS
            if now <= self._last:
                self._seq = (self._seq + 1) & 0xFFF
                if self._seq == 0:
                    self._last += 1
                now = self._last
            else:
                self._seq = 0
            self._last = now
            return {"id": str((now << 22) | (self._worker << 12) | self._seq)}


def _keypair(options: Mapping[str, Any]) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    private = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return {"id": public.hex(), "privateID": private.hex()}


def _cuid(options: Mapping[str, Any]) -> dict[str, str]:
    length = _int_option(options, "length", default=24, low=2, high=32)
    first = secrets.choice(string.ascii_lowercase)
    rest = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(length - 1))
    return {"id": first + rest}


GENERATORS: dict[str, Callable[[Mapping[str, Any]], dict[str, str]]] = {
    "uuid": lambda options: {"id": str(uuid.uuid4())},
    "nanoid": _nanoid,
    "2fa": _two_fa,
    "license": _license,
    "words": _words,
    "word": _words,
    "snowflake": _Snowflake(),
    "keypair": _keypair,
    "cuid": _cuid,
}
