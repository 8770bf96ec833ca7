"""Documents in, plain text out: the formats the RAG ingestion accepts."""
from .extract import UnsupportedDocument, extract_text

__all__ = ["UnsupportedDocument", "extract_text"]
