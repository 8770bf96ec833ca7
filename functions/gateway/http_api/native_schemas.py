"""Bodies and answers of the native API (/api/v1). The OpenAPI 3.1 document is generated from these models."""
from __future__ import annotations

from datetime import date, datetime, timezone
from uuid import UUID
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

Role = Literal["platform-admin", "tenant-admin", "member"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantCreate(Body):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$",
                      description="unique; letters, digits, space, '.', '_', '-'")


class KeyCreate(Body):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    role: Role = "member"
    models: list[str] | None = Field(None, max_length=100, description="allow-list of model ids; omit for all")
    expires_at: AwareDatetime | None = Field(None, description="RFC 3339 with a timezone; omit for no expiry")

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        # PostgreSQL refuses offsets past +-15:59 that RFC 3339 allows: store UTC
        try:
            return v.astimezone(timezone.utc) if v is not None else None
        except OverflowError:
            raise ValueError("date out of range") from None


class Page(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(20, ge=1, le=100)
    after: str | None = Field(None, max_length=64, description="`next_after` of the previous page")


class AuditQuery(Page):
    tenant_id: str | None = Field(None, max_length=64, description="platform admins: one tenant's events")


Group = r"(tenant|key|model|day)"
MAX_MONEY = 10**15


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group_by: str = Field("", pattern=rf"^({Group}(,{Group})*)?$", description="comma-separated: tenant,key,model,day")
    start: date | None = Field(None, description="first UTC day (default: the 1st of this month)")
    end: date | None = Field(None, description="last UTC day, inclusive (default: today)")
    tenant_id: UUID | None = Field(None, description="platform admins: one tenant")
    key_id: UUID | None = Field(None, description="one key")


class LimitsBody(Body):
    rpm: int | None = Field(None, ge=0, le=MAX_MONEY, description="requests per minute (sliding window)")
    tpm: int | None = Field(None, ge=0, le=MAX_MONEY, description="tokens per minute (sliding window)")
    daily_budget_micros: int | None = Field(None, ge=0, le=MAX_MONEY, description="spend per UTC day, micro-units")
    monthly_budget_micros: int | None = Field(None, ge=0, le=MAX_MONEY, description="spend per UTC month")


class Tenant(BaseModel):
    id: str
    object: Literal["tenant"]
    name: str
    status: Literal["active", "disabled"]
    is_platform: bool
    created_at: datetime


class ApiKey(BaseModel):
    id: str
    object: Literal["api_key"]
    tenant_id: str
    name: str
    role: Role
    models: list[str] | None
    prefix: str = Field(description="the key's public part; the secret is never shown again")
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class ApiKeyCreated(ApiKey):
    key: str = Field(description="the API key: shown once, store it now")


class AuditEvent(BaseModel):
    id: int
    object: Literal["audit_event"]
    at: datetime
    action: str
    target_type: str
    target_id: str
    tenant_id: str | None
    actor_key_id: str | None
    actor_tenant_id: str | None
    details: dict[str, Any]
    request_id: str | None


class Principal(BaseModel):
    object: Literal["principal"]
    key: ApiKey
    role: Role
    tenant: Tenant


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    kind: str | None = None
    backend: str | None = None
    context_length: int | None = None


class ListOf(BaseModel):
    object: Literal["list"]
    has_more: bool = False
    next_after: str | None = None


class TenantList(ListOf):
    data: list[Tenant]


class ApiKeyList(ListOf):
    data: list[ApiKey]


class AuditList(ListOf):
    data: list[AuditEvent]


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class GraphInfo(BaseModel):
    version: str
    functions: dict[str, dict[str, Any]]
    routes: dict[str, dict[str, Any]]


class UsageRow(BaseModel):
    tenant: str | None = None
    key: str | None = None
    model: str | None = None
    day: date | None = None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


class UsageReport(BaseModel):
    object: Literal["usage"]
    start: date
    end: date
    group_by: list[str]
    data: list[UsageRow]


class Limits(BaseModel):
    object: Literal["limits"]
    scope: Literal["tenant", "key"]
    scope_id: str
    rpm: int | None
    tpm: int | None
    daily_budget_micros: int | None
    monthly_budget_micros: int | None
    spent_today_micros: int
    spent_this_month_micros: int


class PluginCreate(Body):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    kind: str = Field(min_length=1, max_length=100, description="see GET /api/v1/plugins/kinds")
    config: dict[str, Any] = Field(default_factory=dict, description="validated against the kind's schema")
    position: int = Field(100, ge=0, le=10000, description="lower runs first")
    enabled: bool = True
    tenant_id: UUID | None = Field(None, description="platform admins: whose chain")


class PluginUpdate(Body):
    enabled: bool


class PluginQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant_id: UUID | None = None


class PluginOut(BaseModel):
    id: str
    object: Literal["plugin"]
    tenant_id: str
    name: str
    kind: str
    config: dict[str, Any]
    position: int
    enabled: bool
    created_at: datetime
    updated_at: datetime
    deleted: bool | None = None


class PluginList(ListOf):
    data: list[PluginOut]


class PluginKind(BaseModel):
    kind: str
    description: str
    phases: list[str]
    config_schema: dict[str, Any]


class PluginKindList(BaseModel):
    object: Literal["list"]
    data: list[PluginKind]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(BaseModel):
    error: ErrorDetail
