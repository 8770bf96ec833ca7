"""The usage ledger (append-only, idempotent on request id), its daily rollups, and the limits table."""
from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import date, datetime, time, timezone
from typing import Any, Iterable

from nameko.extensions import DependencyProvider
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects.postgresql import insert

from .engine import engine_for
from .models import Limit, UsageDaily, UsageRecord

NO_ID = uuid.UUID(int=0)  # rollup rows of requests that never got a tenant or key (e.g. 401s)
GROUPS = {"tenant": UsageDaily.tenant_id, "key": UsageDaily.key_id, "model": UsageDaily.model,
          "day": UsageDaily.day}
LIMIT_FIELDS = ("rpm", "tpm", "daily_budget_micros", "monthly_budget_micros")


def _day(at: datetime) -> datetime:
    return datetime.combine(at.astimezone(timezone.utc).date(), time(), tzinfo=timezone.utc)


class LedgerRepository:
    def __init__(self, engine: Engine):
        self.engine = engine

    def insert_batch(self, records: list[dict[str, Any]]) -> int:
        """Insert what is new (a redelivered request id is skipped) and roll exactly that up, in one transaction."""
        if not records:
            return 0
        with self.engine.begin() as conn:
            new = conn.execute(
                insert(UsageRecord).values(records).on_conflict_do_nothing(index_elements=["request_id"])
                .returning(UsageRecord.at, UsageRecord.tenant_id, UsageRecord.key_id, UsageRecord.model,
                           UsageRecord.prompt_tokens, UsageRecord.completion_tokens, UsageRecord.cost_micros,
                           UsageRecord.status)).all()
            sums: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
            for r in new:
                acc = sums[(_day(r.at), r.tenant_id or NO_ID, r.key_id or NO_ID, r.model or "")]
                acc[0] += 1
                acc[1] += r.status >= 400
                acc[2] += r.prompt_tokens
                acc[3] += r.completion_tokens
                acc[4] += r.cost_micros
            if sums:
                rows = [{"day": k[0], "tenant_id": k[1], "key_id": k[2], "model": k[3], "requests": v[0],
                         "errors": v[1], "prompt_tokens": v[2], "completion_tokens": v[3], "cost_micros": v[4]}
                        for k, v in sorted(sums.items())]  # sorted: concurrent writers lock rows in one order
                stmt = insert(UsageDaily).values(rows)
                cols = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_micros")
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=["day", "tenant_id", "key_id", "model"],
                    set_={c: getattr(UsageDaily, c) + getattr(stmt.excluded, c) for c in cols}))
        return len(new)

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
