"""The auth function: every request's API key -> a principal (tenant, key, role), or a 401/403."""
from __future__ import annotations

import time

from nameko.rpc import rpc

from scaigrid.adapters.cache.key_cache import KeyCache
from scaigrid.adapters.sql.identity import IdentityStore
from scaigrid.runtime.errors import Unauthorized

from ..shared.access import require_model
from ..shared.api_keys import lookup_of, matches


class Auth:
    """`authenticate` is the first step of every authenticated route; placed inline it costs a cache hit."""

    name = "auth"
    stores = ("postgres", "redis")
    identity = IdentityStore()
    keys = KeyCache()

    @rpc
    def authenticate(self, envelope: dict) -> dict:
        """Bearer key -> envelope.principal and envelope.tenant. The key leaves the envelope here."""
        key = envelope.setdefault("secrets", {}).pop("api_key", None)
        if not key:
            raise Unauthorized("missing API key: send the header 'Authorization: Bearer sg-…' (or 'x-api-key: sg-…')",
                               code="missing_api_key")
        lookup = lookup_of(key)
        entry = self.keys.get(lookup) if lookup else None
        if lookup and entry is None:
            entry = self.identity.credentials(lookup)
            self.keys.put(lookup, entry)
        if not entry or entry.get("missing") or not matches(key, entry["secret_hash"]):
            raise Unauthorized("invalid API key", code="invalid_api_key")
        if entry["revoked"]:
            raise Unauthorized("this API key was revoked", code="revoked_api_key")
        if entry["expires_at"] is not None and entry["expires_at"] <= time.time():
            raise Unauthorized("this API key has expired", code="expired_api_key")
        if entry["tenant_status"] != "active":
            raise Unauthorized("this API key's tenant is disabled", code="tenant_disabled")
        require_model(entry["models"], envelope["request"].get("model"))
        envelope["tenant"] = entry["tenant_id"]
        envelope["principal"] = {k: entry[k] for k in ("key_id", "tenant_id", "tenant_name", "role", "models")}
        return envelope
