"""Collections, documents and ingestion jobs in PostgreSQL. Every read and write names the tenant: an id of another
tenant's collection, document or job finds nothing, exactly like an id that does not exist."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, NamedTuple

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from .engine import RepositoryProvider
from .identity import _iso, _page, _uuid
from .rag_models import IngestionJob, RagCollection, RagDocument


class NameTaken(Exception):
    pass


class StartedJob(NamedTuple):
    job: dict
    collection: dict
    tenant: str
    text: str  # the document's extracted text
    metadata: dict  # the document's, copied onto each chunk


def collection_dict(c: RagCollection, documents: int | None = None) -> dict[str, Any]:
    out = {"id": str(c.id), "object": "collection", "name": c.name, "description": c.description,
           "embedding_model": c.embedding_model, "dimensions": c.dimensions, "chunk_size": c.chunk_size,
           "chunk_overlap": c.chunk_overlap, "knowledge_graph": c.knowledge_graph, "vector_store": c.vector_store,
           "created_at": _iso(c.created_at)}
    if documents is not None:
        out["documents"] = documents
    return out


def document_dict(d: RagDocument, job_id: uuid.UUID | None = None) -> dict[str, Any]:
    return {"id": str(d.id), "object": "document", "collection_id": str(d.collection_id), "name": d.name,
            "content_type": d.content_type, "bytes": d.bytes, "sha256": d.sha256, "metadata": d.meta or {},
            "characters": len(d.text), "status": d.status, "chunks": d.chunks, "error": d.error,
            "job_id": str(job_id) if job_id else None, "created_at": _iso(d.created_at),
            "updated_at": _iso(d.updated_at)}


def job_dict(j: IngestionJob) -> dict[str, Any]:
    progress = j.chunks_done / j.chunks_total if j.chunks_total else (1.0 if j.status == "succeeded" else 0.0)
    return {"id": str(j.id), "object": "ingestion_job", "collection_id": str(j.collection_id),
            "document_id": str(j.document_id) if j.document_id else None, "status": j.status, "stage": j.stage,
            "chunks_total": j.chunks_total, "chunks_done": j.chunks_done, "progress": round(progress, 4),
            "tokens": j.tokens, "attempts": j.attempts, "error": j.error, "created_at": _iso(j.created_at),
            "started_at": _iso(j.started_at), "finished_at": _iso(j.finished_at)}


class RagRepository:
    def __init__(self, sessions):
        self.sessions = sessions

    # collections ----------------------------------------------------------------------------------------------
    def create_collection(self, tenant_id: str, fields: dict) -> dict:
        with self.sessions() as s:
            c = RagCollection(tenant_id=uuid.UUID(tenant_id), **fields)
            s.add(c)
            try:
                s.commit()
            except IntegrityError:
                raise NameTaken(f"a collection named {fields['name']!r} exists already") from None
            return collection_dict(c, 0)

    def get_collection(self, tenant_id: str, ref: str, count_documents: bool = False) -> dict | None:
        """By id, or by name (names are unique per tenant): chat requests may name either. The document count only
        when asked (the API's GET shows it; searches and chat requests need not pay for it)."""
        with self.sessions() as s:
            where = RagCollection.id == _uuid(ref) if _uuid(ref) else RagCollection.name == ref
            c = s.scalars(select(RagCollection).where(RagCollection.tenant_id == uuid.UUID(tenant_id),
                                                      where)).first()
            if c is None:
                return None
            count = s.scalar(select(func.count()).where(RagDocument.collection_id == c.id)) if count_documents \
                else None
            return collection_dict(c, count)

    def list_collections(self, tenant_id: str, limit: int, after: str | None) -> tuple[list[dict], bool]:
        with self.sessions() as s:
            q = select(RagCollection).where(RagCollection.tenant_id == uuid.UUID(tenant_id))
            rows, more = _page(s, RagCollection, q, limit, after)
            counts = dict(s.execute(select(RagDocument.collection_id, func.count())
                                    .where(RagDocument.collection_id.in_([c.id for c in rows]))
                                    .group_by(RagDocument.collection_id)).all()) if rows else {}
            return [collection_dict(c, counts.get(c.id, 0)) for c in rows], more

    def delete_collection(self, tenant_id: str, collection_id: str) -> None:
        with self.sessions() as s:
            s.execute(delete(RagCollection).where(RagCollection.tenant_id == uuid.UUID(tenant_id),
                                                  RagCollection.id == uuid.UUID(collection_id)))
            s.commit()

    # documents and their jobs --------------------------------------------------------------------------------
    def add_document(self, tenant_id: str, collection_id: str, fields: dict) -> tuple[dict, dict]:
        """The document and its queued job, in one transaction."""
        with self.sessions() as s:
            d = RagDocument(tenant_id=uuid.UUID(tenant_id), collection_id=uuid.UUID(collection_id), status="queued",
                            chunks=0, **fields)
            s.add(d)
            s.flush()
            j = IngestionJob(tenant_id=d.tenant_id, collection_id=d.collection_id, document_id=d.id, status="queued",
                             stage="queued", chunks_total=0, chunks_done=0, tokens=0, attempts=0)
            s.add(j)
            s.commit()
            return document_dict(d, j.id), job_dict(j)

    def _document(self, s, tenant_id: str, collection_id: str, document_id: str) -> RagDocument | None:
        if not (_uuid(document_id) and _uuid(collection_id)):
            return None
        return s.scalars(select(RagDocument).where(RagDocument.tenant_id == uuid.UUID(tenant_id),
                                                   RagDocument.collection_id == uuid.UUID(collection_id),
                                                   RagDocument.id == uuid.UUID(document_id))).first()

    def _latest_jobs(self, s, document_ids: list[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        rows = s.execute(select(IngestionJob.document_id, IngestionJob.id).where(
            IngestionJob.document_id.in_(document_ids)).order_by(IngestionJob.created_at)).all()
        return {doc: job for doc, job in rows}  # the latest wins

    def get_document(self, tenant_id: str, collection_id: str, document_id: str) -> dict | None:
        with self.sessions() as s:
            d = self._document(s, tenant_id, collection_id, document_id)
            return document_dict(d, self._latest_jobs(s, [d.id]).get(d.id)) if d else None

    def list_documents(self, tenant_id: str, collection_id: str, limit: int,
                       after: str | None) -> tuple[list[dict], bool]:
        with self.sessions() as s:
            q = select(RagDocument).where(RagDocument.tenant_id == uuid.UUID(tenant_id),
                                          RagDocument.collection_id == uuid.UUID(collection_id))
            rows, more = _page(s, RagDocument, q, limit, after)
            jobs = self._latest_jobs(s, [d.id for d in rows]) if rows else {}
            return [document_dict(d, jobs.get(d.id)) for d in rows], more

    def delete_document(self, tenant_id: str, collection_id: str, document_id: str) -> dict | None:
        """Removes the row; its jobs stay, marked cancelled when they had not finished."""
        with self.sessions() as s:
            d = self._document(s, tenant_id, collection_id, document_id)
            if d is None:
                return None
            out = document_dict(d, self._latest_jobs(s, [d.id]).get(d.id))
            s.execute(update(IngestionJob).where(IngestionJob.document_id == d.id,
                                                 IngestionJob.status.in_(("queued", "running")))
                      .values(status="cancelled", finished_at=func.now(), error="the document was deleted"))
            s.delete(d)
            s.commit()
            return out

    def names_of(self, tenant_id: str, document_ids: list[str]) -> dict[str, str]:
        ids = [u for u in (_uuid(i) for i in document_ids) if u]
        if not ids:
            return {}
        with self.sessions() as s:
            rows = s.execute(select(RagDocument.id, RagDocument.name).where(
                RagDocument.tenant_id == uuid.UUID(tenant_id), RagDocument.id.in_(ids))).all()
            return {str(i): n for i, n in rows}

    # jobs -------------------------------------------------------------------------------------------------
    def get_job(self, tenant_id: str, job_id: str) -> dict | None:
        if not _uuid(job_id):
            return None
        with self.sessions() as s:
            j = s.scalars(select(IngestionJob).where(IngestionJob.tenant_id == uuid.UUID(tenant_id),
                                                     IngestionJob.id == uuid.UUID(job_id))).first()
            return job_dict(j) if j else None

    def start_job(self, job_id: str) -> StartedJob | None:
        """Mark the job running (again, after a crash) and return what it works on; None when there is nothing left
        to do (the document or collection was deleted, or the job already ended)."""
        with self.sessions() as s:
            j = s.get(IngestionJob, uuid.UUID(job_id), with_for_update=True)
            if j is None or j.document_id is None or j.status in ("succeeded", "cancelled"):
                return None
            d, c = s.get(RagDocument, j.document_id), s.get(RagCollection, j.collection_id)
            if d is None or c is None:
                return None
            j.status, j.stage, j.attempts, j.error, j.chunks_done = "running", "chunking", j.attempts + 1, None, 0
            j.started_at = d.updated_at = datetime.now(timezone.utc)  # a value, not now(): job_dict reads it back
            d.status, d.error = "running", None
            s.commit()
            return StartedJob(job_dict(j), collection_dict(c), str(j.tenant_id), d.text, d.meta or {})

    def progress(self, job_id: str, **values) -> bool:
        """Update a running job's stage and counts; False when it was cancelled meanwhile (stop working)."""
        with self.sessions() as s:
            done = s.execute(update(IngestionJob).where(IngestionJob.id == uuid.UUID(job_id),
                                                        IngestionJob.status == "running").values(**values))
            s.commit()
            return done.rowcount == 1

    def finish_job(self, job_id: str, status: str, chunks: int = 0, error: str | None = None) -> None:
        with self.sessions() as s:
            j = s.get(IngestionJob, uuid.UUID(job_id), with_for_update=True)
            if j is None or j.status != "running":
                return  # cancelled meanwhile: the delete already said so
            j.status, j.error, j.finished_at = status, error, func.now()
            j.stage = "done" if status == "succeeded" else j.stage
            if j.document_id is not None:
                s.execute(update(RagDocument).where(RagDocument.id == j.document_id).values(
                    status="ready" if status == "succeeded" else status, chunks=chunks, error=error,
                    updated_at=func.now()))
            s.commit()


class RagStore(RepositoryProvider):
    """Gives a worker the RagRepository over the process's pooled engine."""

    repository_class = RagRepository
