"""Retrieval for one collection: vector, keyword, hybrid (both fused by reciprocal rank) and hybrid + knowledge
graph (the chunks that mention the query's entities, or entities related to them, fused in as a third ranking).

Each ranking takes `candidates` hits (more than asked: fusion works on the union, and a chunk ranked 12th by both
lists beats one ranked 3rd by one of them), the fused list is cut to `top_k`. Every hit says which rankings found
it (`sources`), so a caller can see what the graph added.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from scaigrid.adapters.vector.base import Hit, Scalar, VectorStore
from scaigrid.adapters.vector.fusion import reciprocal_rank_fusion

MODES = ("vector", "keyword", "hybrid", "hybrid_graph")
MIN_CANDIDATES = 20
GRAPH_HOPS = 1  # the query's entities and their direct neighbours; 2 hops drifts off topic on small corpora


@dataclass
class Retriever:
    """The parts one search needs; `embed(text) -> vector` and `query_entities(text) -> names` are the caller's
    (the RAG function calls inference and spaCy through its own dependencies)."""

    store: VectorStore
    embed: Callable[[str], list[float]]
    graph: Any = None  # a KnowledgeGraph, or None where none is configured
    query_entities: Callable[[str], list[str]] | None = None

    def search(self, tenant: str, collection: str, query: str, top_k: int = 5, mode: str = "hybrid",
               filters: Mapping[str, Scalar] | None = None) -> list[dict]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        candidates = max(MIN_CANDIDATES, 4 * top_k)
        rankings: dict[str, list[Hit]] = {}
        if mode in ("vector", "hybrid", "hybrid_graph"):
            rankings["vector"] = self.store.search_vector(tenant, collection, self.embed(query),
                                                          k=top_k if mode == "vector" else candidates,
                                                          filters=filters)
        if mode in ("keyword", "hybrid", "hybrid_graph"):
            rankings["keyword"] = self.store.search_keyword(tenant, collection, query,
                                                            k=top_k if mode == "keyword" else candidates,
                                                            filters=filters)
        if mode == "hybrid_graph" and self.graph is not None and self.query_entities is not None:
            rankings["graph"] = self._graph_ranking(tenant, collection, query, candidates, filters)
        if len(rankings) == 1:
            (source, hits), = rankings.items()
            return [{**h, "sources": [source]} for h in hits[:top_k]]
        found: dict[str, list[str]] = {}
        for source, hits in rankings.items():
            for h in hits:
                found.setdefault(h["chunk_id"], []).append(source)
        fused = reciprocal_rank_fusion(list(rankings.values()), limit=top_k)
        return [{**h, "sources": found[h["chunk_id"]]} for h in fused]

    def _graph_ranking(self, tenant: str, collection: str, query: str, candidates: int,
                       filters: Mapping[str, Scalar] | None) -> list[Hit]:
        names = self.query_entities(query)
        if not names:
            return []
        related = self.graph.related_chunks(tenant, collection, names, hops=GRAPH_HOPS, limit=candidates)
        # the graph keeps ids only: texts (and the filters) come from the vector store, in the graph's order
        return self.store.get_chunks(tenant, collection, [r["chunk_id"] for r in related], filters=filters)
