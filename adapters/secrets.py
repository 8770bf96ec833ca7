"""Secrets that must be used again (a webhook's signing key) are stored encrypted, never in clear.

The key is SCAIGRID_SECRET_KEY: one Fernet key (`python -c "from cryptography.fernet import Fernet;
print(Fernet.generate_key().decode())"`), or several separated by commas to rotate: `new,old` encrypts with the
first and decrypts with any (cryptography's MultiFernet). Every replica of a deployment, on every host, must have
the same list; the generated compose, Kubernetes and systemd files require it from the operator's secrets.

Where it is not set: a systemd credential of that name (`LoadCredential=SCAIGRID_SECRET_KEY:...`, read from
$CREDENTIALS_DIRECTORY, so the key is in no environment), else a key made once in ~/.config/scaigrid/secret.key
(0600), which suits one host only: a second host would make a different one.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

ENV = "SCAIGRID_SECRET_KEY"
CREDENTIAL = ENV  # the name the generated systemd units load the key file under
KEY_FILE = Path.home() / ".config" / "scaigrid" / "secret.key"
MAKE_ONE = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


class SecretKeyError(RuntimeError):
    """The key is malformed, or cannot decrypt what is stored: one line naming the key's source, never the key."""


def _credential() -> Path | None:
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    path = Path(folder) / CREDENTIAL if folder else None
    return path if path is not None and path.is_file() else None


def key_source() -> str:
    """Where the key comes from, in words for error messages: the variable, the credential or the key file."""
    if os.environ.get(ENV):
        return ENV
    credential = _credential()
    if credential is not None:
        return f"{ENV} (systemd credential {credential})"
    return f"the key file {KEY_FILE} ({ENV} is not set)"


def _raw_keys() -> str:
    if os.environ.get(ENV):
        return os.environ[ENV]
    credential = _credential()
    if credential is not None:
        return credential.read_text()
    if not KEY_FILE.exists():
        KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(Fernet.generate_key())
    return KEY_FILE.read_text()


@lru_cache(maxsize=4)  # keyed by the raw text: a changed environment (tests, a reload) parses afresh
def _parse(raw: str, source: str) -> MultiFernet:
    pieces = [piece.strip() for piece in raw.strip().split(",")]
    fernets = []
    for i, piece in enumerate(pieces, 1):
        where = f"key {i} of {len(pieces)}" if len(pieces) > 1 else "the key"
        if not piece:
            raise SecretKeyError(f"{source}: {where} is empty; give one Fernet key, or `new,old` to rotate")
        try:
            fernets.append(Fernet(piece))
        except ValueError:  # the message would not show the key either; ours says what a key looks like
            raise SecretKeyError(f"{source}: {where} is not a Fernet key (44 characters of url-safe base64, "
                                 f"32 bytes); make one with: {MAKE_ONE}") from None
    return MultiFernet(fernets)


def keys() -> MultiFernet:
    """The deployment's keys: the first encrypts, every one decrypts. SecretKeyError if one is malformed."""
    return _parse(_raw_keys(), key_source())


def check_key() -> None:
    """Parse the configured key(s) without making a key file: a malformed key fails start-up, not a request."""
    if os.environ.get(ENV) or _credential() is not None:
        keys()


def encrypt(value: str) -> dict:
    """`{"$encrypted": token}` with the first key."""
    return {"$encrypted": keys().encrypt(value.encode()).decode()}


def decrypt(value: dict) -> str:
    """The clear text of an `encrypt` result; SecretKeyError when no configured key opens it."""
    try:
        return keys().decrypt(value["$encrypted"].encode()).decode()
    except InvalidToken:
        raise SecretKeyError(f"cannot decrypt a stored secret: {key_source()} differs from the key that "
                             f"encrypted it; set the deployment's key on every replica") from None


def rotate(value: dict) -> dict:
    """The same secret encrypted with the first key (MultiFernet.rotate), so older keys can be retired."""
    try:
        return {"$encrypted": keys().rotate(value["$encrypted"].encode()).decode()}
    except InvalidToken:
        raise SecretKeyError(f"cannot re-encrypt a stored secret: no key of {key_source()} opens it") from None


def is_encrypted(value) -> bool:
    """Whether a stored config value is an `encrypt` result."""
    return isinstance(value, dict) and set(value) == {"$encrypted"}
