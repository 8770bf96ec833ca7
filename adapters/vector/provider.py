"""The nameko DependencyProvider that gives a worker the configured VectorStore.

Function config (graph.yaml `config:`): `vector_store` = `pgvector` (default; the function's DATABASE_URL) or
`weaviate` (not written yet; see docs/vector-store.md); `hnsw_ef_search` (pgvector's candidate list per query,
default 40). One store per process, shared by its workers.
"""
from __future__ import annotations

from nameko.extensions import DependencyProvider

from .base import VectorStore


def open_store(backend: str, config: dict) -> VectorStore:
    """A store from a name and the container config; also what scripts and tests use outside nameko."""
    options = config.get("SCAIGRID_FUNCTION_CONFIG", {})
    if backend == "pgvector":
        from scaigrid.adapters.sql.engine import engine_for

        from .pgvector import DEFAULT_EF_SEARCH, PgVectorStore

        return PgVectorStore(engine_for(config["DATABASE_URL"]),
                             ef_search=int(options.get("hnsw_ef_search", DEFAULT_EF_SEARCH)))
    if backend == "weaviate":
        raise NotImplementedError("vector_store 'weaviate' is not implemented yet: use 'pgvector' "
                                  "(docs/vector-store.md)")
    raise ValueError(f"unknown vector_store {backend!r}: expected 'pgvector' or 'weaviate'")


class VectorStores(DependencyProvider):
    """Function config: `vector_store` (default `pgvector`), `hnsw_ef_search` (default 40)."""

    def setup(self):
        config = self.container.config
        backend = config.get("SCAIGRID_FUNCTION_CONFIG", {}).get("vector_store", "pgvector")
        self.store = open_store(backend, config)

    def stop(self):
        self.store.close()

    def get_dependency(self, worker_ctx):
        return self.store
