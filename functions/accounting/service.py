"""The accounting function: limits and budgets on the hot path, an exact usage ledger off it, usage reports.

`admit` runs inline in the gateway and needs only Redis, so serving goes on while the ledger consumer is down.
`record` is a batched after-step: its messages are acknowledged only after the ledger's COMMIT.
While Redis is away, `redis_down` (function config: open, the default, or closed) decides admission, the ledger
goes on, and the counters are reloaded from PostgreSQL when Redis is back (docs/accounting.md).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import date, datetime, timezone

import eventlet
from nameko.rpc import rpc
from nameko.timer import timer
from prometheus_client import Counter

from scaigrid.adapters.cache.health import RedisDown
from scaigrid.adapters.cache.limiter import Limiter, LimiterClient, LimitsUnavailable, Verdict
from scaigrid.adapters.sql.identity import IdentityStore
from scaigrid.adapters.sql.ledger import Ledger, LedgerRepository
from scaigrid.runtime.batch import batch
from scaigrid.runtime.errors import RateLimited, Unavailable
from scaigrid.runtime.executor import Executor
from scaigrid.runtime.logs import log

from ..shared.access import (MEMBER, PLATFORM, principal_of, require_manager, require_platform, tenant_not_found,
                             visible_key)
from .pricing import cost_of, estimate, registry

_log = logging.getLogger("scaigrid.accounting")
# Bounded labels only: a model id from the registry (anything else is "other"), never a tenant: per-tenant figures
# live in the ledger (GET /api/v1/usage), where a million tenants cost rows, not Prometheus series.
TOKENS = Counter("scaigrid_tokens_total", "Tokens recorded in the ledger", ["model", "kind"])
SPEND = Counter("scaigrid_spend_micros_total", "Spend recorded in the ledger, micro-units", ["model"])
REQUESTS = Counter("scaigrid_usage_records_total", "Usage records written to the ledger", ["model"])


def ratelimit_headers(verdict: Verdict, tokens: int = 0) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the tighter of the key's and the tenant's limits that are set. The usage
    is the window's before this request: an admitted one takes one request and the `tokens` it reserved; `reset` is
    when the window's oldest entry leaves it (`remaining` grows). A refusal by a rate limit says that limit: none
    left, reset when the request could be admitted (its Retry-After)."""
    if not verdict.admitted:
        kind = {"rpm": "requests", "tpm": "tokens"}.get(verdict.limit_name)
        return {} if kind is None else {f"x-ratelimit-limit-{kind}": str(verdict.limit),
                                        f"x-ratelimit-remaining-{kind}": "0",
                                        f"x-ratelimit-reset-{kind}": duration(verdict.retry_after_s * 1000)}
    headers: dict[str, str] = {}
    mine = {"requests": 1, "tokens": tokens}
    for limit_at, used_at, reset_at, kind in ((0, 1, 4, "requests"), (2, 3, 5, "tokens")):
        set_ = [u for u in (verdict.usage or []) if u[limit_at] >= 0]
        if set_:
            tightest = min(set_, key=lambda u: u[limit_at] - u[used_at])
            limit, used = tightest[limit_at], tightest[used_at]
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - used - mine[kind]))
            headers[f"x-ratelimit-reset-{kind}"] = duration(tightest[reset_at])
    return headers


def duration(ms: int) -> str:
    """OpenAI's form of a reset time: `870ms`, `12.5s`, `1m0s`."""
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:g}s"
    minutes, rest = divmod(ms, 60_000)
    return f"{minutes}m{rest / 1000:g}s"


LIMIT_NAMES = {"rpm": "requests per minute", "tpm": "tokens per minute", "daily_budget": "daily budget",
               "monthly_budget": "monthly budget"}


def refusal(verdict: Verdict) -> RateLimited:
    """A 429 that says whose limit, which one and when to retry (Retry-After comes from its details)."""
    return RateLimited(f"the {verdict.scope}'s {LIMIT_NAMES[verdict.limit_name]} ({verdict.limit}) is used up; "
                       f"retry in {verdict.retry_after_s}s", code=f"{verdict.limit_name}_exceeded",
                       details={"retry_after": verdict.retry_after_s})


def unavailable(reason: str) -> Unavailable:
    """redis_down: closed — a 503 rather than a request served without its limits."""
    why = ("Redis is unreachable" if reason == "redis_down"
           else "Redis is back and the limits are being reloaded into it")
    return Unavailable(f"rate limits and budgets cannot be checked: {why}; this gateway refuses rather than serve "
                       "beyond them (accounting config redis_down: closed); retry shortly", code="limits_unavailable",
                       details={"retry_after": 1})


def _day(value: str | None, default: date) -> date:
    return date.fromisoformat(value[:10]) if value else default


def spend_by_scope(ledger: LedgerRepository, scopes: set[tuple[str, str]], now: float) -> dict:
    """{(scope, id): (spent today, spent this month)} from the daily rollup, for these scopes (UTC)."""
    today = datetime.fromtimestamp(now, timezone.utc).date()
    spend: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in ledger.report(["tenant", "key", "day"], today.replace(day=1), today):
        for scope in (("tenant", row["tenant"]), ("key", row["key"])):
            if scope in scopes:
                spend[scope][0] += row["cost_micros"] if row["day"] == today.isoformat() else 0
                spend[scope][1] += row["cost_micros"]
    return {scope: tuple(v) for scope, v in spend.items()}


def reload_limits(ledger: LedgerRepository, limiter: LimiterClient) -> int:
    """Limits and the spend of the day and month from PostgreSQL into Redis, then a new epoch: after Redis restarted
    empty, or came back from an outage during which some process skipped writes. One process at a time; the
    number of limits loaded (0 when another process does it)."""
    token = limiter.claim_reload()
    if token is None:
        return 0
    started = time.monotonic()
    try:
        now = time.time()
        rows = ledger.all_limits()
        spend = spend_by_scope(ledger, {(r["scope"], r["scope_id"]) for r in rows}, now)
        limiter.load(rows, spend, *limiter.periods(now))
    finally:
        limiter.release_reload(token)
    log(_log, logging.WARNING, "limits and spend counters reloaded into Redis from PostgreSQL", limits=len(rows),
        seconds=round(time.monotonic() - started, 3))
    return len(rows)


def _reload_soon(ledger: LedgerRepository, limiter: LimiterClient) -> None:
    """Start a reload in the background, unless this process runs one already (admission does not wait for it)."""
    if limiter.reloading:
        return
    limiter.reloading = True

    def run():
        try:
            reload_limits(ledger, limiter)
        except Exception as exc:  # Redis gone again, or PostgreSQL: the next admission tries again
            log(_log, logging.ERROR, "reloading limits into Redis failed", error=str(exc)[:300])
        finally:
            limiter.reloading = False

    eventlet.spawn(run)


class Accounting:
    name = "accounting"
    stores = ("postgres", "redis")
    limiter = Limiter()
    ledger = Ledger()
    identity = IdentityStore()
    graph = Executor()

    @rpc
    def admit(self, envelope: dict) -> dict:
        """RPM, TPM and daily/monthly budgets of the key and its tenant: checked and reserved in one round trip."""
        principal = envelope.get("principal")
        if not principal:
            return envelope
        model = registry(self.graph.graph).get(envelope["request"].get("model"))
        tokens, cost = estimate(envelope["request"], model)
        try:
            verdict, reservation = self.limiter.admit(principal["key_id"], principal["tenant_id"], envelope["id"],
                                                      tokens, cost)
        except LimitsUnavailable as exc:
            if exc.reason == "not_loaded":
                _reload_soon(self.ledger, self.limiter)
            if self.limiter.redis_down == "closed":
                raise unavailable(exc.reason) from None
            # open: served, billed exactly (the ledger needs no Redis), reserved nowhere (epoch None); the reload
            # when Redis is back counts it from the ledger
            envelope["context"]["accounting"] = {"tokens": tokens, "cost": cost, "epoch": None}
            return envelope
        envelope["context"].setdefault("headers", {}).update(ratelimit_headers(verdict, tokens))
        if not verdict.admitted:
            raise refusal(verdict)
        envelope["context"]["accounting"] = reservation
        return envelope

    @rpc
    def top_up(self, envelope: dict) -> dict:
        """After the steps that grow the prompt (plugins.before, rag.augment): the reservation grows to what the
        model will really see, atomically, and is refused like `admit` when a limit was used up meanwhile; so at
        most one admitted request still ends past a limit. No Redis trip when the prompt did not grow."""
        principal, reservation = envelope.get("principal"), envelope["context"].get("accounting")
        if not principal or not reservation or not reservation.get("epoch"):
            return envelope  # nothing reserved (admitted while Redis was away: see admit)
        tokens, cost = estimate(envelope["request"], registry(self.graph.graph).get(envelope["request"].get("model")))
        more_tokens, more_cost = max(0, tokens - reservation["tokens"]), max(0, cost - reservation["cost"])
        if not (more_tokens or more_cost):
            return envelope
        try:
            verdict = self.limiter.top_up(principal["key_id"], principal["tenant_id"], envelope["id"], reservation,
                                          more_tokens, more_cost)
        except LimitsUnavailable as exc:
            if self.limiter.redis_down == "closed":
                raise unavailable(exc.reason) from None
            return envelope
        if not verdict.admitted:
            envelope["context"].setdefault("headers", {}).update(ratelimit_headers(verdict))
            raise refusal(verdict)
        reservation["tokens"] += more_tokens
        reservation["cost"] += more_cost
        return envelope

    @batch(max_size=500, max_delay=0.05)
    def record(self, envelopes: list[dict]) -> None:
        """One ledger row per request, then reservations reconciled with the real usage; acked after COMMIT.

        The ledger first: it is the money and needs no Redis, so a Redis outage neither holds it back nor loses it.
        A redelivered batch inserts nothing twice and reconciles nothing twice: the ledger's unique request id is
        the once-only mark (no marker key per request in Redis: at 1,000 requests/s those were ~600 M keys a week);
        a reconciliation skipped because Redis is away is made good by the reload from the ledger afterwards."""
        models = registry(self.graph.graph)
        rows, reconcile = [], []
        for env in envelopes:
            usage = env.get("usage") or {}
            prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            model_id = env["request"].get("model")
            # the column's width, and no NUL (PostgreSQL text cannot hold one): never a poison row
            model_id = model_id.replace("\x00", "")[:128] if isinstance(model_id, str) else None
            cost = cost_of(models.get(model_id), prompt, completion)
            principal = env.get("principal") or {}
            reservation = env["context"].get("accounting")
            if reservation and reservation.get("epoch"):
                reconcile.append((principal["key_id"], principal["tenant_id"], env["id"], reservation,
                                  prompt + completion, cost))
            error = env.get("error") or {}
            rows.append({"request_id": env["id"], "at": datetime.now(timezone.utc),
                         "tenant_id": principal.get("tenant_id"), "key_id": principal.get("key_id"),
                         "route": env["route"], "model": model_id, "prompt_tokens": prompt,
                         "completion_tokens": completion, "cost_micros": cost,
                         "latency_ms": float(env["context"].get("route_ms") or 0.0),
                         "status": int(error.get("status") or 200), "error_code": error.get("code"),
                         "client_request_id": env.get("client_request_id")})
        new = self.ledger.insert_batch(rows)
        # only what this batch added: a redelivered record (already in the ledger) was reconciled, or its
        # reservation stays the upper bound it was (spend over-counted, never under), until a reload from the ledger
        self.limiter.reconcile([r for r in reconcile if r[2] in new])
        for row in rows:
            model = row["model"] if row["model"] in models else "other"
            REQUESTS.labels(model).inc()
            TOKENS.labels(model, "prompt").inc(row["prompt_tokens"])
            TOKENS.labels(model, "completion").inc(row["completion_tokens"])
            SPEND.labels(model).inc(row["cost_micros"])

    @rpc
    def usage(self, envelope: dict) -> dict:
        """GET /api/v1/usage: usage and spend over a date range, grouped; scoped to what the caller may see."""
        principal = principal_of(envelope)
        query = envelope["request"]["query"]
        tenant_id, key_id = query.get("tenant_id"), query.get("key_id")
        if principal["role"] != PLATFORM:
            if principal["role"] == MEMBER:
                key_id = principal["key_id"]  # a member sees its own key's usage
            elif tenant_id not in (None, principal["tenant_id"]):
                raise tenant_not_found(tenant_id)
            tenant_id = principal["tenant_id"]
        today = datetime.now(timezone.utc).date()
        start, end = _day(query.get("start"), today.replace(day=1)), _day(query.get("end"), today)
        group_by = list(dict.fromkeys(g for g in (query.get("group_by") or "").split(",") if g))  # once each
        data = self.ledger.report(group_by, start, end, tenant_id, key_id)
        envelope["response"] = {"object": "usage", "start": start.isoformat(), "end": end.isoformat(),
                                "group_by": group_by, "data": data}
        return envelope

    @rpc
    def get_limits(self, envelope: dict) -> dict:
        """GET /api/v1/tenants/{tenant_id}/limits or /api/v1/keys/{key_id}/limits."""
        scope, scope_id = self._scope(envelope, write=False)
        envelope["response"] = self._limits_answer(scope, scope_id, self.ledger.get_limits(scope, scope_id))
        return envelope

    @rpc
    def set_limits(self, envelope: dict) -> dict:
        """PUT …/limits {rpm, tpm, daily_budget_micros, monthly_budget_micros}: null removes a limit."""
        scope, scope_id = self._scope(envelope, write=True)
        limits = self.ledger.set_limits(scope, scope_id, envelope["request"]["body"])
        try:
            self.limiter.set_limits(scope, scope_id, limits)
        except RedisDown:
            pass  # PostgreSQL holds it; this process asks for a reload when Redis is back (after_outage)
        envelope["response"] = self._limits_answer(scope, scope_id, limits)
        return envelope

    def _limits_answer(self, scope: str, scope_id: str, limits: dict) -> dict:
        try:
            today, month = self.limiter.spent(scope, scope_id, "day"), self.limiter.spent(scope, scope_id, "month")
        except RedisDown:  # the ledger's figures: what was recorded, without the reservations in flight
            today, month = self._ledger_spend(scope, scope_id)
        return {"object": "limits", "scope": scope, "scope_id": scope_id, **limits,
                "spent_today_micros": today, "spent_this_month_micros": month}

    def _ledger_spend(self, scope: str, scope_id: str) -> tuple[int, int]:
        """(spent today, spent this month) of one scope from the daily rollup (UTC)."""
        day = datetime.now(timezone.utc).date()
        rows = self.ledger.report(["day"], day.replace(day=1), day,
                                  **{"tenant_id" if scope == "tenant" else "key_id": scope_id})
        return (sum(r["cost_micros"] for r in rows if r["day"] == day.isoformat()),
                sum(r["cost_micros"] for r in rows))

    def _scope(self, envelope: dict, write: bool) -> tuple[str, str]:
        principal = principal_of(envelope)
        path = envelope["request"]["path"]
        if "key_id" in path:
            key = visible_key(principal, self.identity.get_key(path["key_id"]), path["key_id"])
            require_manager(principal, key["tenant_id"])
            return "key", key["id"]
        tenant_id = path["tenant_id"]
        if write:
            require_platform(principal)  # a tenant's own admins do not raise their own ceiling
        else:
            require_manager(principal, tenant_id)
        if self.identity.get_tenant(tenant_id) is None:
            raise tenant_not_found(tenant_id)
        return "tenant", tenant_id

    @timer(interval=300, eager=True)
    def sync_limits(self) -> int:
        """Copy every limit from PostgreSQL into Redis, at start and every 5 minutes (Redis keeps nothing on disk
        here: a restart must not lift every limit); the full reload (spend counters too) when they are not loaded.
        Admission starts that reload itself as soon as it meets unloaded limits: this is for a quiet graph."""
        try:
            if not self.limiter.loaded():
                return reload_limits(self.ledger, self.limiter)
            rows = self.ledger.all_limits()
            for row in rows:
                self.limiter.set_limits(row["scope"], row["scope_id"], row)
        except RedisDown:
            return 0  # health logged it; the reload follows its return
        return len(rows)
