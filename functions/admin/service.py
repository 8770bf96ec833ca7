"""The admin function: tenants, API keys, roles and the audit log, behind the native API. Tenant-scoped throughout."""
from __future__ import annotations

from datetime import datetime

from nameko.rpc import rpc

from scaigrid.adapters.cache.key_cache import KeyCache
from scaigrid.adapters.sql.identity import Conflict as NameTaken
from scaigrid.adapters.sql.identity import IdentityStore
from scaigrid.runtime.errors import BadRequest, Conflict, Forbidden

from ..shared.access import (MEMBER, PLATFORM, list_page, managed_tenant, page_args, principal_of, require_manager,
                             require_platform, tenant_not_found, visible_key)
from ..shared.api_keys import mint

class Admin:
    """Native API operations on identities. Each writes its audit event in the same transaction as the change."""

    name = "admin"
    stores = ("postgres", "redis")
    identity = IdentityStore()
    keys = KeyCache()

    # tenants --------------------------------------------------------------------------------------------
    @rpc
    def create_tenant(self, envelope: dict) -> dict:
        """POST /api/v1/tenants {name} — platform admin."""
        principal = principal_of(envelope)
        require_platform(principal)
        try:
            envelope["response"] = self.identity.create_tenant(envelope["request"]["body"]["name"], principal)
        except NameTaken as exc:
            raise Conflict(str(exc), code="tenant_exists", param="name") from None
        return envelope

    @rpc
    def list_tenants(self, envelope: dict) -> dict:
        """GET /api/v1/tenants — platform admin."""
        require_platform(principal_of(envelope))
        envelope["response"] = list_page(*self.identity.list_tenants(*page_args(envelope)))
        return envelope

    @rpc
    def get_tenant(self, envelope: dict) -> dict:
        """GET /api/v1/tenants/{tenant_id} — platform admin, or any key of that tenant."""
        principal = principal_of(envelope)
        tenant_id = envelope["request"]["path"]["tenant_id"]
        tenant = self.identity.get_tenant(tenant_id)
        if tenant is None or (principal["role"] != PLATFORM and principal["tenant_id"] != tenant_id):
            raise tenant_not_found(tenant_id)
        envelope["response"] = tenant
        return envelope

    @rpc
    def disable_tenant(self, envelope: dict) -> dict:
        """POST /api/v1/tenants/{tenant_id}/disable — platform admin; the tenant's keys stop working at once."""
        return self._set_status(envelope, "disabled")

    @rpc
    def enable_tenant(self, envelope: dict) -> dict:
        """POST /api/v1/tenants/{tenant_id}/enable — platform admin."""
        return self._set_status(envelope, "active")

    def _set_status(self, envelope: dict, status: str) -> dict:
        principal = principal_of(envelope)
        require_platform(principal)
        tenant_id = envelope["request"]["path"]["tenant_id"]
        tenant = self.identity.get_tenant(tenant_id)
        if tenant is None:
            raise tenant_not_found(tenant_id)
        if tenant["is_platform"] and status == "disabled":
            raise Conflict("the platform tenant cannot be disabled (it would lock every admin out)",
                           code="platform_tenant")
        envelope["response"] = self.identity.set_tenant_status(tenant_id, status, principal)
        keys, _ = self.identity.list_keys(tenant_id, 10_000, None)
        self.keys.invalidate_tenant(tenant_id, [k["prefix"][3:] for k in keys])
        return envelope

    # keys -----------------------------------------------------------------------------------------------
    @rpc
    def create_key(self, envelope: dict) -> dict:
        """POST /api/v1/tenants/{tenant_id}/keys {name, role, models?, expires_at?} — the key is shown once."""
        principal, tenant_id = managed_tenant(envelope)
        tenant = self.identity.get_tenant(tenant_id)
        if tenant is None:
            raise tenant_not_found(tenant_id)
        body = envelope["request"]["body"]
        role = body.get("role", MEMBER)
        if role == PLATFORM and not (principal["role"] == PLATFORM and tenant["is_platform"]):
            raise Forbidden("platform-admin keys exist only in the platform tenant, made by a platform admin",
                            code="role_not_allowed", param="role")
        expires_at = body.get("expires_at")
        if expires_at is not None:
            expires_at = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
            if expires_at.tzinfo is None:
                raise BadRequest("expires_at needs a timezone (e.g. 2030-01-01T00:00:00Z)", param="expires_at")
        key, lookup, secret_hash = mint()
        record = self.identity.create_key(tenant_id, body["name"], role, lookup, secret_hash, body.get("models"),
                                          expires_at, principal)
        envelope["response"] = {**record, "key": key}
        return envelope

    @rpc
    def list_keys(self, envelope: dict) -> dict:
        """GET /api/v1/tenants/{tenant_id}/keys — tenant admin of that tenant, or platform admin."""
        principal, tenant_id = managed_tenant(envelope)
        envelope["response"] = list_page(*self.identity.list_keys(tenant_id, *page_args(envelope)))
        return envelope

    @rpc
    def revoke_key(self, envelope: dict) -> dict:
        """DELETE /api/v1/keys/{key_id} — revoked on every gateway replica within a second."""
        principal = principal_of(envelope)
        key_id = envelope["request"]["path"]["key_id"]
        key = visible_key(principal, self.identity.get_key(key_id), key_id)
        require_manager(principal, key["tenant_id"])
        envelope["response"] = self.identity.revoke_key(key_id, principal)
        self.keys.invalidate_keys([key["prefix"][3:]])
        return envelope

    # who am I, what happened ----------------------------------------------------------------------------
    @rpc
    def me(self, envelope: dict) -> dict:
        """GET /api/v1/me — the calling key, its role and tenant."""
        principal = principal_of(envelope)
        key = self.identity.get_key(principal["key_id"])
        envelope["response"] = {"object": "principal", "key": key, "role": principal["role"],
                                "tenant": self.identity.get_tenant(principal["tenant_id"])}
        return envelope

    @rpc
    def audit(self, envelope: dict) -> dict:
        """GET /api/v1/audit — platform admin: all (or ?tenant_id=); tenant admin: their own tenant's events."""
        principal = principal_of(envelope)
        tenant_id = (envelope["request"].get("query") or {}).get("tenant_id")
        if principal["role"] != PLATFORM:
            require_manager(principal, tenant_id or principal["tenant_id"])
            tenant_id = principal["tenant_id"]
        envelope["response"] = list_page(*self.identity.list_audit(tenant_id, *page_args(envelope)))
        return envelope
