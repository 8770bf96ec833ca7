"""Bodies and answers of the RAG part of the native API, and the `rag` field of a chat request."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Json, model_validator

from ...shared.params import RAG_TOP_K
from .native_schemas import Body

NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$"
Mode = Literal["vector", "keyword", "hybrid", "hybrid_graph"]
Scalar = str | int | float | bool | None
MAX_DOCUMENT_BYTES = 20 * 1024 * 1024


def _no_empty_keys(v: dict[str, Any]) -> dict[str, Any]:
    if any(not key for key in v):
        raise ValueError("keys must not be empty")
    return v


def _json_text_of_at_most(limit: int):
    def check(v: Any) -> Any:
        if isinstance(v, str) and len(v) > limit:
            raise ValueError(f"at most {limit} characters")
        return v
    return check


# Flat string/number/boolean/null values: what every vector store can filter on by equality.
Metadata = Annotated[dict[str, Scalar], AfterValidator(_no_empty_keys)]


class CollectionCreate(Body):
    name: str = Field(min_length=1, max_length=100, pattern=NAME, description="unique within the tenant")
    description: str = Field("", max_length=2000)
    embedding_model: str | None = Field(None, max_length=256, description=(
        "an embedding model of the registry (GET /api/v1/models); fixed for the collection's life. "
        "Default: the RAG function's `embedding_model`"))
    chunk_size: int | None = Field(None, ge=16, le=8192, description="tokens per chunk (default 200, at most the "
                                                                      "model's window)")
    chunk_overlap: int | None = Field(None, ge=0, le=4096, description="tokens shared by neighbouring chunks "
                                                                        "(default 40)")
    knowledge_graph: bool = Field(False, description="extract entities and relations into the knowledge graph "
                                                     "(needs the RAG function's Neo4j)")


class Collection(BaseModel):
    id: str
    object: Literal["collection"]
    name: str
    description: str
    embedding_model: str
    dimensions: int
    chunk_size: int
    chunk_overlap: int
    knowledge_graph: bool
    vector_store: str
    documents: int | None = None
    created_at: datetime


class CollectionList(BaseModel):
    object: Literal["list"]
    data: list[Collection]
    has_more: bool
    next_after: str | None


class DocumentCreate(Body):
    """One of `text` (plain, Markdown or HTML source as a string) or `content_base64` (any supported file, e.g. a
    PDF). multipart/form-data works too: a `file` part, and optional `name` and `metadata` (JSON) parts."""

    name: str = Field(min_length=1, max_length=255, description="shown in citations, e.g. the file name")
    text: str | None = Field(None, max_length=MAX_DOCUMENT_BYTES)
    content_base64: str | None = Field(None, max_length=MAX_DOCUMENT_BYTES * 4 // 3 + 4)
    content_type: str | None = Field(None, max_length=100, description=(
        "text/plain, text/markdown, text/html or application/pdf; default: from the name's extension, else "
        "text/plain"))
    metadata: Metadata = Field(default_factory=dict, max_length=64, description=(
        "copied onto every chunk: search and chat requests filter on it (equality)"))

    @model_validator(mode="after")
    def _one_content(self):
        if (self.text is None) == (self.content_base64 is None):
            raise ValueError("give exactly one of 'text' or 'content_base64'")
        return self


class Document(BaseModel):
    id: str
    object: Literal["document"]
    collection_id: str
    name: str
    content_type: str
    bytes: int
    sha256: str
    metadata: dict[str, Any]
    characters: int
    status: Literal["queued", "running", "ready", "failed", "cancelled"]
    chunks: int
    error: str | None
    job_id: str | None
    created_at: datetime
    updated_at: datetime


class DocumentList(BaseModel):
    object: Literal["list"]
    data: list[Document]
    has_more: bool
    next_after: str | None


class Job(BaseModel):
    id: str
    object: Literal["ingestion_job"]
    collection_id: str
    document_id: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str = Field(description="queued, chunking, embedding, graph, done")
    chunks_total: int
    chunks_done: int
    progress: float = Field(description="chunks_done / chunks_total, 0 to 1")
    tokens: int = Field(description="tokens embedded")
    attempts: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class SearchBody(Body):
    query: str = Field(min_length=1, max_length=4000)
    top_k: int = Field(5, ge=1, le=100)
    mode: Mode | None = Field(None, description="default: hybrid_graph where the collection has a knowledge "
                                                "graph, else hybrid")
    filters: Metadata = Field(default_factory=dict, max_length=32, description="metadata equality")
    weights: dict[Literal["vector", "keyword", "graph"], Annotated[float, Field(ge=0, le=100)]] | None = Field(
        None, description="fusion weight per ranking for this search (default vector 0.75, keyword 0.25, graph 0.25: "
                          "Weaviate's default alpha)")


class SearchQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: str = Field(min_length=1, max_length=4000)
    top_k: int = Field(5, ge=1, le=100)
    mode: Mode | None = None
    filters: Annotated[Json[Metadata], BeforeValidator(_json_text_of_at_most(4000))] | None = Field(
        None, description='metadata equality as JSON, e.g. {"lang":"en"}')


class SearchHit(BaseModel):
    chunk_id: str
    document_id: str
    document_name: str
    text: str
    score: float
    metadata: dict[str, Any]
    sources: list[Literal["vector", "keyword", "graph"]]


class SearchResult(BaseModel):
    object: Literal["list"]
    mode: Mode
    data: list[SearchHit]


class RagRequest(BaseModel):
    """The `rag` field of a chat request (OpenAI SDKs send it through `extra_body`)."""

    model_config = ConfigDict(extra="forbid")
    collections: list[str] = Field(min_length=1, max_length=10, description="collection ids or names")
    top_k: int = Field(RAG_TOP_K, ge=1, le=50)
    mode: Mode | None = None
    filters: Metadata = Field(default_factory=dict, max_length=32)

