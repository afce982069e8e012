"""API keys: random, shown once, stored as a SHA-256 hash, checked in constant time.

A key reads ``cd_<prefix>_<secret>``. The prefix (public, 12 hex characters) finds the
stored row; the whole key is hashed and compared with :func:`hmac.compare_digest`. Keys
carry 256 bits of randomness, so a fast hash is the right tool (there is nothing to
brute-force as with a password).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_SCHEME = "cd"


@dataclass(frozen=True)
class IssuedKey:
    """A freshly made key: ``plaintext`` is shown once and never stored."""

    plaintext: str
    prefix: str
    secret_hash: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def issue_key() -> IssuedKey:
    prefix = secrets.token_hex(6)
    plaintext = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    return IssuedKey(plaintext=plaintext, prefix=prefix, secret_hash=hash_key(plaintext))


def prefix_of(plaintext: str) -> str | None:
    """The lookup prefix of a presented key, or None when it is not one of ours."""
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or len(parts[1]) != 12:
        return None
    return parts[1]


def matches(plaintext: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_key(plaintext).encode(), secret_hash.encode())
