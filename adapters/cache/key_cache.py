"""The key cache: what authentication knows about an API key, without a database round trip on the hot path.

First level: in this process (TTL + LRU). Second level: Redis, shared by every replica. A revoke or a tenant
change deletes the Redis entry and publishes on a channel every process listens to, so every gateway forgets it
at once. A process whose subscription dropped forgets everything when it reconnects (it may have missed news).
"""
from __future__ import annotations

import json

import redis
from cachetools import TTLCache
from nameko.extensions import DependencyProvider

from .invalidation import listen, publish
CHANNEL = "scaigrid:keys:invalidate"
MISSING = {"missing": True}  # a lookup id with no key: cached briefly so junk keys cannot hammer the database


class KeyCacheClient:
    """get / put / invalidate, speaking key lookups and tenants."""

    def __init__(self, client: redis.Redis, local: TTLCache, negative: TTLCache, redis_ttl: int):
        self.redis = client
        self.local = local
        self.negative = negative
        self.redis_ttl = redis_ttl

    def get(self, lookup: str) -> dict | None:
        entry = self.local.get(lookup) or self.negative.get(lookup)
        if entry is not None:
            return entry
        raw = self.redis.get(f"scaigrid:key:{lookup}")
        if raw is None:
            return None
        entry = json.loads(raw)
        self.local[lookup] = entry
        return entry

    def put(self, lookup: str, entry: dict | None) -> None:
        if entry is None:
            self.negative[lookup] = MISSING
            return
        self.local[lookup] = entry
        self.redis.set(f"scaigrid:key:{lookup}", json.dumps(entry), ex=self.redis_ttl)

    def invalidate_keys(self, lookups: list[str]) -> None:
        """Forget these keys in Redis and in every process, now."""
        if lookups:
            self.redis.delete(*[f"scaigrid:key:{lookup}" for lookup in lookups])
            publish(self.redis, CHANNEL, {"keys": lookups})

    def invalidate_tenant(self, tenant_id: str, lookups: list[str]) -> None:
        if lookups:
            self.redis.delete(*[f"scaigrid:key:{lookup}" for lookup in lookups])
        publish(self.redis, CHANNEL, {"tenant": tenant_id})

    def _apply(self, message: dict) -> None:
        for lookup in message.get("keys", ()):
            self.local.pop(lookup, None)
        tenant = message.get("tenant")
        if tenant:
            for lookup, entry in list(self.local.items()):
                if entry.get("tenant_id") == tenant:
                    self.local.pop(lookup, None)


class KeyCache(DependencyProvider):
    """Function config: `key_cache_ttl` (s, default 30), `key_cache_size` (10000), `key_cache_redis_ttl` (300)."""

    def setup(self):
        cfg = self.container.config.get("SCAIGRID_FUNCTION_CONFIG", {})
        client = redis.Redis.from_url(self.container.config["REDIS_URL"], socket_timeout=5,
                                      socket_connect_timeout=3, health_check_interval=30)
        self.client = KeyCacheClient(client, TTLCache(int(cfg.get("key_cache_size", 10000)),
                                                      float(cfg.get("key_cache_ttl", 30))),
                                     TTLCache(10000, 5), int(cfg.get("key_cache_redis_ttl", 300)))
        self._running = False

    def start(self):
        self._running = True
        self._listener = self.container.spawn_managed_thread(self._listen)

    def stop(self):
        self._running = False
        self._listener.kill()

    def _listen(self) -> None:
        listen(self.client.redis, CHANNEL, self.client._apply, self.client.local.clear, lambda: self._running)

    def get_dependency(self, worker_ctx):
        return self.client
