"""Tenants' plugin chains: rows in PostgreSQL (secrets encrypted), an in-process cache per tenant that every
process drops within milliseconds of a change (Redis pub/sub), and at most `ttl` seconds stale if that fails.
The cache holds at most `cache_size` tenants (least recently used go first) and forgets a chain `ttl` seconds after
loading it, so memory stays flat however many tenants a process serves (tests/test_bounded_caches.py).

Every process that hosts the plugins function checks at start that its key opens a stored secret: a replica
with another host's key would otherwise start and then fail the requests of every tenant with a webhook."""
from __future__ import annotations

import uuid
from typing import Any

import redis
from cachetools import TTLCache
from nameko.extensions import DependencyProvider
from sqlalchemy import Text, cast, delete, func, select, update

from scaigrid.adapters.cache.health import RedisDown, RedisHealth, client_for, health_for
from scaigrid.adapters.cache.invalidation import listen, publish
from scaigrid.adapters.secrets import SecretKeyError, check_key, decrypt, encrypt, is_encrypted, key_source, rotate
from scaigrid.runtime.preflight import StartupCheckFailed

from .engine import sessions_for
from .identity import _iso
from .models import PluginInstance

CHANNEL = "scaigrid:plugins:invalidate"
CACHE_SIZE = 10_000  # tenants' chains per process; an empty chain (most tenants) is ~300 bytes, a long one a few KB


def plugin_dict(p: PluginInstance, with_secrets: bool = False) -> dict[str, Any]:
    config = {k: (decrypt(v) if with_secrets else "********") if is_encrypted(v) else v
              for k, v in (p.config or {}).items()}
    return {"id": str(p.id), "object": "plugin", "tenant_id": str(p.tenant_id), "name": p.name, "kind": p.kind,
            "config": config, "position": p.position, "enabled": p.enabled, "created_at": _iso(p.created_at),
            "updated_at": _iso(p.updated_at)}


class PluginRepository:
    def __init__(self, sessions, client: redis.Redis, ttl: float, cache_size: int = CACHE_SIZE,
                 health: RedisHealth | None = None):
        self.sessions = sessions
        self.redis = client
        self.health = health  # with it, a Redis outage makes a change's fan-out skip (not fail) and recover
        self.ttl = ttl
        # tenant id -> its chain. Evicting a chain costs one SELECT when its tenant comes back: cheap next to
        # holding every tenant a long-lived process ever saw.
        self.chains: TTLCache[str, list[dict]] = TTLCache(max(1, cache_size), ttl)

    # the hot path ---------------------------------------------------------------------------------------
    def chain(self, tenant_id: str) -> list[dict]:
        """The tenant's enabled plugins in order, with secrets decrypted (in memory only)."""
        hit = self.chains.get(tenant_id)
        if hit is not None:
            return hit
        with self.sessions() as s:
            rows = s.scalars(select(PluginInstance).where(PluginInstance.tenant_id == uuid.UUID(tenant_id),
                                                          PluginInstance.enabled.is_(True))
                             .order_by(PluginInstance.position, PluginInstance.created_at)).all()
            chain = [plugin_dict(p, with_secrets=True) for p in rows]
        self.chains[tenant_id] = chain
        return chain

    # keys ---------------------------------------------------------------------------------------------
    def _with_secrets(self):
        """Rows whose config holds an encrypted value, oldest first (JSONB's text form spells the marker so)."""
        marked = cast(PluginInstance.config, Text).contains('"$encrypted"', autoescape=True)
        return select(PluginInstance).where(marked).order_by(PluginInstance.created_at, PluginInstance.id)

    def check_secrets(self) -> None:
        """Start-up: the key parses and opens one stored secret. The oldest row is the sample: after a rotation
        it is the one most likely written with a key since dropped. StartupCheckFailed (one line) if not."""
        try:
            check_key()
            with self.sessions() as s:
                sample = s.scalars(self._with_secrets().limit(1)).first()
                for field, value in ((sample.config or {}).items() if sample else ()):
                    if is_encrypted(value):
                        try:
                            decrypt(value)
                        except SecretKeyError:
                            raise StartupCheckFailed(
                                f"{key_source()} cannot decrypt the stored plugin secrets (plugin {sample.id}, "
                                f"field '{field}'); set the deployment's key on every replica") from None
        except SecretKeyError as exc:
            raise StartupCheckFailed(str(exc)) from None

    def rotate_secrets(self) -> int:
        """Re-encrypt every stored secret with the first key, so the others can be dropped; how many rows changed.
        The clear text stays the same, so no cache needs dropping."""
        changed = 0
        with self.sessions() as s:
            for p in s.scalars(self._with_secrets()).all():
                p.config = {k: rotate(v) if is_encrypted(v) else v for k, v in p.config.items()}
                changed += 1
            s.commit()
        return changed

    def _changed(self, tenant_id: str) -> None:
        self.chains.pop(tenant_id, None)
        if self.health is None:
            publish(self.redis, CHANNEL, {"tenant": tenant_id})
            return
        try:  # PostgreSQL has the change; the other processes' chains expire within the TTL anyway
            self.health.call(publish, self.redis, CHANNEL, {"tenant": tenant_id})
        except RedisDown:  # and every process drops its chains when Redis answers again
            pass

    def on_message(self, message: dict) -> None:
        self.chains.pop(message.get("tenant"), None)

    # the API --------------------------------------------------------------------------------------------
    def create(self, tenant_id: str, name: str, kind: str, config: dict, secret_fields: tuple, position: int,
               enabled: bool) -> dict:
        stored = {k: encrypt(v) if k in secret_fields and isinstance(v, str) else v for k, v in config.items()}
        with self.sessions() as s:
            p = PluginInstance(id=uuid.uuid4(), tenant_id=uuid.UUID(tenant_id), name=name, kind=kind, config=stored,
                               position=position, enabled=enabled)
            s.add(p)
            s.commit()
            s.refresh(p)
            out = plugin_dict(p)
        self._changed(tenant_id)
        return out

    def list(self, tenant_id: str) -> list[dict]:
        with self.sessions() as s:
            rows = s.scalars(select(PluginInstance).where(PluginInstance.tenant_id == uuid.UUID(tenant_id))
                             .order_by(PluginInstance.position, PluginInstance.created_at)).all()
            return [plugin_dict(p) for p in rows]

    def get(self, plugin_id: str) -> dict | None:
        try:
            pid = uuid.UUID(plugin_id)
        except ValueError:
            return None
        with self.sessions() as s:
            p = s.get(PluginInstance, pid)
            return plugin_dict(p) if p else None

    def set_enabled(self, plugin_id: str, enabled: bool) -> dict | None:
        with self.sessions() as s:
            s.execute(update(PluginInstance).where(PluginInstance.id == uuid.UUID(plugin_id))
                      .values(enabled=enabled, updated_at=func.now()))
            s.commit()
        found = self.get(plugin_id)
        if found:
            self._changed(found["tenant_id"])
        return found

    def delete(self, plugin_id: str, tenant_id: str) -> None:
        with self.sessions() as s:
            s.execute(delete(PluginInstance).where(PluginInstance.id == uuid.UUID(plugin_id)))
            s.commit()
        self._changed(tenant_id)


class PluginStore(DependencyProvider):
    """Function config: `plugin_cache_ttl` (seconds a chain may be served from memory, default 30) and
    `plugin_cache_size` (tenants' chains kept per process, default 10,000)."""

    def setup(self):
        config = self.container.config
        options = config.get("SCAIGRID_FUNCTION_CONFIG", {})
        ttl = float(options.get("plugin_cache_ttl", 30))
        health = health_for(config["REDIS_URL"])
        self.repository = PluginRepository(sessions_for(config["DATABASE_URL"]), client_for(config["REDIS_URL"]),
                                           ttl, int(options.get("plugin_cache_size", CACHE_SIZE)), health)
        health.on_recover(lambda _since: self.repository.chains.clear())  # changes missed while it was away
        self.repository.check_secrets()  # in whatever process hosts plugins: the gateway, when inline
        self._running = False

    def start(self):
        self._running = True
        self._listener = self.container.spawn_managed_thread(
            lambda: listen(self.repository.redis, CHANNEL, self.repository.on_message,
                           self.repository.chains.clear, lambda: self._running, health=self.repository.health))

    def stop(self):
        self._running = False
        self._listener.kill()

    def get_dependency(self, worker_ctx):
        return self.repository
