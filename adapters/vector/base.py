"""The VectorStore contract every backend (pgvector, later Weaviate) meets; tests/test_vector_contract.py checks it.

Everything is keyed by tenant: a tenant names its own collections, and no call can reach another tenant's chunks,
whatever collection name, chunk id or document id it passes.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

Scalar = str | int | float | bool | None
MAX_NAME = 100  # tenant, collection, chunk and document ids: plain strings up to this length


class Chunk(TypedDict):
    """What upsert takes. `id` is unique per tenant and collection; upserting it again replaces the chunk."""

    id: str
    document_id: str
    text: str
    vector: list[float]
    metadata: dict[str, Any]


class Hit(TypedDict):
    """What a search returns, best first. `score`: cosine similarity for vectors, BM25 for keywords, fused
    for hybrid; comparable within one result list only."""

    chunk_id: str
    document_id: str
    text: str
    score: float
    metadata: dict[str, Any]


class VectorStoreError(Exception):
    """Base of the errors a caller can act on (each maps to a 4xx, not a 500)."""


class CollectionNotFound(VectorStoreError):
    def __init__(self, collection: str):
        # The tenant is left out on purpose: messages travel back to callers, and the name is the caller's own.
        super().__init__(f"collection {collection!r} does not exist for this tenant")
        self.collection = collection


class DimensionMismatch(VectorStoreError, ValueError):
    pass


class VectorStore(ABC):
    """A backend. Methods are synchronous: under eventlet, psycopg2 and REST clients are green already."""

    @abstractmethod
    def ensure_collection(self, tenant: str, collection: str, dimensions: int) -> None:
        """Create the collection if it is missing; idempotent. An existing one with other dimensions raises
        DimensionMismatch (re-embedding with another model means a new collection)."""

    @abstractmethod
    def upsert(self, tenant: str, collection: str, chunks: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace chunks (see Chunk); returns how many were written.
        Raises CollectionNotFound, DimensionMismatch."""

    @abstractmethod
    def delete_document(self, tenant: str, collection: str, document_id: str) -> int:
        """Remove every chunk of one document; returns how many. A missing collection deletes nothing (0)."""

    @abstractmethod
    def drop_collection(self, tenant: str, collection: str) -> bool:
        """Remove the collection and all its chunks; False when there was none."""

    @abstractmethod
    def search_vector(self, tenant: str, collection: str, vector: list[float], k: int = 10,
                      filters: Mapping[str, Scalar] | None = None) -> list[Hit]:
        """The k nearest chunks by cosine similarity (approximate, HNSW), best first. CollectionNotFound."""

    @abstractmethod
    def search_keyword(self, tenant: str, collection: str, query: str, k: int = 10,
                       filters: Mapping[str, Scalar] | None = None) -> list[Hit]:
        """The k best full-text matches of `query` (any of its words; stemmed), best first. CollectionNotFound."""

    @abstractmethod
    def get_chunks(self, tenant: str, collection: str, chunk_ids: Iterable[str],
                   filters: Mapping[str, Scalar] | None = None) -> list[Hit]:
        """The named chunks that exist and match the filters, in the order asked, score 0.0 (for chunks found by
        other means, e.g. the knowledge graph). Unknown ids are left out; CollectionNotFound."""

    def close(self) -> None:
        """Release connections (a no-op where the pool is shared)."""


# Checks every backend applies the same way, so the contract fails identically everywhere. -----------------------

def check_name(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise ValueError(f"{kind} must be a non-empty string of at most {MAX_NAME} characters")
    return value


def check_k(k: Any) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise ValueError("k must be an integer from 1 to 1000")
    return k


def check_filters(filters: Mapping[str, Any] | None) -> dict[str, Scalar]:
    """Equality on top-level metadata keys, all of them must hold. Lists and objects are refused: their meaning
    (contains? equals?) differs between backends."""
    out: dict[str, Scalar] = {}
    for key, value in (filters or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError("filter keys must be non-empty strings")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"filter {key!r}: only str, int, float, bool or None values are supported")
        out[key] = value
    return out


def check_keyword_search(query: Any, k: Any, filters: Mapping[str, Any] | None) -> dict[str, Scalar]:
    """search_keyword's arguments, checked alike by every backend; returns the checked filters."""
    check_k(k)
    if not isinstance(query, str):
        raise ValueError("query must be a string")
    return check_filters(filters)


def check_vector(vector: Any, dimensions: int) -> list[float]:
    try:
        values = [float(x) for x in vector]
    except (TypeError, ValueError):
        raise ValueError("a vector must be a sequence of numbers") from None
    if len(values) != dimensions:
        raise DimensionMismatch(f"vector has {len(values)} dimensions, the collection {dimensions}")
    if not all(math.isfinite(x) for x in values):
        raise ValueError("a vector must hold finite numbers only (no NaN or inf)")
    if not any(values):
        raise ValueError("a zero vector has no direction (cosine is undefined)")
    return values


def check_chunk(chunk: Mapping[str, Any], dimensions: int) -> Chunk:
    for field in ("id", "document_id", "text", "vector"):
        if field not in chunk:
            raise ValueError(f"a chunk needs {field!r}")
    check_name("chunk id", chunk["id"])
    check_name("document_id", chunk["document_id"])
    if not isinstance(chunk["text"], str):
        raise ValueError("a chunk's text must be a string")
    # Text extracted from PDFs sometimes carries NUL characters, which PostgreSQL text cannot hold; they carry no
    # meaning for retrieval, so every backend drops them alike.
    text = chunk["text"].replace("\x00", "")
    metadata = chunk.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise ValueError("a chunk's metadata must be an object")
    return Chunk(id=chunk["id"], document_id=chunk["document_id"], text=text,
                 vector=check_vector(chunk["vector"], dimensions), metadata=dict(metadata))
