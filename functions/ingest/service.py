"""The ingest function: one ingestion job per upload (the upload route's after-step `ingest.run`): the document's text
-> token chunks with overlap -> embeddings (through the inference function) -> the vector store -> entities and
relations (spaCy) -> the knowledge graph. Progress is written to the job row after every batch, so `GET
/api/v1/jobs/{id}` shows it live.

Safe to run again: a job redelivered after a crash starts over, chunk ids are `<document>:<index>` (an upsert
replaces), and the graph's add_document replaces the document's part. A job whose document or collection is deleted
while it runs stops at its next batch and removes what it had written.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eventlet import tpool
from nameko.rpc import rpc
from prometheus_client import Counter, Histogram
from tokenizers import Tokenizer

from scaigrid.adapters.sql.rag_store import StartedJob
from scaigrid.runtime import tracing
from scaigrid.runtime.logs import log

from .chunking import chunk_text
from ..shared.embedding_client import DEFAULT_EMBEDDING_MODEL
from ..shared.rag_dependencies import RagDependencies

_log = logging.getLogger("scaigrid.rag")
BATCH = 64  # chunks per embedding call and per progress update
JOBS = Counter("scaigrid_ingest_jobs_total", "Ingestion jobs ended, by outcome", ["status"])
# Labelled even where one series would do: an unlabelled metric opens its multiprocess file at import, before the
# supervisor has made the folder.
CHUNKS = Counter("scaigrid_ingest_chunks_total", "Chunks embedded and indexed by ingestion jobs", ["model"])
JOB_SECONDS = Histogram("scaigrid_ingest_job_seconds", "Wall time of an ingestion job that ran to its end",
                        ["knowledge_graph"], buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))


class Cancelled(Exception):
    """The document or its collection went away while the job ran."""


@dataclass
class Ingestion:
    jobs: Any  # RagRepository
    store: Any  # VectorStore
    embed: Callable[[str, list[str]], tuple[list[list[float]], int]]  # (model, texts) -> (vectors, tokens)
    tokenizer: Callable[[str], Tokenizer]  # model -> the tokenizer its chunks are counted in
    graph: Any = None  # KnowledgeGraph or None
    extractor: Any = None  # EntityExtractor or None
    bill: Callable[[str, int], None] = lambda model, tokens: None  # (model, tokens) of the run that succeeded


    def run(self, job_id: str) -> dict | None:
        started = self.jobs.start_job(job_id)
        if started is None:
            return None  # deleted, cancelled or already done (a duplicate delivery)
        collection, tenant = started.collection, started.tenant
        cid, doc = collection["id"], started.job["document_id"]
        began = time.monotonic()
        try:
            chunks, tokens = self._index(job_id, started)
            if collection["knowledge_graph"] and chunks:
                self._graph(job_id, tenant, cid, doc, chunks)
        except Cancelled:
            self._remove(tenant, cid, doc, collection["knowledge_graph"])
            JOBS.labels("cancelled").inc()
            log(_log, logging.INFO, "ingestion cancelled", job=job_id, document=doc)
            return None
        except Exception as exc:
            self._remove(tenant, cid, doc, collection["knowledge_graph"])
            message = f"{type(exc).__name__}: {exc}"[:500]
            self.jobs.finish_job(job_id, "failed", error=message)
            JOBS.labels("failed").inc()
            log(_log, logging.ERROR, "ingestion failed", job=job_id, document=doc, error=message)
            return None
        # Billed before the job is marked done: a replica killed between the two leaves the job running, so the
        # redelivery runs it again and bills under the same id (written once); the other order lost that usage.
        self.bill(collection["embedding_model"], tokens)
        self.jobs.finish_job(job_id, "succeeded", chunks=len(chunks))
        JOBS.labels("succeeded").inc()
        CHUNKS.labels(collection["embedding_model"]).inc(len(chunks))
        JOB_SECONDS.labels(str(collection["knowledge_graph"]).lower()).observe(time.monotonic() - began)
        log(_log, logging.INFO, "ingestion done", job=job_id, document=doc, chunks=len(chunks))
        return {"job_id": job_id, "chunks": len(chunks), "model": collection["embedding_model"], "tokens": tokens}

    def _index(self, job_id: str, started: StartedJob) -> tuple[list[dict], int]:
        """(chunks written, tokens embedded)."""
        collection, tenant, doc = started.collection, started.tenant, started.job["document_id"]
        cid = collection["id"]
        tokenizer = self.tokenizer(collection["embedding_model"])
        pieces = tpool.execute(chunk_text, started.text, tokenizer, collection["chunk_size"],
                               collection["chunk_overlap"])
        self._progress(job_id, stage="embedding", chunks_total=len(pieces), chunks_done=0)
        self.store.ensure_collection(tenant, cid, collection["dimensions"])
        self.store.delete_document(tenant, cid, doc)  # a rerun after a crash may have left a partial set
        chunks, tokens = [], 0
        for start in range(0, len(pieces), BATCH):
            batch = pieces[start:start + BATCH]
            vectors, used = self.embed(collection["embedding_model"], [p.text for p in batch])
            tokens += used
            rows = [{"id": f"{doc}:{p.index}", "document_id": doc, "text": p.text, "vector": v,
                     "metadata": started.metadata} for p, v in zip(batch, vectors)]
            self.store.upsert(tenant, cid, rows)
            chunks += rows
            self._progress(job_id, chunks_done=len(chunks), tokens=tokens)
        return chunks, tokens

    def _graph(self, job_id: str, tenant: str, cid: str, doc: str, chunks: list[dict]) -> None:
        self._progress(job_id, stage="graph")
        found = self.extractor.extract_many([c["text"] for c in chunks])
        self.graph.add_document(tenant, cid, doc, [{"id": c["id"], **f} for c, f in zip(chunks, found)])
        self._progress(job_id, stage="graph")  # deleted meanwhile? then undo the graph part too

    def _progress(self, job_id: str, **values) -> None:
        if not self.jobs.progress(job_id, **values):
            raise Cancelled()

    def _remove(self, tenant: str, cid: str, doc: str, graph: bool) -> None:
        """Leave no half-indexed document searchable (each part idempotent; a dropped collection has none)."""
        try:
            self.store.delete_document(tenant, cid, doc)
            if graph and self.graph is not None:
                self.graph.delete_document(tenant, cid, doc)
        except Exception as exc:
            log(_log, logging.ERROR, "could not remove a partly ingested document", document=doc,
                error=str(exc)[:300])


class Ingest(RagDependencies):
    """Its pool bounds the jobs a replica runs at once (each is sequential: batches of BATCH chunks); its replicas,
    the jobs at once overall. The message is acknowledged when the job ends: a replica that dies mid-job leaves it
    to another, which starts the job over."""

    name = "ingest"

    @rpc
    def run(self, envelope: dict) -> None:
        job_id = (envelope.get("context") or {}).get("job_id")
        if not job_id or envelope.get("error"):
            return
        tracing.current_span().set_attribute("scaigrid.job_id", job_id)  # the job's span, in its request's trace
        fallback = self.config.get("embedding_model", DEFAULT_EMBEDDING_MODEL)
        embeddings = self.embeddings
        Ingestion(self.docs, self.vectors, embeddings.embed, lambda model: embeddings.tokenizer(model, fallback),
                  self.graph, self.extractor,
                  bill=lambda model, tokens: embeddings.record_usage(envelope, "ingest", model, tokens)).run(job_id)
