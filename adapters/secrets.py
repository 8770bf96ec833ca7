"""Secrets that must be used again (a webhook's signing key) are stored encrypted, never in clear.

The key is SCAIGRID_SECRET_KEY (a Fernet key: `python -c "from cryptography.fernet import Fernet;
print(Fernet.generate_key().decode())"`); without it, one is made once in ~/.config/scaigrid/secret.key (0600),
which suits a single host. Every replica of a deployment must share the same key.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = Path.home() / ".config" / "scaigrid" / "secret.key"


@lru_cache(maxsize=1)
def _fernet() -> Fernet:
    key = os.environ.get("SCAIGRID_SECRET_KEY")
    if not key:
        if not KEY_FILE.exists():
            KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(Fernet.generate_key())
        key = KEY_FILE.read_text().strip()
    return Fernet(key.encode() if isinstance(key, str) else key)


def encrypt(value: str) -> dict:
    return {"$encrypted": _fernet().encrypt(value.encode()).decode()}


def decrypt(value: dict) -> str:
    try:
        return _fernet().decrypt(value["$encrypted"].encode()).decode()
    except InvalidToken:
        raise RuntimeError("cannot decrypt a stored secret: SCAIGRID_SECRET_KEY differs from the one that "
                           "encrypted it; set the deployment's key on every replica") from None


def is_encrypted(value) -> bool:
    return isinstance(value, dict) and set(value) == {"$encrypted"}
