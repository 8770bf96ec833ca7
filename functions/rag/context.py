"""How retrieved passages reach the model and the client: numbered source blocks in a system message, and the
`citations` of the answer, whose `index` is the [n] the model was asked to cite."""
from __future__ import annotations

from scaigrid.adapters.vector.fusion import reciprocal_rank_fusion

INSTRUCTIONS = ("Answer from the numbered sources below when they are relevant, and cite each source you use by "
                "its number, like [1]. If the sources do not hold the answer, say so.")


def last_user_text(messages: list[dict]) -> str:
    """The question to retrieve for: the last user message's text (text parts of a multi-part message joined)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            return content or ""
    return ""


def citations_of(rankings: list[list[dict]], top_k: int) -> list[dict]:
    """One list out of each collection's hits (reciprocal rank fusion when there are several), numbered from 1."""
    if not rankings:
        return []
    hits = rankings[0][:top_k] if len(rankings) == 1 else reciprocal_rank_fusion(rankings, limit=top_k)
    return [{"index": n, "collection_id": h["collection_id"], "document_id": h["document_id"],
             "document": h["document_name"], "chunk_id": h["chunk_id"], "score": round(float(h["score"]), 6),
             "text": h["text"]} for n, h in enumerate(hits, start=1)]


def inject_context(messages: list[dict], citations: list[dict], max_chars: int) -> list[dict]:
    """The messages with one system message of sources, placed after the caller's own system messages (which
    keep their say). Passages past `max_chars` are left out, whole, so the prompt stays inside the model's window;
    their citations stay (the client still sees what was found)."""
    blocks, used = [], 0
    for c in citations:
        block = f"[{c['index']}] {c['document']}\n{c['text'].strip()}"
        if blocks and used + len(block) > max_chars:
            break
        blocks.append(block)
        used += len(block)
    context = {"role": "system", "content": INSTRUCTIONS + "\n\n" + "\n\n".join(blocks)}
    leading = 0
    while leading < len(messages) and messages[leading].get("role") in ("system", "developer"):
        leading += 1
    return [*messages[:leading], context, *messages[leading:]]
