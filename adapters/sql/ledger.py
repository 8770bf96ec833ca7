"""The usage ledger (append-only, idempotent on request id), its daily rollups, and the limits table."""
from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import date, datetime, time, timezone
from typing import Any, Iterable

from nameko.extensions import DependencyProvider
from psycopg2.extras import execute_values
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects.postgresql import insert

from .engine import engine_for
from .models import Limit, UsageDaily, UsageRecord

NO_ID = uuid.UUID(int=0)  # rollup rows of requests that never got a tenant or key (e.g. 401s)
GROUPS = {"tenant": UsageDaily.tenant_id, "key": UsageDaily.key_id, "model": UsageDaily.model,
          "day": UsageDaily.day}
LIMIT_FIELDS = ("rpm", "tpm", "daily_budget_micros", "monthly_budget_micros")


LEDGER_COLUMNS = ("request_id", "at", "tenant_id", "key_id", "route", "model", "prompt_tokens", "completion_tokens",
                  "cost_micros", "latency_ms", "status", "error_code", "client_request_id")
ROLLUP_UPSERT = """
INSERT INTO usage_daily (day, tenant_id, key_id, model, requests, errors, prompt_tokens, completion_tokens, cost_micros)
VALUES %s ON CONFLICT (day, tenant_id, key_id, model) DO UPDATE SET
  requests = usage_daily.requests + excluded.requests, errors = usage_daily.errors + excluded.errors,
  prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens,
  completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens,
  cost_micros = usage_daily.cost_micros + excluded.cost_micros
"""


def _day(at: datetime) -> datetime:
    return datetime.combine(at.astimezone(timezone.utc).date(), time(), tzinfo=timezone.utc)


class LedgerRepository:
    def __init__(self, engine: Engine):
        self.engine = engine

    def insert_batch(self, records: list[dict[str, Any]]) -> set[str]:
        """Insert what is new (a redelivered request id is skipped) and roll exactly that up, in one transaction;
        the request ids that were new.

        psycopg2's execute_values, not an ORM insert: compiling a 500-row multi-VALUES statement cost more than
        PostgreSQL's own work (bench/ledger.py).
        """
        if not records:
            return set()
        with self.engine.begin() as conn:
            cur = conn.connection.driver_connection.cursor()
            new = execute_values(
                cur, f"INSERT INTO usage_ledger ({', '.join(LEDGER_COLUMNS)}) VALUES %s "
                     "ON CONFLICT (request_id) DO NOTHING "
                     "RETURNING request_id, at, tenant_id, key_id, model, prompt_tokens, completion_tokens, "
                     "cost_micros, status",
                [tuple(r[c] for c in LEDGER_COLUMNS) for r in records], page_size=len(records), fetch=True)
            sums: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
            for _, at, tenant_id, key_id, model, prompt, completion, cost, status in new:
                acc = sums[(_day(at), tenant_id or str(NO_ID), key_id or str(NO_ID), model or "")]
                acc[0] += 1
                acc[1] += status >= 400
                acc[2] += prompt
                acc[3] += completion
                acc[4] += cost
            if sums:  # sorted: concurrent writers lock rollup rows in one order
                execute_values(cur, ROLLUP_UPSERT, [(*k, *v) for k, v in sorted(sums.items())], page_size=len(sums))
        return {row[0] for row in new}

    def report(self, group_by: Iterable[str], start: date, end: date, tenant_id: str | None = None,
               key_id: str | None = None) -> list[dict[str, Any]]:
        """Usage and spend summed over [start, end] (UTC days), grouped by any of tenant, key, model, day."""
        group_by = list(group_by)
        cols = [GROUPS[g].label(g) for g in group_by]
        q = select(*cols, func.sum(UsageDaily.requests).label("requests"),
                   func.sum(UsageDaily.errors).label("errors"),
                   func.sum(UsageDaily.prompt_tokens).label("prompt_tokens"),
                   func.sum(UsageDaily.completion_tokens).label("completion_tokens"),
                   func.sum(UsageDaily.cost_micros).label("cost_micros")).where(
            UsageDaily.day >= datetime.combine(start, time(), tzinfo=timezone.utc),
            UsageDaily.day <= datetime.combine(end, time(), tzinfo=timezone.utc))
        if tenant_id is not None:
            q = q.where(UsageDaily.tenant_id == uuid.UUID(tenant_id))
        if key_id is not None:
            q = q.where(UsageDaily.key_id == uuid.UUID(key_id))
        if cols:
            q = q.group_by(*[GROUPS[g] for g in group_by]).order_by(*[GROUPS[g] for g in group_by])
        out = []
        with self.engine.connect() as conn:
            for row in conn.execute(q).mappings():
                item = {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in row.items()}
                if "day" in item:
                    item["day"] = row["day"].date().isoformat()
                for k in ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_micros"):
                    item[k] = int(item[k] or 0)
                out.append(item)
        return out

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(UsageRecord))

    # limits -------------------------------------------------------------------------------------------------
    def get_limits(self, scope: str, scope_id: str) -> dict[str, int | None]:
        with self.engine.connect() as conn:
            row = conn.execute(select(Limit).where(Limit.scope == scope, Limit.scope_id == uuid.UUID(scope_id))
                               ).mappings().first()
        return {f: (row[f] if row else None) for f in LIMIT_FIELDS}

    def set_limits(self, scope: str, scope_id: str, values: dict[str, int | None]) -> dict[str, int | None]:
        row = {"scope": scope, "scope_id": uuid.UUID(scope_id), **{f: values.get(f) for f in LIMIT_FIELDS}}
        stmt = insert(Limit).values(row)
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["scope", "scope_id"],
                set_={**{f: getattr(stmt.excluded, f) for f in LIMIT_FIELDS}, "updated_at": func.now()}))
        return {f: row[f] for f in LIMIT_FIELDS}

    def all_limits(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [{**r, "scope_id": str(r["scope_id"])} for r in conn.execute(select(Limit)).mappings()]


class Ledger(DependencyProvider):
    """Gives a worker the LedgerRepository over the process's pooled engine."""

    def setup(self):
        self.repository = LedgerRepository(engine_for(self.container.config["DATABASE_URL"]))

    def get_dependency(self, worker_ctx):
        return self.repository
