"""Stored /v1/responses answers: one row per response, read and deleted only by its own tenant (another tenant's id
is as unknown as one that never existed)."""
from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, select

from .engine import RepositoryProvider
from .models import StoredResponse


class ResponseRepository:
    def __init__(self, sessions):
        self.sessions = sessions

    def keep(self, response_id: str, tenant_id: str, key_id: str | None, model: str, conversation: list[dict],
             response: dict[str, Any]) -> None:
        with self.sessions.begin() as s:
            s.add(StoredResponse(id=response_id, tenant_id=uuid.UUID(tenant_id),
                                 key_id=uuid.UUID(key_id) if key_id else None, model=model,
                                 conversation=conversation, response=response))

    def _row(self, s, response_id: str, tenant_id: str) -> StoredResponse | None:
        return s.scalars(select(StoredResponse).where(StoredResponse.id == response_id,
                                                      StoredResponse.tenant_id == uuid.UUID(tenant_id))).first()

    def conversation(self, response_id: str, tenant_id: str) -> tuple[list[dict], dict] | None:
        """(the conversation it answered, the response object), or None."""
        with self.sessions() as s:
            row = self._row(s, response_id, tenant_id)
            return (row.conversation, row.response) if row else None

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
