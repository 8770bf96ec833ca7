"""What several functions use, in one place: roles and tenant scoping (access), the API key format (api_keys),
embeddings through the inference function (embedding_client), the RAG stores of rag and ingest (rag_dependencies), a
request's effective values with the gateway's defaults (params)."""
