"""Embeddings and tokenizers from the inference function, for the functions that call it directly (graph.yaml
`calls: [inference.embed, inference.embedding_model]`): RAG queries and ingestion; and the usage they cause, handed to
the ledger (graph.yaml `emits: [accounting.record]`), since no route's own after-step sees it."""
from __future__ import annotations

import numpy as np
from nameko.extensions import DependencyProvider
from tokenizers import Tokenizer

from scaigrid.runtime.errors import BadRequest
from scaigrid.runtime.executor import executor_of

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"  # for collections that name none (graph.yaml may set another)


class EmbeddingClient:
    """`calls` is the function's RouteRunner; `tokenizers` the process's cache, keyed by models the inference
    function knows (an unknown one is refused before anything is stored): bounded by the registry."""

    def __init__(self, calls, tokenizers: dict[str, Tokenizer]):
        self.calls = calls
        self.tokenizers = tokenizers

    def embed(self, model: str, texts: list[str]) -> tuple[list[list[float]], int]:
        """(vectors, tokens used)."""
        out = self.calls.call("inference.embed", model, texts)
        matrix = np.frombuffer(out["vectors"], "<f4").reshape(out["count"], out["dimensions"])
        return matrix.tolist(), int(out["tokens"])

    def model(self, model: str) -> dict:
        """The embedding model's width, window and tokenizer (inference.embedding_model)."""
        return self.calls.call("inference.embedding_model", model)

    def tokenizer(self, model: str, fallback: str | None = None) -> Tokenizer:
        """The model's own tokenizer (tokenizer.json is ~700 kB to send: fetched once per process). An upstream
        model's is not ours to know: the `fallback` (local) model's counts stand in, so chunks come out roughly, not
        exactly, chunk_size of the upstream's tokens."""
        found = self.tokenizers.get(model)
        if found is None:
            info = self.model(model)
            if info["tokenizer"] is None:
                if fallback and fallback != model:
                    return self.tokenizer(fallback)
                raise BadRequest(f"the embedding model '{model}' has no local tokenizer to chunk with")
            found = self.tokenizers[model] = Tokenizer.from_str(info["tokenizer"])
        return found

    def record_usage(self, envelope: dict, suffix: str, model: str, tokens: int) -> None:
        """One ledger record for embedding tokens spent on behalf of `envelope`'s caller. Its id is the request's id
        plus `suffix`, so a redelivered job or a retried record is written once (the ledger is idempotent on it)."""
        if tokens <= 0 or not envelope.get("principal"):
            return
        self.calls.emit("accounting.record", {
            "id": f"{envelope['id'][:100]}:{suffix}"[:128], "route": envelope["route"], "request": {"model": model},
            "principal": envelope["principal"], "tenant": envelope.get("tenant"), "context": {}, "error": None,
            "usage": {"prompt_tokens": int(tokens), "completion_tokens": 0, "total_tokens": int(tokens)}})


class EmbeddingClientProvider(DependencyProvider):
    """Hands each worker an EmbeddingClient over the function's own Executor (its `calls:` edges)."""

    def setup(self):
        self.tokenizers: dict[str, Tokenizer] = {}
        self.executor = None

    def get_dependency(self, worker_ctx):
        if self.executor is None:  # found once, not per worker
            self.executor = executor_of(self.container)
        return EmbeddingClient(self.executor.get_dependency(worker_ctx), self.tokenizers)
