"""Reading a chat completion chunk (or a whole chat answer, where a route answered a stream without streaming), as
the handlers and steps that turn chat chunks into another API's events do."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def choices(data: Any) -> Iterator[tuple[str | None, dict]]:
    """(text, choice) for each choice: a delta's content, or a whole message's."""
    for choice in (data.get("choices") or ()) if isinstance(data, dict) else ():
        yield (choice.get("delta") or choice.get("message") or {}).get("content"), choice


# what a chat chunk or answer carries by OpenAI's definition; anything else at the top was added by a step
# (context.answer_fields, e.g. rag's citations, on the answer or a stream's first chunk)
OWN_FIELDS = frozenset({"id", "object", "created", "model", "choices", "usage", "system_fingerprint",
                        "service_tier", "prompt_filter_results"})


def added_fields(data: Any) -> dict[str, Any]:
    """The fields earlier steps added to a chat answer or chunk, for another API's answer to carry as well."""
    return {k: v for k, v in data.items() if k not in OWN_FIELDS} if isinstance(data, dict) else {}
