"""RAG end to end on the shipped graph: collections, uploads in every format, ingestion jobs, hybrid search with the
knowledge graph (FalkorDB's Bolt listener), chat with `rag` and citations, and tenant isolation at the API.

The real parts throughout: PostgreSQL + pgvector, RabbitMQ, the local ONNX embedding and chat models, spaCy's
English model, FalkorDB. The stores' own contracts (tenant isolation inside each backend included) are in
test_vector_contract.py and test_knowledge_graph.py.
"""
import json
import os
import re
import signal
import time

import httpx
import openai
import psycopg2
import pytest
from tokenizers import Tokenizer

from scaigrid.adapters.backends import EMBED_MODEL, model_dir_for
from scaigrid.functions.ingest.chunking import chunk_text

from rag_stack import CHAT, Api, library, product  # noqa: F401 (library, product: the fixtures)


# collections ----------------------------------------------------------------------------------------------------

def test_collections_lifecycle(product):
    api = product.acme_tenant
    c = api.collection("notes")
    assert (c["embedding_model"], c["dimensions"], c["chunk_size"], c["chunk_overlap"], c["vector_store"]) == \
        ("all-minilm-l6-v2", 384, 200, 40, "pgvector")
    assert api.post("/collections", json={"name": "notes"}).json()["error"]["code"] == "collection_exists"
    assert api.get(f"/collections/{c['id']}").json()["name"] == "notes"
    assert api.get("/collections/notes").json()["id"] == c["id"]  # by name too
    assert "notes" in [x["name"] for x in api.get("/collections").json()["data"]]
    r = api.post("/collections", json={"name": "big", "chunk_size": 4000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chunk_size"
    assert "256" in r.json()["error"]["message"]  # MiniLM's window, and what to use instead
    r = api.post("/collections", json={"name": "x", "embedding_model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = api.post("/collections", json={"name": "x", "embedding_model": CHAT})
    assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_model_kind"
    r = api.post("/collections", json={"name": "", "bogus": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] in ("name", "bogus")
    assert product.acme_member.post("/collections", json={"name": "m"}).status_code == 403
    assert product.acme_member.delete(f"/collections/{c['id']}").status_code == 403
    gone = api.delete(f"/collections/{c['id']}")
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert api.get(f"/collections/{c['id']}").status_code == 404


# documents and ingestion ----------------------------------------------------------------------------------------

def test_every_format_is_indexed_with_its_job(product, library):
    api = product.acme_tenant
    listed = {d["name"]: d for d in api.get(f"/collections/{library['id']}/documents").json()["data"]}
    assert set(listed) == {"curie.txt", "pierre.txt", "zephyr.md", "basalt.pdf", "tea.html"}
    assert {d["content_type"] for d in listed.values()} == {"text/plain", "text/markdown", "application/pdf",
                                                            "text/html"}
    for d in listed.values():
        assert d["status"] == "ready" and d["chunks"] >= 1, d
        job = api.get(f"/jobs/{d['job_id']}").json()
        assert (job["status"], job["stage"], job["progress"]) == ("succeeded", "done", 1.0)
        assert job["chunks_done"] == job["chunks_total"] == d["chunks"] and job["tokens"] > 0
    metrics = httpx.get(product.base_url + "/metrics").text  # the ingest replica's, through the gateway's host view
    assert float(re.search(r'^scaigrid_ingest_jobs_total\{status="succeeded"\} (\S+)', metrics, re.M)[1]) >= 5
    assert float(re.search(r'^scaigrid_ingest_chunks_total\{model="all-minilm-l6-v2"\} (\S+)', metrics, re.M)[1]) >= 5
    pdf_hits = api.search(library["id"], "volcanic rock", mode="keyword")
    assert pdf_hits[0]["document_name"] == "basalt.pdf" and "lava" in pdf_hits[0]["text"]
    html = api.search(library["id"], "steamed oxidation", mode="keyword")[0]
    assert html["document_name"] == "tea.html" and "<p>" not in html["text"]
    assert api.get(f"/collections/{library['id']}").json()["documents"] == 5


def test_chunks_are_token_windows_with_overlap(product):
    api = product.acme_tenant
    c = api.collection("windows", chunk_size=32, chunk_overlap=8)
    text = " ".join(f"Sentence number {i} talks about item {i * 7} in the warehouse." for i in range(60))
    doc = api.upload(c["id"], "long.txt", text)
    job = api.wait(doc["job_id"])
    tokenizer = Tokenizer.from_file(str(model_dir_for(EMBED_MODEL) / "tokenizer.json"))
    expected = chunk_text(text, tokenizer, 32, 8)
    assert job["status"] == "succeeded" and job["chunks_total"] == len(expected) > 10
    hits = api.search(c["id"], "warehouse item", top_k=100, mode="keyword")
    assert sorted(h["text"] for h in hits) == sorted(x.text for x in expected)
    first, second = expected[0], expected[1]
    assert second.start < first.end  # neighbours share text: the overlap


def test_bad_uploads_are_refused_and_store_nothing(product, library):
    api, cid = product.acme_tenant, library["id"]
    before = len(api.get(f"/collections/{cid}/documents").json()["data"])
    cases = [({"name": "a.docx", "content_base64": "UEsDBA=="}, "unsupported_document"),
             ({"name": "b.pdf", "content_base64": "bm90IGEgcGRm"}, "unsupported_document"),
             ({"name": "c.txt", "content_base64": "%%%"}, None),
             ({"name": "d.txt", "text": "x", "content_base64": "eA=="}, None),
             ({"name": "e.txt", "text": "   \n  "}, "empty_document"),
             ({"name": "f.txt", "text": "x", "metadata": {"nested": {"no": 1}}}, None),
             ({"name": "g.txt", "text": "nul \x00 inside"}, "invalid_body"),  # PostgreSQL cannot store NUL
             ({"name": "h.txt", "text": "x", "metadata": {"k": "v\x00"}}, "invalid_body")]
    for body, code in cases:
        r = api.post(f"/collections/{cid}/documents", json=body)
        assert r.status_code == 400, (body, r.text)
        if code:
            assert r.json()["error"]["code"] == code, r.text
    r = api.post(f"/collections/{cid}/documents", files={"nofile": ("x.txt", b"x")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    assert len(api.get(f"/collections/{cid}/documents").json()["data"]) == before


def test_a_job_survives_its_replica_being_killed(product, database_url):
    """SIGKILL the ingest replica mid-job: the unacknowledged job goes back to the queue, the restarted replica runs
    it again from the start, and the document ends with each chunk once."""
    api = product.acme_tenant
    c = api.collection("crash", chunk_size=24, chunk_overlap=4)
    text = " ".join(f"Record {i} of the ledger says crate {i * 13} left dock {i % 9} on time." for i in range(900))
    doc = api.upload(c["id"], "ledger.txt", text)
    deadline = time.monotonic() + 120
    while (job := api.get(f"/jobs/{doc['job_id']}").json())["chunks_done"] < 64:
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["chunks_done"] < job["chunks_total"]  # killed mid-job, not after it
    (pid,) = product.replica_pids("ingest")
    os.kill(pid, signal.SIGKILL)
    job = api.wait(doc["job_id"], timeout=300)
    assert (job["status"], job["attempts"]) == ("succeeded", 2), job
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT id) FROM vector_chunks WHERE document_id = %s", (doc["id"],))
        assert cur.fetchone() == (job["chunks_total"], job["chunks_total"])


def test_embedding_tokens_reach_the_ledger(product, database_url):
    """Ingestion and query embeddings are usage too: one ledger row each, for the key that caused it."""
    api = product.acme_tenant
    c = api.collection("billing")
    up = api.post(f"/collections/{c['id']}/documents", json={"name": "b.txt", "text": "Invoices are due in 30 days."})
    job = api.wait(up.json()["job_id"])
    found = api.post(f"/collections/{c['id']}/search", json={"query": "when are invoices due"})
    tokenizer = Tokenizer.from_file(str(model_dir_for(EMBED_MODEL) / "tokenizer.json"))
    tokenizer.no_padding()  # tokenizer.json pads to 128
    query_tokens = len(tokenizer.encode("when are invoices due").ids)  # with [CLS] and [SEP], as the model reads it
    want = {up.headers["x-request-id"] + ":ingest": ("documents_create", job["tokens"]),
            found.headers["x-request-id"] + ":embed:all-minilm-l6-v2": ("collections_search_post", query_tokens)}
    key_id = api.get("/me").json()["key"]["id"]
    deadline = time.monotonic() + 20
    while True:
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT request_id, route, prompt_tokens, model, key_id::text FROM usage_ledger "
                        "WHERE request_id = ANY(%s)", (list(want),))
            rows = {r[0]: r[1:] for r in cur.fetchall()}
        if len(rows) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows == {rid: (route, tokens, "all-minilm-l6-v2", key_id) for rid, (route, tokens) in want.items()}


def test_delete_document_removes_its_chunks_and_graph(product):
    api = product.acme_tenant
    c = api.collection("deletions", knowledge_graph=True)
    keep = api.upload(c["id"], "keep.txt", "Ada Lovelace wrote about the Analytical Engine in London.")
    drop = api.upload(c["id"], "drop.txt", "Charles Babbage designed the Difference Engine in London.")
    assert api.wait(keep["job_id"])["status"] == api.wait(drop["job_id"])["status"] == "succeeded"
    assert api.delete(f"/collections/{c['id']}/documents/{drop['id']}").json()["deleted"] is True
    assert api.get(f"/collections/{c['id']}/documents/{drop['id']}").status_code == 404
    names = {h["document_name"] for h in api.search(c["id"], "Babbage Difference Engine London", top_k=10)}
    assert names == {"keep.txt"}
    tenant = api.get("/me").json()["tenant"]["id"]
    assert product.kg.entities_of(tenant, c["id"], drop["id"]) == []
    assert "Ada Lovelace" in {e["name"] for e in product.kg.entities_of(tenant, c["id"], keep["id"])}
    api.delete(f"/collections/{c['id']}")
    assert product.kg.counts(tenant, c["id"])["Chunk"] == 0


# retrieval --------------------------------------------------------------------------------------------------------

def test_search_modes_and_filters(product, library):
    api, cid = product.acme_tenant, library["id"]
    vector = api.search(cid, "Which rock forms when lava cools down?", mode="vector", top_k=3)
    assert vector[0]["document_name"] == "basalt.pdf" and vector[0]["sources"] == ["vector"]
    keyword = api.search(cid, "4417", mode="keyword")
    assert [h["document_name"] for h in keyword] == ["zephyr.md"]
    hybrid = api.search(cid, "access code of Zephyr", mode="hybrid", top_k=3)
    assert hybrid[0]["document_name"] == "zephyr.md" and set(hybrid[0]["sources"]) == {"vector", "keyword"}
    science = api.search(cid, "access code of Zephyr", top_k=10, filters={"topic": "science"})
    assert science and {h["metadata"]["topic"] for h in science} == {"science"}
    got = api.get(f"/collections/{cid}/search", params={"q": "volcanic", "mode": "keyword",
                                                        "filters": '{"topic": "geology"}'}).json()
    assert got["mode"] == "keyword" and [h["document_name"] for h in got["data"]] == ["basalt.pdf"]
    r = api.get(f"/collections/{cid}/search", params={"q": "x", "mode": "psychic"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "mode"
    r = api.get(f"/collections/{cid}/search", params={"q": "x", "filters": "{not json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "filters"


def test_graph_expansion_brings_related_chunks(product, library):
    """'Marie Curie' is in curie.txt only; pierre.txt mentions Pierre Curie, whom curie.txt relates to her. Keyword
    search cannot reach pierre.txt from this question, the graph does, and fusion keeps it."""
    api, cid = product.acme_tenant, library["id"]
    question = "What did Marie Curie's family study?"
    keyword = {h["document_name"] for h in api.search(cid, question, mode="keyword", top_k=10)}
    graph = api.search(cid, question, mode="hybrid_graph", top_k=5)
    by_name = {h["document_name"]: h for h in graph}
    assert "pierre.txt" in by_name and "graph" in by_name["pierre.txt"]["sources"]
    assert "pierre.txt" not in keyword or "graph" in by_name["pierre.txt"]["sources"]
    assert api.search(cid, question, top_k=5)[0]["sources"]  # default mode here: hybrid_graph
    plain = api.collection("plain")
    r = api.post(f"/collections/{plain['id']}/search", json={"query": "x", "mode": "hybrid_graph"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "mode"


# chat -------------------------------------------------------------------------------------------------------------

def chat_client(api: Api, base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key=api.key, max_retries=0, timeout=120)


def test_chat_with_rag_cites_its_sources(product, library):
    client = chat_client(product.acme_member, product.base_url)  # members may ask; they need not manage
    ask = [{"role": "user", "content": "What is the access code of Project Zephyr?"}]
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT, messages=ask, max_tokens=24, temperature=0,
        extra_body={"rag": {"collections": ["library"], "top_k": 3}})
    answer = raw.parse()
    citations = answer.model_extra["citations"]
    assert [c["index"] for c in citations] == [1, 2, 3]
    assert citations[0]["document"] == "zephyr.md" and citations[0]["collection_id"] == library["id"]
    assert citations[0]["document_id"] == library["docs"]["zephyr.md"]["id"]
    assert citations[0]["chunk_id"].startswith(citations[0]["document_id"] + ":") and citations[0]["score"] > 0
    assert "4417" in answer.choices[0].message.content  # the model read the injected source
    assert "rag.augment" in raw.headers["server-timing"]
    plain = client.chat.completions.create(model=CHAT, messages=ask, max_tokens=24, temperature=0)
    assert "4417" not in plain.choices[0].message.content
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the context is in the prompt


def test_streamed_chat_carries_citations_first(product, library):
    client = chat_client(product.acme_member, product.base_url)
    stream = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Tell me about basalt."}], max_tokens=8, temperature=0,
        stream=True, extra_body={"rag": {"collections": [library["id"]], "top_k": 2, "filters": {"topic": "geology"}}})
    chunks = list(stream)
    assert [c["document"] for c in chunks[0].model_extra["citations"]] == ["basalt.pdf"]
    assert all("citations" not in (c.model_extra or {}) for c in chunks[1:])


def test_messages_and_responses_answer_from_collections_with_citations(product, library):
    """`rag` on /v1/messages and /v1/responses: the same retrieval as chat, its citations on the answer (the
    stored response too), and on a stream's first event."""
    key, ask = product.acme_member.key, "What is the access code of Project Zephyr?"
    rag = {"collections": ["library"], "top_k": 3}
    message = httpx.post(product.base_url + "/v1/messages", headers={"x-api-key": key}, timeout=120, json={
        "model": CHAT, "max_tokens": 24, "temperature": 0, "rag": rag,
        "messages": [{"role": "user", "content": ask}]}).json()
    assert "4417" in message["content"][0]["text"] and message["citations"][0]["document"] == "zephyr.md"
    client = chat_client(product.acme_member, product.base_url)
    response = client.responses.create(model=CHAT, input=ask, max_output_tokens=24, temperature=0,
                                       extra_body={"rag": rag})
    assert "4417" in response.output_text and response.model_extra["citations"][0]["document"] == "zephyr.md"
    assert client.responses.retrieve(response.id).model_extra["citations"] == response.model_extra["citations"]
    basalt = {"collections": [library["id"]], "top_k": 2, "filters": {"topic": "geology"}}
    with httpx.stream("POST", product.base_url + "/v1/messages", headers={"x-api-key": key}, timeout=120, json={
            "model": CHAT, "max_tokens": 4, "stream": True, "rag": basalt,
            "messages": [{"role": "user", "content": "Tell me about basalt."}]}) as r:
        start = next(json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: "))
    assert start["type"] == "message_start"
    assert [c["document"] for c in start["message"]["citations"]] == ["basalt.pdf"]
    events = list(client.responses.create(model=CHAT, input="Tell me about basalt.", max_output_tokens=4,
                                          stream=True, extra_body={"rag": basalt}))
    assert [c["document"] for c in events[0].response.model_extra["citations"]] == ["basalt.pdf"]
    kept = client.responses.retrieve(events[-1].response.id)
    assert [c["document"] for c in kept.model_extra["citations"]] == ["basalt.pdf"]


def test_requests_without_rag_skip_the_step(product):
    r = httpx.post(product.base_url + "/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {product.acme_member.key}"},
                   json={"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 200 and "citations" not in r.json()
    steps = re.findall(r'desc="([^"]+)"', r.headers["server-timing"])
    assert "rag.augment" not in steps and "inference.chat" in steps


def test_bad_rag_fields_are_400s(product, library):
    headers = {"Authorization": f"Bearer {product.acme_member.key}"}
    body = {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for rag, param in (({"collections": []}, "rag.collections"), ({"collections": ["library"], "top_k": 0},
                                                                   "rag.top_k"),
                       ({"collections": ["nope"]}, "rag.collections"), ({"colections": ["library"]}, None)):
        r = httpx.post(product.base_url + "/v1/chat/completions", json={**body, "rag": rag}, headers=headers,
                       timeout=60)
        assert r.status_code in (400, 404), r.text
        if param:
            assert r.json()["error"]["param"] == param, r.text


# tenant isolation ---------------------------------------------------------------------------------------------------

def test_another_tenant_can_never_reach_the_library(product, library):
    """globex's admin knows acme's ids (they leak, say): every route answers as if they did not exist."""
    them, cid = product.globex_tenant, library["id"]
    doc = library["docs"]["zephyr.md"]
    for method, path in (("GET", f"/collections/{cid}"), ("GET", "/collections/library"),
                         ("GET", f"/collections/{cid}/documents"),
                         ("GET", f"/collections/{cid}/documents/{doc['id']}"),
                         ("GET", f"/collections/{cid}/search?q=4417"), ("GET", f"/jobs/{doc['job_id']}"),
                         ("POST", f"/collections/{cid}/documents"), ("POST", f"/collections/{cid}/search"),
                         ("DELETE", f"/collections/{cid}/documents/{doc['id']}"), ("DELETE", f"/collections/{cid}")):
        body = {"query": "4417"} if path.endswith("search") else {"name": "x.txt", "text": "planted"}
        r = them.request(method, path, json=body if method == "POST" else None)
        assert r.status_code == 404, (method, path, r.text)
    assert them.get("/collections").json()["data"] == []
    # same name, their own collection: nothing of acme's in it
    mine = them.collection("library")
    assert mine["id"] != cid
    assert them.search(mine["id"], "4417 access code Zephyr", top_k=10) == []
    with pytest.raises(openai.NotFoundError) as refused:
        chat_client(them, product.base_url).chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "code?"}], max_tokens=2,
            extra_body={"rag": {"collections": [cid]}})
    assert refused.value.body["code"] == "collection_not_found"
    # and acme's library is as it was
    assert product.acme_tenant.get(f"/collections/{cid}").json()["documents"] == 5
    assert product.acme_tenant.search(cid, "4417", mode="keyword")[0]["document_name"] == "zephyr.md"


def test_admission_counts_the_prompt_rag_adds(product, library):
    """A tight TPM limit and RAG chats sent together: each is admitted on its small question, then its reservation
    is topped up to the prompt with the sources in it (accounting.top_up), so at most one ends past the limit."""
    import concurrent.futures as cf

    admin = product.acme_tenant
    tenant_id = admin.get("/me").json()["tenant"]["id"]
    key = admin.post(f"/tenants/{tenant_id}/keys", json={"name": "tight", "role": "member"}).json()
    limit = 800
    assert admin.put(f"/keys/{key['id']}/limits", json={"tpm": limit}).status_code == 200
    headers = {"Authorization": f"Bearer {key['key']}"}
    body = {"model": CHAT, "messages": [{"role": "user", "content": "What does Marie Curie study?"}],
            "max_tokens": 4, "temperature": 0, "rag": {"collections": ["library"], "top_k": 3}}

    def ask(_):
        return httpx.post(product.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=120)

    with cf.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    served = [a.json()["usage"]["total_tokens"] for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert served and len(served) + len(refused) == 6, [a.text for a in answers if a.status_code not in (200, 429)]
    assert all(a.json()["error"]["code"] == "tpm_exceeded" for a in refused)
    # each question alone is far below the limit; with its sources it is not: the top-up refused the rest
    assert sum(served) - max(served) <= limit, served
