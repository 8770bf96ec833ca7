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
# Weighted reciprocal rank fusion. Vector 0.75 / keyword 0.25 is Weaviate's default hybrid alpha (0.75), chosen by
# its authors, not tuned on our benchmark; the graph, an expansion (recall) signal, weighs what keyword does, so
# chunks that only share an entity with the question never outrank a direct match. graph.yaml may override
# (rag config `fusion_weights`); docs/retrieval-bench.md has equal weights measured for comparison.
FUSION_WEIGHTS = {"vector": 0.75, "keyword": 0.25, "graph": 0.25}
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
    weights: Mapping[str, float] | None = None  # per ranking; FUSION_WEIGHTS where missing

    def search(self, tenant: str, collection: str, query: str, top_k: int = 5, mode: str = "hybrid",
               filters: Mapping[str, Scalar] | None = None,
               weights: Mapping[str, float] | None = None) -> list[dict]:
        """`weights` (per ranking) override the retriever's for this search, as Weaviate's per-query alpha does."""
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
        weights = {**FUSION_WEIGHTS, **(self.weights or {}), **(weights or {})}
        fused = reciprocal_rank_fusion(list(rankings.values()), limit=top_k,
                                       weights=[float(weights[source]) for source in rankings])
        return [{**h, "sources": found[h["chunk_id"]]} for h in fused]

    def _graph_ranking(self, tenant: str, collection: str, query: str, candidates: int,
                       filters: Mapping[str, Scalar] | None) -> list[Hit]:
        names = self.query_entities(query)
        if not names:
            return []
        related = self.graph.related_chunks(tenant, collection, names, hops=GRAPH_HOPS, limit=candidates)
        # the graph keeps ids only: texts (and the filters) come from the vector store, in the graph's order
        return self.store.get_chunks(tenant, collection, [r["chunk_id"] for r in related], filters=filters)
