"""The rag function: collections, documents, hybrid search and graph context for chat."""
