"""Rate limits and budgets in Redis: checked and reserved atomically in one round trip (a Lua script), so they hold
across any number of gateway replicas; reconciled with the real usage once, afterwards.

Per scope (the key, then its tenant): a sliding log of requests (RPM), a sliding log of tokens (TPM), and spend
counters per UTC day and month (micro-units). A request is admitted while every counter is below its limit, and
reserves an upper bound of what it can cost; so at most one admitted request can end past a limit.

The marker `scaigrid:limits:epoch` says "these limits and spend counters are loaded": it is set by the reload from
PostgreSQL (accounting.reload_limits) and gone when Redis restarted empty, or deleted by a process that was cut off
from Redis (it skipped writes). Without it the scripts admit nothing (LimitsUnavailable: the caller's redis_down
choice applies) and the reload runs. A reservation carries the epoch it was made in: counters rebuilt since then
already hold its cost (the ledger), so its top-up and reconciliation leave the spend counters alone.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

import redis
from nameko.extensions import DependencyProvider

from scaigrid.adapters.sql.ledger import LIMIT_FIELDS
from scaigrid.runtime.logs import log
from scaigrid.runtime.preflight import StartupCheckFailed

from .health import RedisDown, RedisHealth, client_for, health_for

WINDOW_MS = 60_000
EPOCH = "scaigrid:limits:epoch"
RELOAD_LOCK = "scaigrid:limits:reloading"
DAY_TTL, MONTH_TTL = 172800, 2764800
MODES = ("open", "closed")
_log = logging.getLogger("scaigrid.limiter")
ADMIT = """
-- KEYS: 7 of the key, 7 of the tenant, the epoch marker
local now, rid, tokens, cost = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local epoch = redis.call('GET', KEYS[15])
if not epoch then return {2} end
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
  -- when the window's oldest entry leaves it (ms): this request's own, a window from now, when it is the first
  local reset_r, reset_t = window, window
  if rpm and used_r > 0 then
    reset_r = tonumber(redis.call('ZRANGE', KEYS[k+2], 0, 0, 'WITHSCORES')[2]) + window - now
  end
  if tpm and used_t > 0 then
    local oldest = redis.call('ZRANGE', KEYS[k+3], 0, 0, 'WITHSCORES')
    if oldest[2] then reset_t = tonumber(oldest[2]) + window - now end
  end
  out[#out+1] = {rpm or -1, used_r, tpm or -1, used_t, reset_r, reset_t}
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
return {1, cjson.encode(out), epoch}
"""
TOP_UP = """
-- the same keys as ADMIT; ARGV: now, request id, more tokens, more cost, window, the reservation's epoch
local now, rid, more_t, more_c = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local window = tonumber(ARGV[5])
if redis.call('GET', KEYS[15]) ~= ARGV[6] then return {2} end
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
-- KEYS: the epoch marker. ARGV: 8 per request: id, key id, tenant id, day, month, real tokens,
-- real cost - reserved cost, the reservation's epoch
local epoch = redis.call('GET', KEYS[1])
local done = 0
for i = 1, #ARGV, 8 do
  local rid, tokens, cost_delta = ARGV[i], tonumber(ARGV[i+5]), tonumber(ARGV[i+6])
  local same_epoch = ARGV[i+7] == epoch
  done = done + 1
  for s, id in ipairs({'k:' .. ARGV[i+1], 't:' .. ARGV[i+2]}) do
    local p = 'scaigrid:' .. id
    local reserved = redis.call('HGET', p .. ':tpm:tokens', rid)
    if reserved then
      redis.call('HSET', p .. ':tpm:tokens', rid, tokens)
      redis.call('INCRBY', p .. ':tpm:total', tokens - tonumber(reserved))
    end
    if cost_delta ~= 0 and same_epoch then
      redis.call('INCRBY', p .. ':spend:d:' .. ARGV[i+3], cost_delta)
      redis.call('INCRBY', p .. ':spend:m:' .. ARGV[i+4], cost_delta)
    end
  end
end
return done
"""
FORGET_EPOCH = """
-- a process that was cut off since ARGV[1] (ms) skipped writes: counters loaded before then are stale
local v = redis.call('GET', KEYS[1])
if v then
  local at = tonumber(string.match(v, ':(%d+)$'))
  if at and at < tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]); return 1 end
end
return 0
"""


class LimitsUnavailable(Exception):
    """Limits cannot be checked now: `reason` is "redis_down" (unreachable) or "not_loaded" (Redis answers, but
    the limits are not (yet) reloaded from PostgreSQL)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Verdict:
    admitted: bool
    scope: str = ""          # key | tenant: whose limit refused
    limit_name: str = ""     # rpm | tpm | daily_budget | monthly_budget
    retry_after_s: int = 0
    limit: int = 0
    # per scope: [rpm, used requests, tpm, used tokens, ms until the oldest request leaves the window, the same of
    # the oldest reservation of tokens] (-1: no limit)
    usage: list | None = None


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
    """The scripts, behind the process's RedisHealth: `redis_down` (open | closed) is the accounting function's
    choice for when limits cannot be checked; the caller applies it."""

    def __init__(self, client: redis.Redis, health: RedisHealth, redis_down: str = "open"):
        self.redis = client
        self.health = health
        self.redis_down = redis_down
        self.reloading = False  # this process has a reload running (accounting.reload_limits)
        self._admit = client.register_script(ADMIT)
        self._reconcile = client.register_script(RECONCILE)
        self._top_up = client.register_script(TOP_UP)
        self._forget_epoch = client.register_script(FORGET_EPOCH)

    @staticmethod
    def periods(now: float) -> tuple[str, str]:
        return time.strftime("%Y%m%d", time.gmtime(now)), time.strftime("%Y%m", time.gmtime(now))

    def keys(self, key_id: str, tenant_id: str, day: str, month: str) -> list[str]:
        return _scope_keys("k", key_id, day, month) + _scope_keys("t", tenant_id, day, month) + [EPOCH]

    def _run(self, script, keys: list[str], args: list):
        try:
            return self.health.call(script, keys=keys, args=args)
        except RedisDown:
            raise LimitsUnavailable("redis_down") from None

    def admit(self, key_id: str, tenant_id: str, request_id: str, tokens: int, cost: int) -> tuple[Verdict, dict]:
        """Check and reserve in one round trip. Returns the verdict and what reconcile() needs later; raises
        LimitsUnavailable when the limits cannot be checked."""
        now = time.time()
        day, month = self.periods(now)
        result = self._run(self._admit, self.keys(key_id, tenant_id, day, month),
                           [int(now * 1000), request_id, tokens, cost, WINDOW_MS])
        if result[0] == 2:
            raise LimitsUnavailable("not_loaded")
        if result[0] == 1:
            epoch = result[2].decode() if isinstance(result[2], bytes) else result[2]
            reservation = {"day": day, "month": month, "tokens": tokens, "cost": cost, "epoch": epoch}
            return Verdict(True, usage=json.loads(result[1])), reservation
        return _refused(result, now), {}

    def top_up(self, key_id: str, tenant_id: str, request_id: str, reservation: dict, more_tokens: int,
               more_cost: int) -> Verdict:
        """Grow an admitted request's reservation, checked against the limits as admit checks (one round trip).
        The counters of the day and month the request was admitted in are the ones topped up; none when they were
        reloaded since (they hold the ledger's figures, not this reservation). LimitsUnavailable: Redis is away."""
        now = time.time()
        result = self._run(self._top_up, self.keys(key_id, tenant_id, reservation["day"], reservation["month"]),
                           [int(now * 1000), request_id, more_tokens, more_cost, WINDOW_MS, reservation["epoch"]])
        return Verdict(True) if result[0] in (1, 2) else _refused(result, now)

    def reconcile(self, items: list[tuple]) -> int:
        """Replace reservations with the real usage: one script call for a whole batch of (key id, tenant id,
        request id, reservation, real tokens, real cost). Once per request is the caller's to keep: record passes
        only the requests its ledger insert found new.

        Skipped while Redis is away: that process then asks for a reload from the ledger when Redis is back
        (after_outage), which is where the real cost is. The script builds its key names itself, so it assumes
        one Redis, not a Redis Cluster."""
        if not items:
            return 0
        args: list = []
        for key_id, tenant_id, request_id, reservation, tokens, cost in items:
            args += [request_id, key_id, tenant_id, reservation["day"], reservation["month"], tokens,
                     cost - reservation["cost"], reservation["epoch"]]
        try:
            return int(self._run(self._reconcile, [EPOCH], args))
        except LimitsUnavailable:
            return 0

    def after_outage(self, down_since_ms: int) -> None:
        """Redis answers again after this process lost it at `down_since_ms`: what it skipped meanwhile (reserving,
        reconciling, a limit's change) is missing from the counters, so the ones loaded before then are dropped
        and reloaded from PostgreSQL (once per outage: a reload done after that moment stays)."""
        if self.health.call(self._forget_epoch, keys=[EPOCH], args=[down_since_ms]):
            log(_log, logging.INFO, "limits and spend counters marked for a reload from PostgreSQL")

    # the reload (accounting.reload_limits drives it) ----------------------------------------------------------
    def loaded(self) -> bool:
        return bool(self.health.call(self.redis.exists, EPOCH))

    def claim_reload(self) -> str | None:
        """One reload at a time over every process: a token to release, or None if another one runs."""
        token = uuid.uuid4().hex
        return token if self.health.call(self.redis.set, RELOAD_LOCK, token, nx=True, ex=60) else None

    def release_reload(self, token: str) -> None:
        try:
            if self.health.call(self.redis.get, RELOAD_LOCK) == token.encode():
                self.health.call(self.redis.delete, RELOAD_LOCK)
        except RedisDown:
            pass  # it expires by itself

    def load(self, limits: list[dict], spend: dict[tuple[str, str], tuple[int, int]], day: str, month: str) -> str:
        """Every limit, and the spend counters of the day and month of every scope with a limit, then a new epoch
        (admission resumes with it). Overwrites: the marker was missing, so nothing was admitted against these."""
        pipe = self.redis.pipeline(transaction=False)
        for n, row in enumerate(limits, 1):
            scope, scope_id = row["scope"][0], row["scope_id"]
            key = f"scaigrid:limits:{scope}:{scope_id}"
            values = {k: row[k] for k in LIMIT_FIELDS if row.get(k) is not None}
            pipe.delete(key)
            if values:
                pipe.hset(key, mapping=values)
            today, this_month = spend.get((row["scope"], scope_id), (0, 0))
            pipe.set(f"scaigrid:{scope}:{scope_id}:spend:d:{day}", today, ex=DAY_TTL)
            pipe.set(f"scaigrid:{scope}:{scope_id}:spend:m:{month}", this_month, ex=MONTH_TTL)
            if n % 1000 == 0:
                self.health.call(pipe.execute)
        epoch = f"{uuid.uuid4().hex[:12]}:{int(time.time() * 1000)}"
        pipe.set(EPOCH, epoch)
        self.health.call(pipe.execute)
        return epoch

    def set_limits(self, scope: str, scope_id: str, limits: dict) -> None:
        key = f"scaigrid:limits:{scope[0]}:{scope_id}"
        values = {k: limits[k] for k in LIMIT_FIELDS if limits.get(k) is not None}
        pipe = self.redis.pipeline()
        pipe.delete(key)
        if values:
            pipe.hset(key, mapping=values)
        self.health.call(pipe.execute)

    def spent(self, scope: str, scope_id: str, period: str = "day") -> int:
        day, month = self.periods(time.time())
        suffix = f"d:{day}" if period == "day" else f"m:{month}"
        return int(self.health.call(self.redis.get, f"scaigrid:{scope[0]}:{scope_id}:spend:{suffix}") or 0)


class Limiter(DependencyProvider):
    """Gives a worker the LimiterClient over the process's Redis connection pool. Function config `redis_down`:
    `open` (default) or `closed`, what admission does while limits cannot be checked (docs/accounting.md)."""

    def setup(self):
        mode = str(self.container.config.get("SCAIGRID_FUNCTION_CONFIG", {}).get("redis_down", "open"))
        if mode not in MODES:
            raise StartupCheckFailed(f"function config redis_down: {mode!r}: one of {', '.join(MODES)}")
        url = self.container.config["REDIS_URL"]
        health = health_for(url)
        self.client = LimiterClient(client_for(url), health, mode)
        health.on_recover(self.client.after_outage)

    def get_dependency(self, worker_ctx):
        return self.client
