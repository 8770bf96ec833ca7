"""The dependencies the RAG functions share (rag: queries; ingest: jobs): one declaration, so both always reach the
same stores the same way. nameko finds DependencyProviders on base classes too."""
from __future__ import annotations

from scaigrid.adapters.graph.extract import Extractor
from scaigrid.adapters.graph.store import KnowledgeGraphStore
from scaigrid.adapters.sql.rag_store import RagStore
from scaigrid.adapters.vector.provider import VectorStores
from scaigrid.runtime.dependencies import FunctionConfig
from scaigrid.runtime.executor import Executor

from .embedding_client import EmbeddingClientProvider


class RagDependencies:
    stores = ("postgres",)
    config = FunctionConfig()
    docs = RagStore()  # collections, documents, jobs (PostgreSQL)
    vectors = VectorStores()  # graph.yaml config `vector_store`: pgvector (default) or weaviate
    graph = KnowledgeGraphStore(required=False)  # None unless SCAIGRID_NEO4J_URL is set
    extractor = Extractor()  # spaCy, in real threads
    calls = Executor()  # graph.yaml `calls:` edges: inference.embed, inference.embedding_model
    embeddings = EmbeddingClientProvider()  # those calls, and the usage they cause
