"""Property-based tests (schemathesis) over both published documents: /api/v1/openapi.json as a platform admin and
as a tenant admin, /v1/openapi.json as a tenant's member key, and /v1/messages (Anthropic's, from a document written
here): no 5xx, no answer outside its documented schema or status codes (SSE events included). Bounded for CI
(SCAIGRID_FUZZ_EXAMPLES).

The graph is graph.yaml itself, its model registry extended by models behind an OpenAI-compatible upstream written
here, which answers at once: generation stays fast whatever max_tokens the fuzzer asks for, and the gateway's own
parsing, limits, plugins, RAG and streaming relay are what gets tested."""
import base64
import collections
import json
import os
import struct
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from receivers import JsonHandler
from conftest import bootstrap_key, launch
from scaigrid.functions.gateway.http_api.anthropic_schemas import MessagesRequest
from scaigrid.functions.gateway.http_api.openapi_v1 import sse_event

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("SCAIGRID_FUZZ_EXAMPLES", "12"))
OPENAI_EXAMPLES = EXAMPLES * 4  # each body operation has many fields worth combining
STATUS = {role: collections.Counter() for role in ("platform-admin", "tenant-admin", "openai", "anthropic")}
STREAMED = collections.Counter()
REFUSED = collections.Counter()  # /v1 400s by the param they name: a fuzz that only ever hits one is no fuzz
CHAT, EMBED, LOCAL_EMBED = "fuzz-upstream-chat", "fuzz-upstream-embed", "all-minilm-l6-v2"
# what positive cases name as `model`, per request body (negative ones name others: 404s, and 400s for a wrong kind)
MODELS = {"ChatRequest": [CHAT], "CompletionRequest": [CHAT], "EmbeddingRequest": [EMBED, LOCAL_EMBED],
          "ResponsesRequest": [CHAT]}


class FakeUpstream(JsonHandler):
    """An OpenAI-compatible server answering every chat, completion and embedding request at once, streamed or not."""

    hits = collections.Counter()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind = "chat" if self.path.endswith("/chat/completions") else self.path.rsplit("/", 1)[-1]
        FakeUpstream.hits[kind] += 1
        if kind == "embeddings":
            return self._json(embeddings(body))
        chat = kind == "chat"
        if not body.get("stream"):
            return self._json(answer(body, chat))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")  # HTTP/1.0: the stream ends when the connection does
        self.end_headers()
        for chunk in chunks(body, chat):
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")

    def _json(self, payload):
        self.send_json(200, payload)


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def answer(body, chat):
    n = body.get("n") or 1
    choices = [{"index": i, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}
               if chat else {"index": i, "text": "Hello.", "finish_reason": "stop", "logprobs": None} for i in range(n)]
    return {"id": "fake-1", "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": body["model"], "choices": choices, "usage": USAGE}


def chunks(body, chat):
    base = {"id": "fake-1", "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": body["model"]}
    for piece, finish in (("Hel", None), ("lo.", "stop")):
        choice = {"index": 0, "delta": {"role": "assistant", "content": piece}} if chat else \
            {"index": 0, "text": piece, "logprobs": None}
        yield {**base, "choices": [{**choice, "finish_reason": finish}]}
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": USAGE}


def embeddings(body):
    texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
    vector = [0.25] * min(int(body.get("dimensions") or 3), 8)
    coded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return {"object": "list", "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1},
            "data": [{"object": "embedding", "index": i,
                      "embedding": coded if body.get("encoding_format") == "base64" else vector}
                     for i in range(len(texts))]}


def fuzz_graph(folder: Path, upstream: str) -> Path:
    """graph.yaml with two more models in its registry, both behind the fake upstream."""
    graph = yaml.safe_load((REPO / "graph.yaml").read_text())
    up = {"base_url": upstream + "/v1", "retries": 0}
    graph["functions"]["inference"]["config"]["models"] += [
        {"id": CHAT, "kind": "chat", "backend": "openai", "context_length": 8192, "upstream": up},
        {"id": EMBED, "kind": "embedding", "backend": "openai", "dimensions": 3, "upstream": up}]
    path = folder / "graph.yaml"
    path.write_text(yaml.safe_dump(graph, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def fuzz_target(database_url, tmp_path_factory):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), FakeUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    folder = tmp_path_factory.mktemp("fuzz")
    admin = bootstrap_key(database_url)
    graph = launch(fuzz_graph(folder, f"http://127.0.0.1:{upstream.server_port}"), folder,
                   env={"SCAIGRID_DATABASE_URL": database_url})
    headers = {"Authorization": f"Bearer {admin}"}

    def tenant_with_keys(name, *roles):
        tenant = httpx.post(graph.base_url + "/api/v1/tenants", json={"name": name}, headers=headers).json()
        keys = [httpx.post(f"{graph.base_url}/api/v1/tenants/{tenant['id']}/keys", json={"name": r, "role": r},
                           headers=headers).json() for r in roles]
        return tenant, keys

    try:
        # the platform admin fuzzes against its own sandbox tenant, so disabling it hurts nobody else
        sandbox, (_, sandbox_spare) = tenant_with_keys("fuzz-platform-sandbox", "tenant-admin", "member")
        tenant, (tenant_admin, tenant_spare) = tenant_with_keys("fuzz-tenant", "tenant-admin", "member")
        # /v1 callers hold member keys; theirs is a tenant the native fuzzing never touches
        _, (openai_admin, openai_member) = tenant_with_keys("fuzz-openai", "tenant-admin", "member")
        graph.roles = {
            "platform-admin": (admin, {"tenant_id": sandbox["id"], "key_id": sandbox_spare["id"]}),
            "tenant-admin": (tenant_admin["key"], {"tenant_id": tenant["id"], "key_id": tenant_spare["id"]}),
            "openai": (openai_member["key"], {}),
        }
        graph.collection = indexed_collection(graph.base_url, openai_admin["key"])
        yield graph
    finally:
        graph.stop()
        upstream.shutdown()


def indexed_collection(base_url: str, key: str) -> dict:
    """A collection with one indexed document, so that chat requests with `rag` retrieve and cite."""
    headers = {"Authorization": f"Bearer {key}"}
    collection = httpx.post(base_url + "/api/v1/collections", json={"name": "fuzz-docs"}, headers=headers).json()
    doc = httpx.post(f"{base_url}/api/v1/collections/{collection['id']}/documents", headers=headers, json={
        "name": "hello.txt", "text": "Hello is what the fake upstream always answers. It never says goodbye."}).json()
    deadline = time.monotonic() + 60
    while doc["status"] not in ("ready", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        doc = httpx.get(f"{base_url}/api/v1/collections/{collection['id']}/documents/{doc['id']}",
                        headers=headers).json()
    assert doc["status"] == "ready", doc
    return collection


def schema_for(role):
    def load(fuzz_target):
        key, pinned = fuzz_target.roles[role]
        config = schemathesis.Config.from_dict({
            "headers": {"Authorization": f"Bearer {key}"},
            # real ids, so cases reach past the 404s; everything else is generated
            "parameters": {f"path.{name}": value for name, value in pinned.items()},
        })
        return schemathesis.openapi.from_url(f"{fuzz_target.base_url}/api/v1/openapi.json", config=config)
    return load


@pytest.fixture(scope="module")
def platform_schema(fuzz_target):
    return schema_for("platform-admin")(fuzz_target)


@pytest.fixture(scope="module")
def tenant_schema(fuzz_target):
    return schema_for("tenant-admin")(fuzz_target)


@pytest.fixture(scope="module")
def openai_schema(fuzz_target):
    """/v1/openapi.json as published (it needs no key), with `model` and `rag.collections` narrowed to ids this
    graph and tenant have, so that cases get past the 404s, and `stream` required; everything else is generated."""
    raw = httpx.get(fuzz_target.base_url + "/v1/openapi.json").raise_for_status().json()
    components = raw["components"]["schemas"]
    for name, models in MODELS.items():
        components[name]["properties"]["model"] = {"enum": models}
        if "stream" in components[name]["properties"]:  # always said, so half the cases stream: the relay's turn
            components[name]["required"].append("stream")
    components["RagRequest"]["properties"]["collections"]["items"] = {
        "enum": [fuzz_target.collection["name"], fuzz_target.collection["id"]]}
    config = schemathesis.Config.from_dict({"base-url": fuzz_target.base_url,
                                            "headers": {"Authorization": f"Bearer {fuzz_target.roles['openai'][0]}"}})
    return schemathesis.openapi.from_dict(raw, config=config)


def messages_document(model: str) -> dict:
    """An OpenAPI document for /v1/messages, written here (Anthropic's API is not in ScaiGrid's /v1 document): the
    body is the model the handler validates with, the answers a Message, Anthropic's events, Anthropic's errors."""
    body = MessagesRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = body.pop("$defs", {})
    body["properties"]["model"] = {"enum": [model]}
    body["required"] = [*body["required"], "stream"]  # half the cases stream
    components["MessagesRequest"] = body
    error = {"type": "object", "required": ["type", "error"], "properties": {
        "type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"]}}}
    message = {"type": "object", "required": ["id", "type", "role", "content", "stop_reason", "usage"],
               "properties": {"type": {"const": "message"}, "content": {"type": "array"},
                              "usage": {"type": "object", "required": ["input_tokens", "output_tokens"]}}}
    event = {"type": "object", "required": ["type"]}
    components.update(AnthropicError=error, AnthropicMessage=message, MessageEvent=event)  # not "Message": the body's
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    errors = {code: {"description": "an error, Anthropic's shape", "content": {"application/json": {
        "schema": ref("AnthropicError")}}} for code in ("400", "401", "403", "404", "413", "429", "502", "503", "504")}
    return {"openapi": "3.1.0", "info": {"title": "/v1/messages", "version": "1"}, "components": {"schemas": components},
            "paths": {"/v1/messages": {"post": {
                "operationId": "messages",
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("MessagesRequest")}}},
                "responses": {"200": {"description": "OK", "content": {
                    "application/json": {"schema": ref("AnthropicMessage")},
                    "text/event-stream": {"schema": sse_event(ref("MessageEvent"), ref("AnthropicError"))}}},
                    **errors}}}}}


@pytest.fixture(scope="module")
def messages_schema(fuzz_target):
    config = schemathesis.Config.from_dict({"base-url": fuzz_target.base_url,
                                            "headers": {"x-api-key": fuzz_target.roles["openai"][0]}})
    return schemathesis.openapi.from_dict(messages_document(CHAT), config=config)


CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
as_platform = schemathesis.pytest.from_fixture("platform_schema")
as_tenant = schemathesis.pytest.from_fixture("tenant_schema")
as_openai_caller = schemathesis.pytest.from_fixture("openai_schema")
as_anthropic_caller = schemathesis.pytest.from_fixture("messages_schema")


@as_platform.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_as_platform_admin(case):
    response = case.call()
    STATUS["platform-admin"][response.status_code // 100 * 100] += 1
    case.validate_response(response, checks=CHECKS)


@as_tenant.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_as_tenant_admin(case):
    response = case.call()
    STATUS["tenant-admin"][response.status_code // 100 * 100] += 1
    case.validate_response(response, checks=CHECKS)


@as_openai_caller.parametrize()
@settings(max_examples=OPENAI_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_openai_api(case):
    response = case.call(timeout=60)
    STATUS["openai"][response.status_code // 100 * 100] += 1
    if response.status_code == 200:
        STREAMED[(response.headers.get("content-type") or [""])[0].split(";")[0]] += 1
    elif response.status_code == 400:
        REFUSED[str(response.json()["error"]["param"]).split(".")[0]] += 1
    case.validate_response(response, checks=CHECKS)


@as_anthropic_caller.parametrize()
@settings(max_examples=OPENAI_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_anthropic_messages_api(case):
    response = case.call(timeout=60)
    STATUS["anthropic"][response.status_code // 100 * 100] += 1
    if response.status_code == 400:
        REFUSED["anthropic:" + response.json()["error"]["message"].split(":")[0]] += 1
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": CHAT, "prompt": "Hi", "stream": True, "stream_options": {"include_usage": True}}),
    ("/v1/chat/completions", {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "stream": True,
                              "stream_options": {"include_usage": True}}),
])
def test_usage_chunk_is_the_routes_chunk(fuzz_target, openai_schema, path, body):
    """The usage chunk at the end of a stream has the route's chunk shape (fuzzing found the completion stream's in
    chat's, one run in a few; here it is asked for every time)."""
    case = openai_schema[path]["POST"].Case(body=body, media_type="application/json",
                                            headers={"Authorization": f"Bearer {fuzz_target.roles['openai'][0]}"})
    response = case.call(timeout=60)
    assert response.status_code == 200 and b'"usage"' in response.content
    case.validate_response(response, checks=CHECKS)


def test_zz_cases_reached_past_auth(capsys):
    with capsys.disabled():
        print("\nschemathesis status classes:", json.dumps({r: dict(c) for r, c in STATUS.items()}),
              "\n/v1 answers by media type:", dict(STREAMED), "; upstream calls:", dict(FakeUpstream.hits),
              "\n/v1 400s by param:", dict(REFUSED.most_common(12)))
    for role, counts in STATUS.items():
        assert counts[200] > 0, f"no {role} case got a 2xx: {dict(counts)}"
        assert counts[500] == 0
    assert STREAMED["text/event-stream"] > 0 and STREAMED["application/json"] > 0
    assert all(FakeUpstream.hits[kind] > 0 for kind in ("chat", "completions", "embeddings"))
