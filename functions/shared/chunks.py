"""Reading a chat completion chunk (or a whole chat answer, where a route answered a stream without streaming), as
the handlers and steps that turn chat chunks into another API's events do."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def choices(data: Any) -> Iterator[tuple[str | None, dict]]:
    """(text, choice) for each choice: a delta's content, or a whole message's."""
    for choice in (data.get("choices") or ()) if isinstance(data, dict) else ():
        yield (choice.get("delta") or choice.get("message") or {}).get("content"), choice
