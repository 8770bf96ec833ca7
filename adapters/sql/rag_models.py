"""The RAG function's relational side: collections, their documents (with the extracted text), ingestion jobs.

Chunks and vectors live in the vector store, entities in the knowledge graph; these rows are what the native API
lists and what makes ingestion restartable (a job's document text is here, so a redelivered job just runs again).
"""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, \
    func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class RagCollection(Base):
    __tablename__ = "rag_collections"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_rag_collections_tenant_name"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    embedding_model: Mapped[str] = mapped_column(String(256))  # fixed for the collection's life
    dimensions: Mapped[int] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)  # tokens of the embedding model's tokenizer
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    knowledge_graph: Mapped[bool] = mapped_column(Boolean, default=False)
    vector_store: Mapped[str] = mapped_column(String(20))  # the backend that holds its chunks
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RagDocument(Base):
    __tablename__ = "rag_documents"
    __table_args__ = (Index("ix_rag_documents_collection", "collection_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    collection_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rag_collections.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    bytes: Mapped[int] = mapped_column(BigInteger)  # of the upload, before extraction
    sha256: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict] = mapped_column("metadata", JSONB, default=dict)
    text: Mapped[str] = mapped_column(Text)  # extracted at upload; what ingestion chunks
    status: Mapped[str] = mapped_column(String(16), default="queued")  # of its latest job
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class IngestionJob(Base):
    __tablename__ = "rag_jobs"
    __table_args__ = (Index("ix_rag_jobs_tenant", "tenant_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    collection_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rag_collections.id", ondelete="CASCADE"))
    # kept when the document goes (status `cancelled`): the job is the record of what happened
    document_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("rag_documents.id", ondelete="SET NULL"),
                                                          nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # JOB_STATES
    stage: Mapped[str] = mapped_column(String(16), default="queued")  # chunking, embedding, graph, done
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)  # embedded, for the operator's cost view
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # > 1: redelivered after a crash
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
