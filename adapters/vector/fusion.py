"""Reciprocal rank fusion: one ranking out of several (keyword + vector for hybrid search).

RRF (Cormack, Clarke, Buettcher 2009) uses ranks only, so lists whose scores live on different scales (cosine,
BM25) combine without calibration: score(d) = sum over lists of weight / (k + rank of d in that list), rank from
1. k = 60 is the paper's value and what Elasticsearch, OpenSearch and Weaviate's hybrid `rankedFusion` use.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

RRF_K = 60


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Mapping[str, Any]]], k: int = RRF_K,
                           limit: int | None = None, weights: Sequence[float] | None = None,
                           key: str = "chunk_id") -> list[dict[str, Any]]:
    """Fuse ranked hit lists (best first) into one, best first; pure (inputs are not modified).

    Each returned hit is a copy of its first appearance with `score` replaced by the fused score. A hit repeated
    within one list counts once, at its best rank. Ties go to the hit with the better best rank, then to the one seen
    first, so the order is deterministic.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    if weights is not None and len(weights) != len(rankings):
        raise ValueError("weights needs one number per ranking")
    scores: dict[Any, float] = {}
    hits: dict[Any, dict[str, Any]] = {}
    best_rank: dict[Any, int] = {}
    for i, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else float(weights[i])
        seen: set = set()
        for rank, hit in enumerate(ranking, start=1):
            ident = hit[key]
            if ident in seen:
                continue
            seen.add(ident)
            if ident not in hits:
                hits[ident] = dict(hit)
                best_rank[ident] = rank
            best_rank[ident] = min(best_rank[ident], rank)
            scores[ident] = scores.get(ident, 0.0) + weight / (k + rank)
    order = {ident: n for n, ident in enumerate(hits)}
    fused = sorted(hits, key=lambda ident: (-scores[ident], best_rank[ident], order[ident]))
    out = [{**hits[ident], "score": scores[ident]} for ident in fused]
    return out if limit is None else out[:limit]
