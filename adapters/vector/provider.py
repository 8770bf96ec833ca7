"""The nameko DependencyProvider that gives a worker the configured VectorStore.

Function config (graph.yaml `config:`): `vector_store` = `pgvector` (default; the function's DATABASE_URL) or
`weaviate`; `hnsw_ef_search` (pgvector's candidate list per query, default 40); `vector_stats_cache_size`
(collections whose BM25 statistics pgvector keeps per process, default 10,000). For Weaviate, the first set of
container config `WEAVIATE_URL`, function config `weaviate_url`, environment SCAIGRID_WEAVIATE_URL (likewise
`WEAVIATE_API_KEY`/`weaviate_api_key`/SCAIGRID_WEAVIATE_API_KEY, optional), and `weaviate_class_prefix`
(default `Scaigrid`). One store per process, shared by its workers; see docs/vector-store.md.
"""
from __future__ import annotations

import os

from nameko.extensions import DependencyProvider

from .base import VectorStore


def open_store(backend: str, config: dict) -> VectorStore:
    """A store from a name and the container config; also what scripts and tests use outside nameko."""
    options = config.get("SCAIGRID_FUNCTION_CONFIG", {})
    if backend == "pgvector":
        from scaigrid.adapters.sql.engine import engine_for

        from .pgvector import DEFAULT_EF_SEARCH, STATS_CACHE_SIZE, PgVectorStore

        return PgVectorStore(engine_for(config["DATABASE_URL"]),
                             ef_search=int(options.get("hnsw_ef_search", DEFAULT_EF_SEARCH)),
                             stats_cache_size=int(options.get("vector_stats_cache_size", STATS_CACHE_SIZE)))
    if backend == "weaviate":
        from .weaviate import WeaviateStore

        def setting(name: str) -> str | None:
            return config.get(name) or options.get(name.lower()) or os.environ.get(f"SCAIGRID_{name}") or None

        url = setting("WEAVIATE_URL")
        if not url:
            raise ValueError("vector_store 'weaviate' needs a URL: set SCAIGRID_WEAVIATE_URL or the function's "
                             "`weaviate_url` config (e.g. http://127.0.0.1:8080?grpc_port=50051)")
        # WeaviateStore connects at once; a Weaviate that is down raises StoreDown naming it and the URL
        return WeaviateStore(url, setting("WEAVIATE_API_KEY"),
                             class_prefix=options.get("weaviate_class_prefix", "Scaigrid"))
    raise ValueError(f"unknown vector_store {backend!r}: expected 'pgvector' or 'weaviate'")


class VectorStores(DependencyProvider):
    """Function config: `vector_store` (default `pgvector`), `hnsw_ef_search` (default 40),
    `vector_stats_cache_size` (default 10,000)."""

    def setup(self):
        config = self.container.config
        backend = config.get("SCAIGRID_FUNCTION_CONFIG", {}).get("vector_store", "pgvector")
        self.store = open_store(backend, config)

    def stop(self):
        self.store.close()

    def get_dependency(self, worker_ctx):
        return self.store
