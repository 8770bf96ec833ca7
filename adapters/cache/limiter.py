"""Rate limits and budgets in Redis: checked and reserved atomically in one round trip (a Lua script), so they hold
across any number of gateway replicas; reconciled with the real usage once, afterwards.

Per scope (the key, then its tenant): a sliding log of requests (RPM), a sliding log of tokens (TPM), and spend
counters per UTC day and month (micro-units). A request is admitted while every counter is below its limit, and
reserves an upper bound of what it can cost; so at most one admitted request can end past a limit.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis
from nameko.extensions import DependencyProvider

from scaigrid.adapters.sql.ledger import LIMIT_FIELDS

WINDOW_MS = 60_000
ADMIT = """
local now, rid, tokens, cost = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local out = {}
for s = 0, 1 do
  local k = s * 7
  local lim = redis.call('HMGET', KEYS[k+1], 'rpm', 'tpm', 'daily_budget_micros', 'monthly_budget_micros')
  local rpm, tpm, day, month = tonumber(lim[1]), tonumber(lim[2]), tonumber(lim[3]), tonumber(lim[4])
  local used_r, used_t = 0, 0
  if rpm then
    redis.call('ZREMRANGEBYSCORE', KEYS[k+2], '-inf', now - window)
    used_r = redis.call('ZCARD', KEYS[k+2])
    if used_r >= rpm then
      local oldest = redis.call('ZRANGE', KEYS[k+2], 0, 0, 'WITHSCORES')
      return {0, s, 'rpm', tonumber(oldest[2]) + window - now, rpm}
    end
  end
  if tpm then
    local old = redis.call('ZRANGEBYSCORE', KEYS[k+3], '-inf', now - window)
    for _, r in ipairs(old) do
      redis.call('DECRBY', KEYS[k+5], tonumber(redis.call('HGET', KEYS[k+4], r) or 0))
      redis.call('HDEL', KEYS[k+4], r)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[k+3], '-inf', now - window)
    used_t = tonumber(redis.call('GET', KEYS[k+5]) or 0)
    if used_t >= tpm then
      local oldest = redis.call('ZRANGE', KEYS[k+3], 0, 0, 'WITHSCORES')
      return {0, s, 'tpm', tonumber(oldest[2] or now) + window - now, tpm}
    end
  end
  if day and tonumber(redis.call('GET', KEYS[k+6]) or 0) >= day then return {0, s, 'daily_budget', -1, day} end
  if month and tonumber(redis.call('GET', KEYS[k+7]) or 0) >= month then return {0, s, 'monthly_budget', -2, month} end
  out[#out+1] = {rpm or -1, used_r, tpm or -1, used_t}
end
for s = 0, 1 do
  local k = s * 7
  if out[s+1][1] >= 0 then redis.call('ZADD', KEYS[k+2], now, rid); redis.call('PEXPIRE', KEYS[k+2], window) end
  if out[s+1][3] >= 0 then
    redis.call('ZADD', KEYS[k+3], now, rid); redis.call('HSET', KEYS[k+4], rid, tokens)
    redis.call('INCRBY', KEYS[k+5], tokens)
    for _, key in ipairs({KEYS[k+3], KEYS[k+4], KEYS[k+5]}) do redis.call('PEXPIRE', key, window * 2) end
  end
  redis.call('INCRBY', KEYS[k+6], cost); redis.call('EXPIRE', KEYS[k+6], 172800)
  redis.call('INCRBY', KEYS[k+7], cost); redis.call('EXPIRE', KEYS[k+7], 2764800)
end
return {1, cjson.encode(out)}
"""
TOP_UP = """
-- the same keys as ADMIT; ARGV: now, request id, more tokens, more cost, window
local now, rid, more_t, more_c = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local window = tonumber(ARGV[5])
for s = 0, 1 do
  local k = s * 7
  local lim = redis.call('HMGET', KEYS[k+1], 'tpm', 'daily_budget_micros', 'monthly_budget_micros')
  local tpm, day, month = tonumber(lim[1]), tonumber(lim[2]), tonumber(lim[3])
  if more_t > 0 and tpm and tonumber(redis.call('GET', KEYS[k+5]) or 0) >= tpm then
    local oldest = redis.call('ZRANGE', KEYS[k+3], 0, 0, 'WITHSCORES')
    return {0, s, 'tpm', tonumber(oldest[2] or now) + window - now, tpm}
  end
  if more_c > 0 and day and tonumber(redis.call('GET', KEYS[k+6]) or 0) >= day then
    return {0, s, 'daily_budget', -1, day}
  end
  if more_c > 0 and month and tonumber(redis.call('GET', KEYS[k+7]) or 0) >= month then
    return {0, s, 'monthly_budget', -2, month}
  end
end
for s = 0, 1 do
  local k = s * 7
  if more_t > 0 and redis.call('HEXISTS', KEYS[k+4], rid) == 1 then
    redis.call('HINCRBY', KEYS[k+4], rid, more_t); redis.call('INCRBY', KEYS[k+5], more_t)
  end
  if more_c > 0 then
    redis.call('INCRBY', KEYS[k+6], more_c); redis.call('INCRBY', KEYS[k+7], more_c)
  end
end
return {1}
"""
RECONCILE = """
-- ARGV: 7 per request: id, key id, tenant id, day, month, real tokens, real cost - reserved cost
local done = 0
for i = 1, #ARGV, 7 do
  local rid, tokens, cost_delta = ARGV[i], tonumber(ARGV[i+5]), tonumber(ARGV[i+6])
  if redis.call('SET', 'scaigrid:reconciled:' .. rid, 1, 'NX', 'EX', 604800) then
    done = done + 1
    for s, id in ipairs({'k:' .. ARGV[i+1], 't:' .. ARGV[i+2]}) do
      local p = 'scaigrid:' .. id
      local reserved = redis.call('HGET', p .. ':tpm:tokens', rid)
      if reserved then
        redis.call('HSET', p .. ':tpm:tokens', rid, tokens)
        redis.call('INCRBY', p .. ':tpm:total', tokens - tonumber(reserved))
      end
      if cost_delta ~= 0 then
        redis.call('INCRBY', p .. ':spend:d:' .. ARGV[i+3], cost_delta)
        redis.call('INCRBY', p .. ':spend:m:' .. ARGV[i+4], cost_delta)
      end
    end
  end
end
return done
"""


@dataclass
class Verdict:
    admitted: bool
    scope: str = ""          # key | tenant: whose limit refused
    limit_name: str = ""     # rpm | tpm | daily_budget | monthly_budget
    retry_after_s: int = 0
    limit: int = 0
    usage: list | None = None  # per scope: [rpm, used requests, tpm, used tokens] (-1: no limit)


def _scope_keys(scope: str, scope_id: str, day: str, month: str) -> list[str]:
    p = f"scaigrid:{scope}:{scope_id}"
    return [f"scaigrid:limits:{scope}:{scope_id}", f"{p}:rpm", f"{p}:tpm", f"{p}:tpm:tokens", f"{p}:tpm:total",
            f"{p}:spend:d:{day}", f"{p}:spend:m:{month}"]


def _seconds_until_next(period: str, now: float) -> int:
    t = time.gmtime(now)
    if period == "day":
        return 86400 - (t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec)
    next_month = (t.tm_year + (t.tm_mon == 12), t.tm_mon % 12 + 1)
    return int(time.mktime((*next_month, 1, 0, 0, 0, 0, 0, 0)) - time.timezone - now)


def _refused(result: list, now: float) -> Verdict:
    """A script's refusal {0, scope, limit name, retry ms (-1: next day, -2: next month), limit} as a Verdict."""
    _, scope, name, retry_ms, limit = result
    name = name.decode() if isinstance(name, bytes) else name
    retry = {-1: _seconds_until_next("day", now), -2: _seconds_until_next("month", now)}.get(retry_ms)
    return Verdict(False, ("key", "tenant")[scope], name, retry or max(1, -(-retry_ms // 1000)), limit)


class LimiterClient:
    def __init__(self, client: redis.Redis):
        self.redis = client
        self._admit = client.register_script(ADMIT)
        self._reconcile = client.register_script(RECONCILE)
        self._top_up = client.register_script(TOP_UP)

    @staticmethod
    def periods(now: float) -> tuple[str, str]:
        return time.strftime("%Y%m%d", time.gmtime(now)), time.strftime("%Y%m", time.gmtime(now))

    def keys(self, key_id: str, tenant_id: str, day: str, month: str) -> list[str]:
        return _scope_keys("k", key_id, day, month) + _scope_keys("t", tenant_id, day, month)

    def admit(self, key_id: str, tenant_id: str, request_id: str, tokens: int, cost: int) -> tuple[Verdict, dict]:
        """Check and reserve in one round trip. Returns the verdict and what reconcile() needs later."""
        now = time.time()
        day, month = self.periods(now)
        result = self._admit(keys=self.keys(key_id, tenant_id, day, month),
                             args=[int(now * 1000), request_id, tokens, cost, WINDOW_MS])
        reservation = {"day": day, "month": month, "tokens": tokens, "cost": cost}
        if result[0] == 1:
            return Verdict(True, usage=json.loads(result[1])), reservation
        return _refused(result, now), {}

    def top_up(self, key_id: str, tenant_id: str, request_id: str, reservation: dict, more_tokens: int,
               more_cost: int) -> Verdict:
        """Grow an admitted request's reservation, checked against the limits as admit checks (one round trip).
        The counters of the day and month the request was admitted in are the ones topped up."""
        now = time.time()
        result = self._top_up(keys=self.keys(key_id, tenant_id, reservation["day"], reservation["month"]),
                              args=[int(now * 1000), request_id, more_tokens, more_cost, WINDOW_MS])
        return Verdict(True) if result[0] == 1 else _refused(result, now)

    def reconcile(self, items: list[tuple]) -> int:
        """Replace reservations with the real usage, once per request id (a redelivery is a no-op): one script
        call for a whole batch of (key id, tenant id, request id, reservation, real tokens, real cost).

        The script builds its key names itself, so it assumes one Redis, not a Redis Cluster."""
        if not items:
            return 0
        args: list = []
        for key_id, tenant_id, request_id, reservation, tokens, cost in items:
            args += [request_id, key_id, tenant_id, reservation["day"], reservation["month"], tokens,
                     cost - reservation["cost"]]
        return int(self._reconcile(keys=[], args=args))

    def set_limits(self, scope: str, scope_id: str, limits: dict) -> None:
        key = f"scaigrid:limits:{scope[0]}:{scope_id}"
        values = {k: limits[k] for k in LIMIT_FIELDS if limits.get(k) is not None}
        pipe = self.redis.pipeline()
        pipe.delete(key)
        if values:
            pipe.hset(key, mapping=values)
        pipe.execute()

    def spent(self, scope: str, scope_id: str, period: str = "day") -> int:
        day, month = self.periods(time.time())
        suffix = f"d:{day}" if period == "day" else f"m:{month}"
        return int(self.redis.get(f"scaigrid:{scope[0]}:{scope_id}:spend:{suffix}") or 0)


class Limiter(DependencyProvider):
    """Gives a worker the LimiterClient over the process's Redis connection pool."""

    def setup(self):
        client = redis.Redis.from_url(self.container.config["REDIS_URL"], socket_timeout=5, socket_connect_timeout=3)
        self.client = LimiterClient(client)

    def get_dependency(self, worker_ctx):
        return self.client
