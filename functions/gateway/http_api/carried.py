"""What the bus can carry: every envelope crosses RabbitMQ as msgpack, so a parsed body holding a string UTF-8
cannot encode (JSON's "\\ud800" escapes decode to lone surrogates) or an integer past 64 bits is refused at the door
with a 400 naming the field, instead of failing at the first hop with a 503 that blames the bus."""
from __future__ import annotations

from typing import Any

import msgpack


def uncarried(body: Any) -> tuple[tuple, str] | None:
    """Where in a parsed body a value hides that the bus cannot carry, and why, else None: a string UTF-8 cannot
    encode (JSON's "\\ud800" escapes decode to lone surrogates) or an integer msgpack cannot hold (past 64 bits).
    Every hop after the door would fail on it, with a 503 that blames the bus, and an after-step event that cannot
    be sent would stay at the head of the spool. One msgpack pass (as the bus packs, in C) clears a sound body;
    only a refused one is walked, to name the field."""
    try:
        msgpack.packb(body, use_bin_type=True)
        return None
    except (ValueError, OverflowError):  # UnicodeEncodeError is a ValueError
        pass
    parents: list[tuple[int, Any]] = []  # per container met: its parent's index there and its key in the parent
    stack: list[tuple[int, Any, Any]] = [(-1, None, body)]
    while stack:  # not recursive: as deep as json.loads lets a body be
        parent, key, value = stack.pop()
        if isinstance(value, (dict, list)):
            parents.append((parent, key))
            here = len(parents) - 1
            for name, item in value.items() if isinstance(value, dict) else enumerate(value):
                if isinstance(name, str) and not _encodes(name):
                    return (_path(parents, here, name.encode("utf-8", "backslashreplace").decode()),
                            "a key with an unpaired surrogate: not valid UTF-8")
                stack.append((here, name, item))
        elif isinstance(value, str) and not _encodes(value):
            return _path(parents, parent, key), "a string with an unpaired surrogate: not valid UTF-8"
        elif isinstance(value, int) and not -2**63 <= value < 2**64:
            return _path(parents, parent, key), "an integer outside -2^63 to 2^64-1"
    return (), "a value the message bus cannot carry"


def _path(parents: list[tuple[int, Any]], index: int, key: Any) -> tuple:
    """The keys from the body down to `key` of the container met `index`-th (-1: the body itself, no key)."""
    keys = [key] if index >= 0 else []
    while index > 0:  # the body (index 0) has no key of its own
        index, key = parents[index]
        keys.append(key)
    return tuple(reversed(keys))


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
