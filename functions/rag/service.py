"""The RAG function: collections and documents per tenant (native API), ingestion jobs, hybrid search with the knowledge
graph, and `rag.augment`, the chat step that puts retrieved context into the prompt and cites it.

Embeddings come from the inference function (graph.yaml `calls: [inference.embed, inference.embedding_model]`), so
one registry serves chat, `/v1/embeddings` and RAG. Ingestion jobs run in their own function (functions/ingest/), so
that a burst of uploads scales, and queues, apart from the searches chat requests wait on. Vectors live in the
configured VectorStore (pgvector by default), entities in the knowledge graph (Neo4j, when `SCAIGRID_NEO4J_URL` is
set), rows in PostgreSQL.
"""
from __future__ import annotations

import base64
import binascii
import hashlib

from eventlet import tpool
from nameko.rpc import rpc

from scaigrid.adapters.documents import UnsupportedDocument, extract_text, media_type_of
from scaigrid.adapters.sql.rag_store import NameTaken
from scaigrid.adapters.vector.base import VectorStoreError
from scaigrid.runtime import tracing
from scaigrid.runtime.errors import BadRequest, Conflict, NotFound

from ..shared.access import list_page, page_args, principal_of, require_manager, require_model
from ..shared.embedding_client import DEFAULT_EMBEDDING_MODEL
from ..shared.params import request_params
from ..shared.rag_dependencies import RagDependencies
from .context import citations_of, inject_context, last_user_text
from .retrieval import Retriever

DEFAULTS = {"embedding_model": DEFAULT_EMBEDDING_MODEL, "chunk_size": 200, "chunk_overlap": 40, "max_context_chars": 6000}
SPECIAL_TOKENS = 2  # [CLS] and [SEP] (or <s> </s>): the model's window holds the chunk plus these


def collection_not_found(ref: str, param: str | None = None) -> NotFound:
    # another tenant's collection looks exactly like one that does not exist
    return NotFound(f"no collection '{ref}'", code="collection_not_found", param=param)


class Rag(RagDependencies):
    name = "rag"

    def _setting(self, name: str):
        return self.config.get(name, DEFAULTS.get(name))

    def _retriever(self, model: str, spent: dict[str, int]) -> Retriever:
        """A retriever whose query embeddings are counted in `spent` (model -> tokens) and made once per text."""
        seen: dict[str, list[float]] = {}

        def embed_query(text: str) -> list[float]:
            if text not in seen:
                vectors, tokens = self.embeddings.embed(model, [text])
                seen[text], spent[model] = vectors[0], spent.get(model, 0) + tokens
            return seen[text]

        return Retriever(self.vectors, embed_query, self.graph, self.extractor.query_entities,
                         self.config.get("fusion_weights"))

    def _bill(self, envelope: dict, spent: dict[str, int]) -> None:
        for model, tokens in spent.items():
            self.embeddings.record_usage(envelope, f"embed:{model}", model, tokens)

    def _collection(self, envelope: dict, count_documents: bool = False) -> tuple[str, dict]:
        """(tenant, the collection the path names, by id or name), else 404."""
        tenant = principal_of(envelope)["tenant_id"]
        ref = envelope["request"]["path"]["collection_id"]
        found = self.docs.get_collection(tenant, ref, count_documents)
        if found is None:
            raise collection_not_found(ref)
        return tenant, found

    # collections --------------------------------------------------------------------------------------------
    @rpc
    def create_collection(self, envelope: dict) -> dict:
        """POST /api/v1/collections — tenant admin. The embedding model is fixed for the collection's life."""
        principal = principal_of(envelope)
        require_manager(principal, principal["tenant_id"])
        body = envelope["request"]["body"]
        model = body.get("embedding_model") or self._setting("embedding_model")
        require_model(principal.get("models"), model, "embedding_model")
        info = self.embeddings.model(model)
        size = body.get("chunk_size") or min(self._setting("chunk_size"), info["max_tokens"] - SPECIAL_TOKENS)
        overlap = body.get("chunk_overlap")
        overlap = min(self._setting("chunk_overlap"), size // 4) if overlap is None else overlap
        if size > info["max_tokens"] - SPECIAL_TOKENS:
            raise BadRequest(f"chunk_size {size} does not fit '{model}', which reads at most {info['max_tokens']} "
                             f"tokens; use {info['max_tokens'] - SPECIAL_TOKENS} or less", param="chunk_size")
        if overlap >= size:
            raise BadRequest("chunk_overlap must be smaller than chunk_size", param="chunk_overlap")
        if body.get("knowledge_graph") and self.graph is None:
            raise BadRequest("this deployment has no knowledge graph: set SCAIGRID_NEO4J_URL for the rag function "
                             "(docs/rag.md), or create the collection without knowledge_graph",
                             code="knowledge_graph_unavailable", param="knowledge_graph")
        fields = {"name": body["name"], "description": body.get("description") or "", "embedding_model": model,
                  "dimensions": info["dimensions"], "chunk_size": size, "chunk_overlap": overlap,
                  "knowledge_graph": bool(body.get("knowledge_graph")),
                  "vector_store": self.config.get("vector_store", "pgvector")}
        try:
            envelope["response"] = self.docs.create_collection(principal["tenant_id"], fields)
        except NameTaken as exc:
            raise Conflict(str(exc), code="collection_exists", param="name") from None
        self.vectors.ensure_collection(principal["tenant_id"], envelope["response"]["id"], info["dimensions"])
        return envelope

    @rpc
    def list_collections(self, envelope: dict) -> dict:
        """GET /api/v1/collections — the caller's tenant's."""
        tenant = principal_of(envelope)["tenant_id"]
        envelope["response"] = list_page(*self.docs.list_collections(tenant, *page_args(envelope)))
        return envelope

    @rpc
    def get_collection(self, envelope: dict) -> dict:
        """GET /api/v1/collections/{collection_id} (an id or the name)."""
        envelope["response"] = self._collection(envelope, count_documents=True)[1]
        return envelope

    @rpc
    def delete_collection(self, envelope: dict) -> dict:
        """DELETE /api/v1/collections/{collection_id} — tenant admin; chunks, graph and documents go with it."""
        principal = principal_of(envelope)
        require_manager(principal, principal["tenant_id"])
        tenant, found = self._collection(envelope)
        # the stores first: should one fail, the collection is still listed and the delete can be repeated
        self.vectors.drop_collection(tenant, found["id"])
        if found["knowledge_graph"] and self.graph is not None:
            self.graph.drop_collection(tenant, found["id"])
        self.docs.delete_collection(tenant, found["id"])
        envelope["response"] = {**found, "deleted": True}
        return envelope

    # documents ----------------------------------------------------------------------------------------------
    @rpc
    def add_document(self, envelope: dict) -> dict:
        """POST /api/v1/collections/{collection_id}/documents — text is extracted now (a bad file is a 400 at once),
        indexing runs as a job (the route's after-step `ingest.run`): 202 with the document and its job id."""
        tenant, found = self._collection(envelope)
        body = envelope["request"]["body"]
        content_type = body.get("content_type") or None
        if body.get("text") is not None:
            data = body["text"].encode()
            if content_type is None and "." not in body["name"]:
                content_type = "text/plain"  # a text body whose name says nothing
        else:
            try:
                data = base64.b64decode(body["content_base64"], validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest("content_base64 is not valid base64", param="content_base64") from None
        try:
            media_type = media_type_of(content_type, body["name"])
            text = tpool.execute(extract_text, data, media_type)
        except UnsupportedDocument as exc:
            raise BadRequest(str(exc), code="unsupported_document", param="content_type") from None
        if not text.strip():
            raise BadRequest("the document has no text to index (a scanned PDF needs OCR first)",
                             code="empty_document")
        document, job = self.docs.add_document(tenant, found["id"], {
            "name": body["name"], "content_type": media_type, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "meta": body.get("metadata") or {}, "text": text})
        # the after-step gets this envelope: it needs the job, not the upload again
        envelope["request"]["body"] = {"name": body["name"]}
        envelope["context"]["job_id"] = job["id"]
        envelope["response"] = document
        return envelope

    @rpc
    def list_documents(self, envelope: dict) -> dict:
        """GET /api/v1/collections/{collection_id}/documents."""
        tenant, found = self._collection(envelope)
        envelope["response"] = list_page(*self.docs.list_documents(tenant, found["id"], *page_args(envelope)))
        return envelope

    @rpc
    def get_document(self, envelope: dict) -> dict:
        """GET /api/v1/collections/{collection_id}/documents/{document_id}: its status and chunk count."""
        tenant, found = self._collection(envelope)
        doc_id = envelope["request"]["path"]["document_id"]
        envelope["response"] = self.docs.get_document(tenant, found["id"], doc_id)
        if envelope["response"] is None:
            raise NotFound(f"no document '{doc_id}' in this collection", code="document_not_found")
        return envelope

    @rpc
    def delete_document(self, envelope: dict) -> dict:
        """DELETE /api/v1/collections/{collection_id}/documents/{document_id}: its chunks and graph part go too; a
        job still running for it stops at its next batch."""
        tenant, found = self._collection(envelope)
        doc_id = envelope["request"]["path"]["document_id"]
        document = self.docs.delete_document(tenant, found["id"], doc_id)
        if document is None:
            raise NotFound(f"no document '{doc_id}' in this collection", code="document_not_found")
        self.vectors.delete_document(tenant, found["id"], doc_id)
        if found["knowledge_graph"] and self.graph is not None:
            self.graph.delete_document(tenant, found["id"], doc_id)
        envelope["response"] = {**document, "deleted": True}
        return envelope

    @rpc
    def get_job(self, envelope: dict) -> dict:
        """GET /api/v1/jobs/{job_id}: status, stage and progress of an ingestion."""
        job_id = envelope["request"]["path"]["job_id"]
        envelope["response"] = self.docs.get_job(principal_of(envelope)["tenant_id"], job_id)
        if envelope["response"] is None:
            raise NotFound(f"no job '{job_id}'", code="job_not_found")
        return envelope

    # retrieval ----------------------------------------------------------------------------------------------
    def _search(self, tenant: str, collection: dict, query: str, top_k: int, mode: str | None,
                filters: dict, retrievers: dict[str, Retriever], spent: dict[str, int],
                weights: dict | None = None) -> tuple[str, list[dict]]:
        mode = mode or ("hybrid_graph" if collection["knowledge_graph"] else "hybrid")
        if mode == "hybrid_graph" and not collection["knowledge_graph"]:
            raise BadRequest("mode hybrid_graph needs a collection created with knowledge_graph: true",
                             param="mode")
        try:
            model = collection["embedding_model"]
            retriever = retrievers.get(model) or retrievers.setdefault(model, self._retriever(model, spent))
            hits = retriever.search(tenant, collection["id"], query, top_k, mode, filters, weights)
        except VectorStoreError as exc:
            raise BadRequest(str(exc)) from None
        names = self.docs.names_of(tenant, list({h["document_id"] for h in hits}))
        # a document deleted a moment ago may still have chunks in flight: never cite what is gone
        return mode, [{**h, "document_name": names[h["document_id"]]} for h in hits if h["document_id"] in names]

    @rpc
    def search(self, envelope: dict) -> dict:
        """GET /api/v1/collections/{collection_id}/search?q=... and POST .../search {query, ...}."""
        tenant, found = self._collection(envelope)
        body = envelope["request"].get("body") or {}
        if not body:  # the GET form, validated by SearchQuery (filters parsed from their JSON there)
            query = envelope["request"]["query"]
            body = {"query": query["q"], "top_k": query["top_k"], "mode": query.get("mode"),
                    "filters": query.get("filters")}
        spent: dict[str, int] = {}
        try:
            mode, hits = self._search(tenant, found, body["query"], body["top_k"], body.get("mode"),
                                      body.get("filters") or {}, {}, spent, body.get("weights"))
        finally:
            self._bill(envelope, spent)
        envelope["response"] = {"object": "list", "mode": mode, "data": hits}
        return envelope

    @rpc
    def augment(self, envelope: dict) -> dict:
        """Chat step: for a request with `rag: {collections, top_k, mode?, filters?}`, retrieve from each named
        collection, fuse, put the passages into the prompt with [n] markers and answer with `citations`.
        graph.yaml runs it only `when: request.body.rag`, so a request without the field never gets here."""
        body, spec = envelope["request"]["body"], request_params(envelope["request"])["rag"]  # its defaults applied
        body.pop("rag", None)  # never forwarded: an upstream would refuse the unknown field
        if not spec:
            return envelope
        tenant = principal_of(envelope)["tenant_id"]
        query = last_user_text(body.get("messages") or [])
        collections = []
        for ref in dict.fromkeys(spec["collections"]):
            collection = self.docs.get_collection(tenant, ref)
            if collection is None:
                raise collection_not_found(ref, "rag.collections")
            collections.append(collection)
        rankings, retrievers, spent = [], {}, {}  # one query embedding per model, however many collections
        try:
            for collection in collections if query else ():
                _, hits = self._search(tenant, collection, query, spec["top_k"], spec["mode"], spec["filters"],
                                       retrievers, spent)
                rankings.append([{**h, "collection_id": collection["id"]} for h in hits])
        finally:
            self._bill(envelope, spent)
        citations = citations_of(rankings, spec["top_k"])
        if tracing.on:  # ids and counts only: the query and the passages are the tenant's
            tracing.current_span().set_attributes({
                "gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": [c["id"] for c in collections],
                "scaigrid.rag.top_k": spec["top_k"], "scaigrid.rag.mode": str(spec["mode"]),
                "scaigrid.rag.citations": len(citations)})
        if citations:
            body["messages"] = inject_context(body["messages"], citations, self._setting("max_context_chars"))
        envelope["context"].setdefault("answer_fields", {})["citations"] = citations
        return envelope
