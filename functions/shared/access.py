"""Who may do what: roles and tenant scoping shared by the native API's functions, and list pages."""
from __future__ import annotations

from scaigrid.runtime.errors import Forbidden, NotFound

PLATFORM, TENANT_ADMIN, MEMBER = "platform-admin", "tenant-admin", "member"


def principal_of(envelope: dict) -> dict:
    """The authenticated caller (plus the request id, for the audit log)."""
    principal = envelope.get("principal")
    if not principal:  # a route that forgot auth.authenticate must not run as anybody
        raise Forbidden("this operation needs an authenticated key", code="not_authenticated")
    return {**principal, "request_id": envelope["id"]}


def tenant_not_found(tenant_id: str) -> NotFound:
    return NotFound(f"no tenant '{tenant_id}'", code="tenant_not_found")


def visible_key(principal: dict, key: dict | None, key_id: str) -> dict:
    """The key if the caller may see it; another tenant's key looks like no key at all."""
    if key is None or (principal["role"] != PLATFORM and key["tenant_id"] != principal["tenant_id"]):
        raise NotFound(f"no key '{key_id}'", code="key_not_found")
    return key


def require_platform(principal: dict) -> None:
    if principal["role"] != PLATFORM:
        raise Forbidden("only a platform admin may do this", code="platform_admin_only")


def require_manager(principal: dict, tenant_id: str) -> None:
    """Platform admins manage every tenant; tenant admins their own. Another tenant looks like nothing at all."""
    if principal["role"] == PLATFORM:
        return
    if principal["tenant_id"] != tenant_id:
        raise tenant_not_found(tenant_id)
    if principal["role"] != TENANT_ADMIN:
        raise Forbidden("only a tenant admin may manage this tenant", code="tenant_admin_only")


def managed_tenant(envelope: dict) -> tuple[dict, str]:
    """(caller, the tenant the path names) for an operation only that tenant's managers may do."""
    principal, tenant_id = principal_of(envelope), envelope["request"]["path"]["tenant_id"]
    require_manager(principal, tenant_id)
    return principal, tenant_id


def page_args(envelope: dict) -> tuple[int, str | None]:
    query = envelope["request"].get("query") or {}
    return int(query.get("limit", 20)), query.get("after")


def list_page(items: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": items, "has_more": has_more,
            "next_after": str(items[-1]["id"]) if has_more and items else None}


def require_model(allowed: list[str] | None, model: str | None, param: str = "model") -> None:
    """A key's model allow-list (None: every model)."""
    if model is not None and allowed is not None and model not in allowed:
        raise Forbidden(f"this API key may not use model '{model}'", code="model_not_allowed", param=param)
