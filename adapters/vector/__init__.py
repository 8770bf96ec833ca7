"""Vector stores for RAG: one contract (base.py), pgvector as the zero-extra-infrastructure default (pgvector.py),
rank fusion for hybrid search (fusion.py). See docs/vector-store.md."""
