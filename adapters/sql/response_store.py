"""Stored /v1/responses answers: one row per response, read and deleted only by its own tenant (another tenant's id
is as unknown as one that never existed), kept `retention_days` (function config `response_retention_days`,
default 30, as OpenAI keeps them): an older one is not found, and every PURGE_EVERY-th write deletes a batch of
expired rows, so the table stays the size of a month of use without a scheduler."""
from __future__ import annotations

import itertools
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, select

from .engine import RepositoryProvider
from .models import StoredResponse

RETENTION_DAYS = 30
PURGE_EVERY, PURGE_BATCH = 100, 1000


def _packed(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class ResponseRepository:
    def __init__(self, sessions, retention_days: float = RETENTION_DAYS):
        self.sessions = sessions
        self.retention = timedelta(days=retention_days)
        self._writes = itertools.count(1)

    def _oldest(self) -> datetime:
        return datetime.now(timezone.utc) - self.retention

    def keep(self, response_id: str, tenant_id: str, key_id: str | None, model: str, conversation: list[dict],
             response: dict[str, Any]) -> None:
        with self.sessions.begin() as s:
            s.add(StoredResponse(id=response_id, tenant_id=uuid.UUID(tenant_id),
                                 key_id=uuid.UUID(key_id) if key_id else None, model=model,
                                 conversation=_packed(conversation), response=_packed(response)))
        if next(self._writes) % PURGE_EVERY == 0:
            self.purge()

    def purge(self) -> int:
        """Delete up to PURGE_BATCH expired responses (the created_at index finds them); how many went."""
        with self.sessions.begin() as s:
            expired = select(StoredResponse.id).where(StoredResponse.created_at < self._oldest()).limit(PURGE_BATCH)
            return s.execute(delete(StoredResponse).where(StoredResponse.id.in_(expired))).rowcount

    def _row(self, s, response_id: str, tenant_id: str) -> StoredResponse | None:
        return s.scalars(select(StoredResponse).where(StoredResponse.id == response_id,
                                                      StoredResponse.tenant_id == uuid.UUID(tenant_id),
                                                      StoredResponse.created_at >= self._oldest())).first()

    def conversation(self, response_id: str, tenant_id: str) -> tuple[list[dict], dict] | None:
        """(the conversation it answered, the response object), or None."""
        with self.sessions() as s:
            row = self._row(s, response_id, tenant_id)
            return (json.loads(row.conversation), json.loads(row.response)) if row else None

    def response(self, response_id: str, tenant_id: str) -> dict | None:
        found = self.conversation(response_id, tenant_id)
        return found[1] if found else None

    def delete(self, response_id: str, tenant_id: str) -> bool:
        with self.sessions.begin() as s:
            done = s.execute(delete(StoredResponse).where(StoredResponse.id == response_id,
                                                          StoredResponse.tenant_id == uuid.UUID(tenant_id)))
            return done.rowcount > 0


class ResponseStore(RepositoryProvider):
    repository_class = ResponseRepository

    def repository_options(self, fn_config: dict) -> dict:
        return {"retention_days": float(fn_config.get("response_retention_days", RETENTION_DAYS))}
