"""The ingest function: ingestion jobs (chunk, embed, index, extract entities)."""
