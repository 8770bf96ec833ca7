"""The identity store: tenants, API keys and the audit log, in PostgreSQL. Speaks the domain, returns plain dicts."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .engine import RepositoryProvider
from .models import ApiKey, AuditEvent, Tenant


class Conflict(Exception):
    """A unique name is taken."""


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def tenant_dict(t: Tenant) -> dict[str, Any]:
    return {"id": str(t.id), "object": "tenant", "name": t.name, "status": t.status, "is_platform": t.is_platform,
            "created_at": _iso(t.created_at)}


def key_dict(k: ApiKey) -> dict[str, Any]:
    return {"id": str(k.id), "object": "api_key", "tenant_id": str(k.tenant_id), "name": k.name, "role": k.role,
            "models": k.models, "prefix": f"sg-{k.lookup}", "expires_at": _iso(k.expires_at),
            "revoked_at": _iso(k.revoked_at), "created_at": _iso(k.created_at)}


def audit_dict(e: AuditEvent) -> dict[str, Any]:
    return {"id": e.id, "object": "audit_event", "at": _iso(e.at), "action": e.action,
            "target_type": e.target_type, "target_id": e.target_id,
            "tenant_id": str(e.tenant_id) if e.tenant_id else None,
            "actor_key_id": str(e.actor_key_id) if e.actor_key_id else None,
            "actor_tenant_id": str(e.actor_tenant_id) if e.actor_tenant_id else None,
            "details": e.details, "request_id": e.request_id}


def _uuid(value: str | uuid.UUID | None) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _page(session: Session, model, query, limit: int, after: str | None, key=None):
    """Keyset pagination on (created_at, id) — or `key` — so pages stay fast and stable under inserts."""
    order = key or (model.created_at, model.id)
    if after is not None:
        anchor_id = _uuid(after) if model is not AuditEvent else (int(after) if str(after).isdigit() else None)
        anchor = session.get(model, anchor_id) if anchor_id is not None else None
        if anchor is None:
            return [], False
        values = tuple(getattr(anchor, c.key) for c in order)
        query = query.where(tuple_(*order) > tuple_(*values))
    rows = session.scalars(query.order_by(*order).limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit


class IdentityRepository:
    """Tenants, keys, audit: every change writes its audit event in the same transaction."""

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    # audit ------------------------------------------------------------------------------------------------
    @staticmethod
    def _audit(session: Session, actor: dict | None, action: str, target_type: str, target_id: Any,
               tenant_id: Any, details: dict | None = None) -> None:
        actor = actor or {}
        session.add(AuditEvent(actor_key_id=_uuid(actor.get("key_id")), actor_tenant_id=_uuid(actor.get("tenant_id")),
                               tenant_id=_uuid(tenant_id), action=action, target_type=target_type,
                               target_id=str(target_id), details=details or {}, request_id=actor.get("request_id")))

    def list_audit(self, tenant_id: str | None, limit: int, after: str | None) -> tuple[list[dict], bool]:
        with self.sessions() as s:
            q = select(AuditEvent)
            if tenant_id is not None:
                q = q.where(AuditEvent.tenant_id == _uuid(tenant_id))
            rows, more = _page(s, AuditEvent, q, limit, after, key=(AuditEvent.id,))
            return [audit_dict(e) for e in rows], more

    # tenants ----------------------------------------------------------------------------------------------
    def create_tenant(self, name: str, actor: dict | None, is_platform: bool = False) -> dict:
        with self.sessions() as s:
            tenant = Tenant(id=uuid.uuid4(), name=name, status="active", is_platform=is_platform)
            s.add(tenant)
            try:
                s.flush()
            except IntegrityError:
                raise Conflict(f"a tenant named '{name}' exists") from None
            self._audit(s, actor, "tenant.created", "tenant", tenant.id, tenant.id, {"name": name})
            s.commit()
            return tenant_dict(tenant)

    def list_tenants(self, limit: int, after: str | None) -> tuple[list[dict], bool]:
        with self.sessions() as s:
            rows, more = _page(s, Tenant, select(Tenant), limit, after)
            return [tenant_dict(t) for t in rows], more

    def get_tenant(self, tenant_id: str) -> dict | None:
        with self.sessions() as s:
            t = s.get(Tenant, _uuid(tenant_id)) if _uuid(tenant_id) else None
            return tenant_dict(t) if t else None

    def set_tenant_status(self, tenant_id: str, status: str, actor: dict | None) -> dict | None:
        with self.sessions() as s:
            t = s.get(Tenant, _uuid(tenant_id)) if _uuid(tenant_id) else None
            if t is None:
                return None
            if t.status != status:
                t.status = status
                self._audit(s, actor, f"tenant.{'disabled' if status == 'disabled' else 'enabled'}", "tenant",
                            t.id, t.id)
            s.commit()
            return tenant_dict(t)

    # keys -------------------------------------------------------------------------------------------------
    def create_key(self, tenant_id: str, name: str, role: str, lookup: str, secret_hash: str,
                   models: list[str] | None, expires_at: datetime | None, actor: dict | None) -> dict:
        with self.sessions() as s:
            key = ApiKey(id=uuid.uuid4(), tenant_id=_uuid(tenant_id), name=name, role=role, lookup=lookup,
                         secret_hash=secret_hash, models=models, expires_at=expires_at,
                         created_by=_uuid((actor or {}).get("key_id")))
            s.add(key)
            s.flush()
            self._audit(s, actor, "key.created", "api_key", key.id, tenant_id,
                        {"name": name, "role": role, "models": models, "expires_at": _iso(expires_at)})
            s.commit()
            s.refresh(key)
            return key_dict(key)

    def list_keys(self, tenant_id: str, limit: int, after: str | None) -> tuple[list[dict], bool]:
        with self.sessions() as s:
            q = select(ApiKey).where(ApiKey.tenant_id == _uuid(tenant_id))
            rows, more = _page(s, ApiKey, q, limit, after)
            return [key_dict(k) for k in rows], more

    def get_key(self, key_id: str) -> dict | None:
        with self.sessions() as s:
            k = s.get(ApiKey, _uuid(key_id)) if _uuid(key_id) else None
            return key_dict(k) if k else None

    def revoke_key(self, key_id: str, actor: dict | None) -> dict | None:
        with self.sessions() as s:
            k = s.get(ApiKey, _uuid(key_id)) if _uuid(key_id) else None
            if k is None:
                return None
            if k.revoked_at is None:
                k.revoked_at = datetime.now(timezone.utc)
                self._audit(s, actor, "key.revoked", "api_key", k.id, k.tenant_id, {"name": k.name})
            s.commit()
            return key_dict(k)

    def credentials(self, lookup: str) -> dict | None:
        """What authentication needs about a key: its hash, role, limits and its tenant's state."""
        with self.sessions() as s:
            row = s.execute(select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id)
                            .where(ApiKey.lookup == lookup)).first()
            if row is None:
                return None
            key, tenant = row
            return {"key_id": str(key.id), "tenant_id": str(tenant.id), "tenant_name": tenant.name,
                    "tenant_status": tenant.status, "role": key.role, "models": key.models,
                    "secret_hash": key.secret_hash, "expires_at": key.expires_at.timestamp() if key.expires_at else None,
                    "revoked": key.revoked_at is not None}

    def platform_admin_exists(self) -> bool:
        with self.sessions() as s:
            return s.scalar(select(ApiKey.id).where(ApiKey.role == "platform-admin").limit(1)) is not None

    def platform_tenant(self) -> dict | None:
        with self.sessions() as s:
            t = s.scalar(select(Tenant).where(Tenant.is_platform.is_(True)).limit(1))
            return tenant_dict(t) if t else None


class IdentityStore(RepositoryProvider):
    """Gives a worker the IdentityRepository over the process's pooled engine."""

    repository_class = IdentityRepository
