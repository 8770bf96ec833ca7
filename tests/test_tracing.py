"""Traces end to end, against a real OTLP/HTTP receiver (tests/otlp_receiver.py decodes what the exporter sends).

The shipped graph serves a streamed RAG chat (gateway with its inline steps, the rag and inference replicas, the
usage ledger); the demo graph shows RPC and event propagation and the flush when a worker stops. Spans go out in
batches after the answer (OTEL_BSP_SCHEDULE_DELAY is short here): the tests poll the receiver, never sleep.
"""
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import bootstrap_key, launch
from otlp_receiver import OtlpReceiver
from receivers import JsonHandler
from scaigrid.runtime.testing import SCAIGRID, throwaway_database

REPO = Path(__file__).resolve().parents[1]
CHAT = "smollm2-135m-instruct"
SECRET_FACT = "The vault of Project Heron opens with the word marmalade."
QUESTION = "Which word opens the vault of Project Heron?"
SERVICES = {"scaigrid-gateway", "scaigrid-rag", "scaigrid-inference"}


def caller_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def parented(spans, root_parent: str = "") -> bool:
    """Every span's parent is in the trace, but for one root whose parent is the caller's span (or none)."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id not in ids]
    return len(roots) == 1 and roots[0].parent_id == root_parent


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def product(receiver, database_url, falkordb_url, tmp_path_factory):
    subprocess.run([*SCAIGRID, "models", "prepare"], check=True, timeout=3600)
    admin_key = bootstrap_key(database_url)
    graph = launch(REPO / "graph.yaml", tmp_path_factory.mktemp("tracing"),
                   env={"SCAIGRID_DATABASE_URL": database_url, "SCAIGRID_NEO4J_URL": falkordb_url,
                        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"})
    admin = httpx.Client(base_url=graph.base_url + "/api/v1", headers={"Authorization": f"Bearer {admin_key}"},
                         timeout=120)
    tenant = admin.post("/tenants", json={"name": "heron"}).json()
    graph.key = admin.post(f"/tenants/{tenant['id']}/keys", json={"name": "m", "role": "tenant-admin"}).json()["key"]
    api = httpx.Client(base_url=graph.base_url + "/api/v1", headers={"Authorization": f"Bearer {graph.key}"},
                       timeout=120)
    graph.collection = api.post("/collections", json={"name": "vault", "knowledge_graph": True}).json()
    doc = api.post(f"/collections/{graph.collection['id']}/documents", json={"name": "heron.txt", "text": SECRET_FACT})
    assert doc.status_code == 202, doc.text
    graph.upload_trace = doc.headers["traceparent"].split("-")[1]
    deadline = time.monotonic() + 120
    while api.get(f"/jobs/{doc.json()['job_id']}").json()["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, "ingestion did not finish"
        time.sleep(0.1)
    yield graph
    admin.close()
    api.close()
    graph.stop()


def streamed_rag_chat(product, headers: dict | None = None) -> httpx.Response:
    body = {"model": CHAT, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8, "temperature": 0,
            "stream": True, "rag": {"collections": [product.collection["id"]], "top_k": 2, "mode": "hybrid_graph"}}
    with httpx.stream("POST", product.base_url + "/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {product.key}", **(headers or {})}) as r:
        text = "".join(r.iter_text())
    assert r.status_code == 200 and text.rstrip().endswith("data: [DONE]"), text[-500:]
    return r


def complete_trace(receiver, trace_id: str, root_parent: str):
    """The trace once every process's spans are in and parented (spans arrive per process, in batches)."""
    def done(spans):
        mine = [s for s in spans if s.trace_id == trace_id]
        return SERVICES <= {s.service for s in mine} and parented(mine, root_parent) and any(
            s.attributes.get("gen_ai.usage.output_tokens") for s in mine)
    receiver.wait_for(done, timeout=30)
    return receiver.trace(trace_id)


def test_a_streamed_rag_chat_is_one_trace_across_processes(product, receiver):
    sent, caller_trace, caller_span = caller_traceparent()
    r = streamed_rag_chat(product, {"traceparent": sent})
    version, trace_id, server_span, flags = r.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", caller_trace, "01")  # the caller's trace, continued

    spans = complete_trace(receiver, caller_trace, caller_span)
    assert SERVICES <= {s.service for s in spans}
    assert parented(spans, caller_span), [(s.service, s.name, s.span_id, s.parent_id) for s in spans]
    root = next(s for s in spans if s.parent_id == caller_span)
    assert (root.service, root.kind, root.span_id) == ("scaigrid-gateway", "server", server_span)
    assert root.name == "POST /v1/chat/completions" and root.attributes["http.response.status_code"] == 200
    assert all(s.attributes.get("scaigrid.function") for s in spans)

    by_name = {}
    for s in spans:
        by_name.setdefault((s.service, s.name), s)
    for inline in ("auth.authenticate", "accounting.admit", "plugins.before", "accounting.top_up"):
        step = by_name[("scaigrid-gateway", inline)]
        assert step.attributes["scaigrid.function"] == inline.split(".")[0] and step.parent_id == root.span_id
    rag = next(s for s in spans if s.service == "scaigrid-rag" and s.kind == "server")
    rag_call = next(s for s in spans if s.span_id == rag.parent_id)
    assert (rag_call.service, rag_call.kind, rag_call.name, rag_call.parent_id) == \
        ("scaigrid-gateway", "client", "rag.augment", root.span_id)
    assert rag.attributes["gen_ai.operation.name"] == "retrieval" and rag.attributes["scaigrid.rag.citations"] >= 1

    served = {s.name: s for s in spans if s.service == "scaigrid-inference" and s.kind == "server"}
    embedding = served["embeddings all-minilm-l6-v2"]  # the query's vector, asked by rag (graph.yaml `calls:`)
    assert embedding.attributes["gen_ai.usage.input_tokens"] > 0
    assert next(s for s in spans if s.span_id == embedding.parent_id).service == "scaigrid-rag"
    generation = served[f"chat {CHAT}"]  # handed on by the inline copy in the gateway to a replica
    attrs = generation.attributes
    assert (attrs["gen_ai.operation.name"], attrs["gen_ai.request.model"], attrs["gen_ai.response.model"]) == \
        ("chat", CHAT, CHAT)
    assert attrs["gen_ai.usage.input_tokens"] > 20 and 0 < attrs["gen_ai.usage.output_tokens"] <= 8
    assert attrs["gen_ai.response.finish_reasons"] in (["length"], ["stop"])
    assert 0 < attrs["gen_ai.response.time_to_first_chunk"] < (generation.end_ns - generation.start_ns) / 1e9
    assert attrs["gen_ai.request.stream"] is True and attrs["gen_ai.request.max_tokens"] == 8

    # the stores' clients, in the processes that used them, each under a span of that request
    systems = {(s.service, s.attributes.get("db.system") or s.attributes.get("db.system.name")) for s in spans}
    assert ("scaigrid-gateway", "redis") in systems  # admission: limits and budgets
    assert ("scaigrid-rag", "postgresql") in systems  # the collection, the vector search
    assert ("scaigrid-rag", "neo4j") in systems  # the knowledge graph, over Bolt

    # the tenant's words and the key never land in a span by default
    for s in spans:
        for value in map(str, s.attributes.values()):
            assert "Heron" not in value and "marmalade" not in value and product.key not in value, (s.name, value)


def test_the_usage_ledger_batch_links_to_the_request(product, receiver):
    """After-steps travel batched, many requests to a message: the batch's span links each envelope's request."""
    r = streamed_rag_chat(product)
    trace_id = r.headers["traceparent"].split("-")[1]
    spans = receiver.wait_for(lambda spans: any(
        s.service == "scaigrid-accounting" and any(link[0] == trace_id for link in s.links) for s in spans))
    batch = next(s for s in spans if s.service == "scaigrid-accounting" and any(l[0] == trace_id for l in s.links))
    assert batch.kind == "consumer" and batch.name == "accounting.record"
    assert batch.attributes["messaging.batch.message_count"] >= 1
    linked = {span for trace, span in batch.links if trace == trace_id}
    assert linked <= {s.span_id for s in complete_trace(receiver, trace_id, "")}


def test_an_ingestion_job_continues_its_upload_trace(product, receiver):
    """The job is an after-step event of one envelope: its consumer span is a child in the upload's trace, and the
    work it does (the embeddings, the knowledge graph's writes over Bolt) is under it."""
    def done(spans):
        mine = [s for s in spans if s.trace_id == product.upload_trace]
        return any(s.service == "scaigrid-ingest" for s in mine) and parented(mine)
    receiver.wait_for(done)
    spans = receiver.trace(product.upload_trace)
    assert parented(spans), [(s.service, s.name, s.span_id, s.parent_id) for s in spans]
    job = next(s for s in spans if s.service == "scaigrid-ingest" and s.kind == "consumer")
    assert job.name == "ingest.run" and job.attributes["scaigrid.job_id"]
    upload = next(s for s in spans if s.span_id == job.parent_id)
    assert (upload.service, upload.name) == ("scaigrid-gateway", "POST /api/v1/collections/<collection_id>/documents")
    under_job = {s.span_id for s in spans if s.parent_id == job.span_id}
    kinds = {(s.service, s.attributes.get("db.system.name") or s.attributes.get("db.system") or s.name)
             for s in spans if s.parent_id in under_job | {job.span_id}}
    assert ("scaigrid-ingest", "neo4j") in kinds and ("scaigrid-ingest", "postgresql") in kinds, kinds
    assert ("scaigrid-inference", "embeddings all-minilm-l6-v2") in kinds, kinds


def test_a_request_without_traceparent_starts_its_own_trace(product, receiver):
    r = streamed_rag_chat(product)
    _, trace_id, server_span, _ = r.headers["traceparent"].split("-")
    spans = complete_trace(receiver, trace_id, "")
    assert parented(spans, "") and next(s for s in spans if not s.parent_id).span_id == server_span


def test_json_log_lines_name_their_trace(product, receiver):
    r = streamed_rag_chat(product)
    trace_id = r.headers["traceparent"].split("-")[1]
    complete_trace(receiver, trace_id, "")
    lines = [d for d in product.log_lines() if d.get("trace_id") == trace_id]
    assert {d["function"] for d in lines} >= {"gateway", "rag", "inference"}
    assert all(len(d["span_id"]) == 16 for d in lines)


def test_rpc_and_event_spans_are_flushed_when_the_graph_stops(tmp_path):
    """A long schedule delay: what a stopping worker holds goes out in its shutdown, not lost with the process. The
    demo graph's remote step and after-step event (one envelope a message) continue the request's trace."""
    with OtlpReceiver() as rx:
        graph = launch("mixed.yaml", tmp_path, env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rx.endpoint + "/v1/traces",
                                                     "OTEL_BSP_SCHEDULE_DELAY": "600000"})
        try:
            r = httpx.post(graph.base_url + "/pipeline", json={"text": "hi"}, timeout=30)
            assert r.status_code == 200, r.text
            trace_id = r.headers["traceparent"].split("-")[1]
        finally:
            graph.stop()
        spans = rx.trace(trace_id)  # no wait: the processes have exited, so whatever came is all there is
    names = {(s.service, s.kind, s.name) for s in spans}
    assert {("scaigrid-gateway", "server", "POST /pipeline"), ("scaigrid-gateway", "client", "tag_remote.add"),
            ("scaigrid-tag_remote", "server", "tag_remote.add"), ("scaigrid-gateway", "internal", "gate.check"),
            ("scaigrid-audit", "consumer", "audit.record")} <= names, names
    assert parented(spans, "")


HUB_PROBE = textwrap.dedent("""
    import eventlet
    eventlet.monkey_patch()
    import json, sys, time
    from scaigrid.runtime import tracing
    assert tracing.configure("probe")
    for i in range(50):
        with tracing.span(f"s{i}"):
            pass
    flusher = eventlet.spawn(tracing.shutdown, 10)
    worst, last, until = 0.0, time.monotonic(), time.monotonic() + 2.0
    while time.monotonic() < until:
        eventlet.sleep(0.01)
        now = time.monotonic()
        worst, last = max(worst, now - last), now
    print(json.dumps({"worst_gap_s": worst, "flushed": flusher.dead}))
""")


def test_the_exporter_waits_cooperatively_for_a_slow_receiver():
    """An export to a receiver that accepts and never answers must not stall the hub: other greenthreads go on
    every 10 ms while the exporter waits for its 3 s timeout."""
    import json
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
               "OTEL_EXPORTER_OTLP_TIMEOUT": "3"}
        done = subprocess.run([sys.executable, "-c", HUB_PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["flushed"] is False  # still waiting on the silent receiver: the probe really overlapped it
    assert result["worst_gap_s"] < 0.25, result


UPSTREAM_KEY = "sk-upstream-" + "5" * 24


@pytest.mark.parametrize("capture", [False, True], ids=["default", "content-captured"])
def test_an_upstream_call_is_a_client_span_that_carries_the_trace(tmp_path, capture):
    """The upstream hears the trace (W3C traceparent) and the span shows its URL as logs do: no path, no key. The
    prompt and the completion are in the generation's span only when OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT
    says so."""
    seen: list[dict] = []

    class Upstream(JsonHandler):
        def do_POST(self):
            seen.append(dict(self.headers))
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_json(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": "hello"}}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    with OtlpReceiver() as rx, throwaway_database() as url:
        graph = launch("traced_upstream.yaml", tmp_path, env={
            "SCAIGRID_DATABASE_URL": url, "SCAIGRID_TEST_UPSTREAM_KEY": UPSTREAM_KEY,
            "SCAIGRID_TEST_UPSTREAM_URL": f"http://127.0.0.1:{upstream.server_port}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
            **({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"} if capture else {})})
        try:
            key = tenant_key(graph.base_url, bootstrap_key(url))
            r = httpx.post(graph.base_url + "/v1/chat/completions", timeout=30,
                           headers={"Authorization": f"Bearer {key}"},
                           json={"model": "fake-upstream", "messages": [{"role": "user", "content": "Hi there"}]})
            assert r.status_code == 200, r.text
            trace_id = r.headers["traceparent"].split("-")[1]
            spans = rx.wait_for(lambda got: any(s.trace_id == trace_id and s.name == "POST" for s in got)
                                and parented([s for s in got if s.trace_id == trace_id]))
        finally:
            graph.stop()
            upstream.shutdown()
    spans = [s for s in spans if s.trace_id == trace_id]
    call = next(s for s in spans if s.name == "POST")
    assert (call.service, call.kind, call.attributes["http.response.status_code"]) == \
        ("scaigrid-inference", "client", 200)
    assert call.attributes["url.full"] == f"http://127.0.0.1:{upstream.server_port}"
    assert seen[-1]["traceparent"].split("-")[1:3] == [trace_id, call.span_id]  # the upstream continues it
    generation = next(s for s in spans if s.span_id == call.parent_id)
    assert generation.name == "chat fake-upstream" and generation.attributes["gen_ai.provider.name"] == "openai"
    assert generation.attributes["gen_ai.usage.output_tokens"] == 1
    assert generation.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    texts = " ".join(str(v) for s in spans for v in s.attributes.values())
    if capture:
        assert "Hi there" in str(generation.attributes["gen_ai.input.messages"])
        assert "hello" in str(generation.attributes["gen_ai.output.messages"])
    else:
        assert "Hi there" not in texts and "hello" not in texts  # the tenants' text stays out by default
    for s in spans:
        for value in map(str, s.attributes.values()):
            assert "tenant-secret-path" not in value and UPSTREAM_KEY not in value and key not in value


def tenant_key(base_url: str, admin_key: str) -> str:
    admin = {"Authorization": f"Bearer {admin_key}"}
    tenant = httpx.post(base_url + "/api/v1/tenants", json={"name": "t"}, headers=admin, timeout=30).json()
    return httpx.post(base_url + f"/api/v1/tenants/{tenant['id']}/keys", json={"name": "k", "role": "member"},
                      headers=admin, timeout=30).json()["key"]
