"""The accounting function: limits and budgets on the hot path, an exact usage ledger off it, usage reports.

`admit` runs inline in the gateway and needs only Redis, so serving goes on while the ledger consumer is down.
`record` is a batched after-step: its messages are acknowledged only after the ledger's COMMIT.
"""
from __future__ import annotations

import logging
from datetime import date, datetime, timezone

from nameko.rpc import rpc
from nameko.timer import timer
from prometheus_client import Counter

from scaigrid.adapters.cache.limiter import Limiter, Verdict
from scaigrid.adapters.sql.identity import IdentityStore
from scaigrid.adapters.sql.ledger import Ledger
from scaigrid.runtime.batch import batch
from scaigrid.runtime.errors import RateLimited
from scaigrid.runtime.executor import Executor

from .access import MEMBER, PLATFORM, principal_of, require_manager, require_platform, tenant_not_found, visible_key
from .pricing import cost_of, estimate, registry

_log = logging.getLogger("scaigrid.accounting")
# Bounded labels only: a model id from the registry (anything else is "other"), never a tenant: per-tenant figures
# live in the ledger (GET /api/v1/usage), where a million tenants cost rows, not Prometheus series.
TOKENS = Counter("scaigrid_tokens_total", "Tokens recorded in the ledger", ["model", "kind"])
SPEND = Counter("scaigrid_spend_micros_total", "Spend recorded in the ledger, micro-units", ["model"])
REQUESTS = Counter("scaigrid_usage_records_total", "Usage records written to the ledger", ["model"])


def _duration(seconds: int) -> str:
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


def ratelimit_headers(verdict: Verdict) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the tighter of the key's and the tenant's limits that are set."""
    headers: dict[str, str] = {}
    for limit_at, used_at, kind in ((0, 1, "requests"), (2, 3, "tokens")):
        set_ = [(u[limit_at], u[used_at]) for u in (verdict.usage or []) if u[limit_at] >= 0]
        if set_:
            limit, used = min(set_, key=lambda lu: lu[0] - lu[1])
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - used - 1))
            headers[f"x-ratelimit-reset-{kind}"] = "60s" if used else "0s"
    return headers


LIMIT_NAMES = {"rpm": "requests per minute", "tpm": "tokens per minute", "daily_budget": "daily budget",
               "monthly_budget": "monthly budget"}


def refusal(verdict: Verdict) -> RateLimited:
    """A 429 that says whose limit, which one and when to retry (Retry-After comes from its details)."""
    return RateLimited(f"the {verdict.scope}'s {LIMIT_NAMES[verdict.limit_name]} ({verdict.limit}) is used up; "
                       f"retry in {verdict.retry_after_s}s", code=f"{verdict.limit_name}_exceeded",
                       details={"retry_after": verdict.retry_after_s})


def _day(value: str | None, default: date) -> date:
    return date.fromisoformat(value[:10]) if value else default


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
        verdict, reservation = self.limiter.admit(principal["key_id"], principal["tenant_id"], envelope["id"],
                                                  tokens, cost)
        envelope["context"].setdefault("headers", {}).update(ratelimit_headers(verdict))
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
        if not principal or not reservation:
            return envelope
        tokens, cost = estimate(envelope["request"], registry(self.graph.graph).get(envelope["request"].get("model")))
        more_tokens, more_cost = max(0, tokens - reservation["tokens"]), max(0, cost - reservation["cost"])
        if not (more_tokens or more_cost):
            return envelope
        verdict = self.limiter.top_up(principal["key_id"], principal["tenant_id"], envelope["id"], reservation,
                                      more_tokens, more_cost)
        if not verdict.admitted:
            raise refusal(verdict)
        reservation["tokens"] += more_tokens
        reservation["cost"] += more_cost
        return envelope

    @batch(max_size=500, max_delay=0.05)
    def record(self, envelopes: list[dict]) -> None:
        """One ledger row per request; reservations reconciled with the real usage; acked after COMMIT."""
        models = registry(self.graph.graph)
        rows, reconcile = [], []
        for env in envelopes:
            usage = env.get("usage") or {}
            prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            model_id = env["request"].get("model")
            model_id = model_id[:128] if isinstance(model_id, str) else None  # the column's width: never a poison row
            cost = cost_of(models.get(model_id), prompt, completion)
            principal = env.get("principal") or {}
            reservation = env["context"].get("accounting")
            if reservation:
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
        self.limiter.reconcile(reconcile)
        self.ledger.insert_batch(rows)
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
        group_by = [g for g in (query.get("group_by") or "").split(",") if g]
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
        self.limiter.set_limits(scope, scope_id, limits)
        envelope["response"] = self._limits_answer(scope, scope_id, limits)
        return envelope

    def _limits_answer(self, scope: str, scope_id: str, limits: dict) -> dict:
        return {"object": "limits", "scope": scope, "scope_id": scope_id, **limits,
                "spent_today_micros": self.limiter.spent(scope, scope_id, "day"),
                "spent_this_month_micros": self.limiter.spent(scope, scope_id, "month")}

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
        here: a restart must not lift every limit)."""
        rows = self.ledger.all_limits()
        for row in rows:
            self.limiter.set_limits(row["scope"], row["scope_id"], row)
        return len(rows)
