"""Documents in, plain text out: the formats the RAG ingestion accepts."""
from .extract import UnsupportedDocument, extract_text, media_type_of

__all__ = ["UnsupportedDocument", "extract_text", "media_type_of"]
