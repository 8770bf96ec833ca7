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


def require_platform(principal: dict) -> None:
    if principal["role"] != PLATFORM:
        raise Forbidden("only a platform admin may do this", code="platform_admin_only")


def require_manager(principal: dict, tenant_id: str) -> None:
    """Platform admins manage every tenant; tenant admins their own. Another tenant looks like nothing at all."""
    if principal["role"] == PLATFORM:
        return
    if principal["tenant_id"] != tenant_id:
        raise NotFound(f"no tenant '{tenant_id}'", code="tenant_not_found")
    if principal["role"] != TENANT_ADMIN:
        raise Forbidden("only a tenant admin may manage this tenant", code="tenant_admin_only")


def page_args(envelope: dict) -> tuple[int, str | None]:
    query = envelope["request"].get("query") or {}
    return int(query.get("limit", 20)), query.get("after")


def list_page(items: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": items, "has_more": has_more,
            "next_after": str(items[-1]["id"]) if has_more and items else None}
