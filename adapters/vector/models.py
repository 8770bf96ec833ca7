"""pgvector's tables: collections, and chunks partitioned by collection (one partition per collection).

Why a partition per collection: an HNSW index needs a fixed dimension, and collections differ (384 for MiniLM, 768,
1024, ...). Each partition gets its own index on `embedding::vector(N)` at ensure_collection time, built on an empty
table (instant), searched only by that collection's queries (no other tenant's rows in the graph, so filtered
searches keep their recall), and dropped with the collection in O(1) (DROP TABLE, space back at once).

The partitions themselves are created at run time by pgvector.py, not by migrations: they are data, not schema.
These models live on the shared Base so that Alembic autogenerate sees the two parent tables once
migrations/env.py imports this module (and is told to ignore the `vector_chunks_<id>` partitions).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Computed, DateTime, ForeignKeyConstraint, Identity, Index, Integer, \
    PrimaryKeyConstraint, String, Text, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from scaigrid.adapters.sql.models import Base

TEXT_SEARCH_CONFIG = "english"  # stemming for keyword search; fixed at table creation (a generated column)
PARTITION_PREFIX = "vector_chunks_"  # + collection id


class Vector(UserDefinedType):
    """pgvector's `vector` without a dimension: each partition pins its own through a CHECK and its index."""

    cache_ok = True

    def get_col_spec(self, **kw) -> str:
        return "vector"


class VectorCollection(Base):
    __tablename__ = "vector_collections"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_vector_collections_tenant_name"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)  # names the partition
    tenant_id: Mapped[str] = mapped_column(String(100))  # text, not a FK: tests and Weaviate use free-form ids
    name: Mapped[str] = mapped_column(String(100))
    dimensions: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class VectorChunk(Base):
    __tablename__ = "vector_chunks"
    __table_args__ = (
        # The tenant is in the key: the same chunk id in two tenants is two rows, and no upsert of one tenant can
        # ever land on the other's.
        # `id` leads for the reason given for ix_vector_chunks_document below.
        PrimaryKeyConstraint("id", "collection_id", "tenant_id", name="pk_vector_chunks"),
        ForeignKeyConstraint(["collection_id"], ["vector_collections.id"], ondelete="CASCADE",
                             name="fk_vector_chunks_collection"),
        # document_id alone: within a partition, collection and tenant are constant. An index starting with them would
        # match every search's WHERE clause and lure the planner away from the HNSW index on unanalysed partitions.
        Index("ix_vector_chunks_document", "document_id"),
        Index("ix_vector_chunks_tsv", "tsv", postgresql_using="gin"),
        {"postgresql_partition_by": "LIST (collection_id)"},
    )

    collection_id: Mapped[int] = mapped_column(BigInteger)
    tenant_id: Mapped[str] = mapped_column(String(100))
    id: Mapped[str] = mapped_column(String(100))
    document_id: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict] = mapped_column("metadata", JSONB, server_default="{}")  # `metadata` is taken by SQLAlchemy
    embedding = mapped_column(Vector(), nullable=False)
    tsv = mapped_column(TSVECTOR, Computed(f"to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, text)", persisted=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
