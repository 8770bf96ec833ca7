"""The key cache: what authentication knows about an API key, without a database round trip on the hot path.

First level: in this process (TTL + LRU). Second level: Redis, shared by every replica. A revoke or a tenant
change deletes the Redis entry and publishes on a channel every process listens to, so every gateway forgets it
at once. A process whose subscription dropped forgets everything when it reconnects (it may have missed news).

Redis is an optimisation here, never a dependency: while it is unreachable, lookups go to PostgreSQL (and the
first level keeps working), writes to it are skipped, and invalidations that could not be sent are sent again
when it answers. A revoked key therefore lives at most the first level's TTL (`key_cache_ttl`, 30 s) during an
outage, and not past its end: every process clears its first level when Redis answers again.
"""
from __future__ import annotations

import json
import logging
from collections import deque

import redis
from cachetools import TTLCache
from nameko.extensions import DependencyProvider

from scaigrid.runtime.logs import log

from .health import RedisDown, RedisHealth, client_for, health_for
from .invalidation import listen, publish

_log = logging.getLogger("scaigrid.key_cache")
CHANNEL = "scaigrid:keys:invalidate"
MISSING = {"missing": True}  # a lookup id with no key: cached briefly so junk keys cannot hammer the database
PENDING_MAX = 10_000  # invalidations kept for Redis's return; past that the oldest go (see _remember)


class KeyCacheClient:
    """get / put / invalidate, speaking key lookups and tenants."""

    def __init__(self, client: redis.Redis, local: TTLCache, negative: TTLCache, redis_ttl: int,
                 health: RedisHealth):
        self.redis = client
        self.local = local
        self.negative = negative
        self.redis_ttl = redis_ttl
        self.health = health
        self.pending: deque[dict] = deque()  # invalidations Redis did not get: sent again when it answers

    def get(self, lookup: str) -> dict | None:
        entry = self.local.get(lookup) or self.negative.get(lookup)
        if entry is not None:
            return entry
        try:
            raw = self.health.call(self.redis.get, f"scaigrid:key:{lookup}")
        except RedisDown:
            return None  # the caller reads PostgreSQL
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
        try:
            self.health.call(self.redis.set, f"scaigrid:key:{lookup}", json.dumps(entry), ex=self.redis_ttl)
        except RedisDown:
            pass  # the first level has it; the next lookup after Redis's return fills the second

    def invalidate_keys(self, lookups: list[str]) -> None:
        """Forget these keys in Redis and in every process: now, or as soon as Redis answers again."""
        if lookups:
            self._apply({"keys": lookups})
            self._send({"keys": lookups})

    def invalidate_tenant(self, tenant_id: str, lookups: list[str]) -> None:
        self._apply({"tenant": tenant_id})
        self._send({"tenant": tenant_id, "keys": lookups})

    def _send(self, message: dict) -> None:
        """Delete the Redis entries and publish; if Redis is away, keep the message for its return. The change is
        in PostgreSQL already: the other processes' first levels hold the old entry at most their TTL, and drop
        everything when Redis answers again; the Redis entries go when this message is sent again."""
        try:
            self.health.call(self._deliver, message)
        except RedisDown:
            self._remember(message)

    def _deliver(self, message: dict) -> None:
        lookups = message.get("keys") or []
        if lookups:
            self.redis.delete(*[f"scaigrid:key:{lookup}" for lookup in lookups])
        # subscribers only need the tenant of a tenant change: its keys go by tenant id from their first level
        publish(self.redis, CHANNEL, {"tenant": message["tenant"]} if message.get("tenant") else {"keys": lookups})

    def _remember(self, message: dict) -> None:
        if len(self.pending) >= PENDING_MAX:
            dropped = self.pending.popleft()  # its Redis entries then expire by themselves (key_cache_redis_ttl)
            log(_log, logging.ERROR, "too many invalidations waiting for Redis; the oldest is dropped",
                dropped=dropped)
        self.pending.append(message)
        log(_log, logging.WARNING, "invalidation waits for Redis", keys=len(message.get("keys") or []),
            tenant=message.get("tenant"))

    def after_outage(self, down_since_ms: int = 0) -> None:
        """Redis answers again: forget the first level (revocations published meanwhile were missed), and send the
        invalidations that waited (the Redis entries they delete would otherwise live key_cache_redis_ttl)."""
        self.local.clear()
        while self.pending:
            message = self.pending[0]
            try:
                self.health.call(self._deliver, message)
            except RedisDown:
                return  # gone again: the next recovery sends the rest
            self.pending.popleft()

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
        url = self.container.config["REDIS_URL"]
        health = health_for(url)
        self.client = KeyCacheClient(client_for(url), TTLCache(int(cfg.get("key_cache_size", 10000)),
                                                               float(cfg.get("key_cache_ttl", 30))),
                                     TTLCache(10000, 5), int(cfg.get("key_cache_redis_ttl", 300)), health)
        health.on_recover(self.client.after_outage)
        self._running = False

    def start(self):
        self._running = True
        self._listener = self.container.spawn_managed_thread(self._listen)

    def stop(self):
        self._running = False
        self._listener.kill()

    def _listen(self) -> None:
        listen(self.client.redis, CHANNEL, self.client._apply, self.client.local.clear, lambda: self._running,
               self.client.health)

    def get_dependency(self, worker_ctx):
        return self.client
