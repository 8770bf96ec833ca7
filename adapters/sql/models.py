"""The relational schema: tenants, API keys (hashed), the audit log, the ledger, plugins, stored responses."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, LargeBinary, String, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("platform-admin", "tenant-admin", "member")


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | disabled
    is_platform: Mapped[bool] = mapped_column(default=False)  # the operator's own tenant (bootstrap)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    lookup: Mapped[str] = mapped_column(String(32), unique=True)  # the public part of the key, for the lookup
    secret_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the whole key; the key itself is never kept
    models: Mapped[list | None] = mapped_column(JSONB, nullable=True)  # allow-list; null = every model
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)


class AuditEvent(Base):
    """Who did what to which tenant, key or role, and when. Written in the same transaction as the change."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor_key_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    actor_tenant_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)  # whose data changed
    action: Mapped[str] = mapped_column(String(40))  # tenant.created, key.revoked, ...
    target_type: Mapped[str] = mapped_column(String(20))
    target_id: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict] = mapped_column(JSONB, default=dict)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class UsageRecord(Base):
    """The ledger: one row per request, append-only (a trigger refuses UPDATE and DELETE), idempotent on request_id."""

    __tablename__ = "usage_ledger"
    __table_args__ = (Index("ix_usage_ledger_tenant_at", "tenant_id", "at"),
                      Index("ix_usage_ledger_key_at", "key_id", "at"))

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    key_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    route: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)  # integer micro-units of the price currency
    latency_ms: Mapped[float] = mapped_column(default=0.0)
    status: Mapped[int] = mapped_column(default=200)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the caller's own x-request-id: to find their request by, never a key (request_id is ours)
    client_request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class UsageDaily(Base):
    """Rollup for reports: per day, tenant, key and model; maintained in the same transaction as the ledger."""

    __tablename__ = "usage_daily"

    day: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    key_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)


class Limit(Base):
    """Rate limits and budgets of a tenant or a key (null = no limit). Mirrored into Redis for the hot path."""

    __tablename__ = "limits"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)  # tenant | key
    scope_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    rpm: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tpm: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    daily_budget_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    monthly_budget_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PluginInstance(Base):
    """A plugin configured for a tenant: its kind, its (validated) config, where it sits in the chain."""

    __tablename__ = "plugins"
    __table_args__ = (Index("ix_plugins_tenant_position", "tenant_id", "position"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(100))
    config: Mapped[dict] = mapped_column(JSONB, default=dict)  # secrets inside are encrypted (see plugin_store)
    position: Mapped[int] = mapped_column(default=100)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StoredResponse(Base):
    """A /v1/responses answer kept for GET and previous_response_id (unless the request said store: false): the
    response object as answered, and the conversation it answered (without instructions, which do not carry
    over), so a follow-up costs one read. Seen only by its own tenant."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_tenant_created", "tenant_id", "created_at"),
                      Index("ix_responses_created", "created_at"))  # the retention's purge

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # resp_<32 hex>
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    key_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    model: Mapped[str] = mapped_column(String(256))
    # JSON as UTF-8 bytes, not JSONB: a prompt or an answer may hold U+0000, which PostgreSQL's text and JSONB
    # cannot (the fuzz test's one 500); nothing queries inside them
    conversation: Mapped[bytes] = mapped_column(LargeBinary)  # chat messages: the history, then this input
    response: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
