"""API key format: `sg-<lookup>.<secret>`. Only a SHA-256 of the whole key is stored; comparison is constant-time.

The lookup part finds the row (and the cache entry) without scanning hashes; the 256-bit secret makes a slow hash
unnecessary (no dictionary to attack), which keeps an uncached check under a millisecond.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets

PREFIX = "sg-"
KEY_RE = re.compile(r"sg-([a-z0-9]{16})\.([A-Za-z0-9_-]{43})")  # whole-string (fullmatch): `$` would let "\n" through


def mint() -> tuple[str, str, str]:
    """A new key: (the key shown once, its lookup id, its hash)."""
    lookup = secrets.token_hex(8)
    key = f"{PREFIX}{lookup}.{secrets.token_urlsafe(32)}"
    return key, lookup, digest(key)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def lookup_of(key: str) -> str | None:
    """The lookup id of a well-formed key, else None."""
    m = KEY_RE.fullmatch(key)
    return m.group(1) if m else None


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(digest(key), stored_hash)


def masked(lookup: str) -> str:
    """How a key is shown after creation (lists, logs, audit): the lookup only."""
    return f"{PREFIX}{lookup}.****"
