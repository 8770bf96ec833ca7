"""Embeddings and tokenizers from the inference function, for the functions that call it directly (graph.yaml
`calls: [inference.embed, inference.embedding_model]`): RAG queries and ingestion; and the usage they cause, handed to
the ledger (graph.yaml `emits: [accounting.record]`), since no route's own after-step sees it."""
from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from scaigrid.runtime.errors import BadRequest

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"  # for collections that name none (graph.yaml may set another)
_tokenizers: dict[str, Tokenizer] = {}  # per process and model: tokenizer.json is ~700 kB to send


def embed(calls, model: str, texts: list[str]) -> tuple[list[list[float]], int]:
    """(vectors, tokens used); `calls` is the function's Executor."""
    out = calls.call("inference.embed", model, texts)
    matrix = np.frombuffer(out["vectors"], "<f4").reshape(out["count"], out["dimensions"])
    return matrix.tolist(), int(out["tokens"])


def tokenizer_for(calls, model: str, fallback: str | None = None) -> Tokenizer:
    """The model's own tokenizer. An upstream model's is not ours to know: the `fallback` (local) model's counts
    stand in, so chunks come out roughly, not exactly, chunk_size of the upstream's tokens."""
    found = _tokenizers.get(model)
    if found is None:
        info = calls.call("inference.embedding_model", model)
        if info["tokenizer"] is None:
            if fallback and fallback != model:
                return tokenizer_for(calls, fallback)
            raise BadRequest(f"the embedding model '{model}' has no local tokenizer to chunk with")
        found = _tokenizers[model] = Tokenizer.from_str(info["tokenizer"])
    return found


def record_usage(calls, envelope: dict, suffix: str, model: str, tokens: int) -> None:
    """One ledger record for embedding tokens spent on behalf of `envelope`'s caller. Its id is the request's id plus
    `suffix`, so a redelivered job or a retried record is written once (the ledger is idempotent on it)."""
    if tokens <= 0 or not envelope.get("principal"):
        return
    calls.emit("accounting.record", {
        "id": f"{envelope['id'][:100]}:{suffix}"[:128], "route": envelope["route"], "request": {"model": model},
        "principal": envelope["principal"], "tenant": envelope.get("tenant"), "context": {}, "error": None,
        "usage": {"prompt_tokens": int(tokens), "completion_tokens": 0, "total_tokens": int(tokens)}})
