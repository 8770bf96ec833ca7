"""The OpenAPI 3.1 document of the OpenAI-compatible API: every graph.yaml route whose handler is `openai`, its body
the model that handler validates with (openai_schemas.BODIES), its answer in OpenAI's shape, as JSON or, with
`stream: true`, as Server-Sent Events. Built on the same pieces as the native document (openapi.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from . import native_schemas as s
from . import openai_schemas as o
from .openai_responses_schemas import ResponsesRequest
from .openapi import component_schemas, endpoints, error_responses, wrap

BODY_ERRORS = ("400", "401", "403", "404", "413", "429", "502", "503", "504")
# a route with no body names no model: no allow-list, no limits, no upstream; one whose path names a model 404s
PLAIN_ERRORS = ("401", "503", "504")
TEXTS = {"404": "The model does not exist (or the route does not)",
         "403": "The key's model allow-list does not include this model"}


@dataclass(frozen=True)
class OpenAIOperation:
    """What the document says of one `openai` route besides its body: summary, tag, answer and stream chunk."""

    summary: str
    tag: str
    response: type[BaseModel]
    chunk: type[BaseModel] | None = None  # what each event of a `stream: true` answer carries


# keyed by graph.yaml route name, like BODIES (the handler looks bodies up by route name)
OPERATIONS: dict[str, OpenAIOperation] = {
    "chat": OpenAIOperation("Chat completion (optionally answered from collections: `rag`)", "chat",
                            o.ChatCompletion, o.ChatCompletionChunk),
    "completions": OpenAIOperation("Text completion (legacy)", "completions", o.Completion, o.Completion),
    "embeddings": OpenAIOperation("Embeddings of one or more texts", "embeddings", o.EmbeddingList),
    "openai_models": OpenAIOperation("Models this key may use", "models", s.ModelList),
    "openai_model": OpenAIOperation("One model this key may use (404 `model_not_found` for any other)", "models",
                                    s.Model),
    "responses": OpenAIOperation("Create a response (OpenAI's Responses API; kept unless `store: false`)",
                                 "responses", o.ResponseObject, o.ResponseEvent),
    "responses_get": OpenAIOperation("A stored response of this key's tenant", "responses", o.ResponseObject),
    "responses_delete": OpenAIOperation("Delete a stored response", "responses", o.ResponseDeleted),
}
# the bodies each route's handler validates with, by route name
DOCUMENTED_BODIES = {**o.BODIES, "responses": ResponsesRequest}


def sse_event(chunk_ref: dict, error_ref: dict) -> dict[str, Any]:
    """One event of a streamed answer, as OpenAPI 3.2 words it (`itemSchema`) and schemathesis reads a 3.1 `schema`:
    `data` is a chunk as JSON, an error (the stream stops after it) or the final `[DONE]`."""
    return {"type": "object", "required": ["data"], "properties": {"data": {
        "type": "string",
        "if": {"const": "[DONE]"}, "then": True,
        "else": {"contentMediaType": "application/json", "contentSchema": {"anyOf": [chunk_ref, error_ref]}}}},
        "description": "`data: {chunk}` events, then `data: [DONE]`; a failure mid-stream is an `{\"error\": …}` "
                       "event and the stream ends"}


def _is_openai(name: str, route, path: str) -> bool:
    return route.handler in ("openai", "responses")  # Anthropic's /v1/messages is not OpenAI's: not here


def openai_document(graph) -> dict[str, Any]:
    """Every `openai` route of the graph with its body, answers (JSON or SSE) and errors."""
    models = [m for op in OPERATIONS.values() for m in (op.response, op.chunk) if m] + list(DOCUMENTED_BODIES.values())
    refs, components = component_schemas(models)
    paths: dict[str, dict] = {}
    for name, method, oa_path, parameters, several in endpoints(graph, _is_openai):
        op, body = OPERATIONS.get(name), DOCUMENTED_BODIES.get(name)
        item: dict[str, Any] = {
            "operationId": f"{name}_{method.lower()}" if several else name,
            "summary": op.summary if op else name.replace("_", " "),
            "tags": [op.tag if op else "other"],
            "security": [{"bearer": []}],
        }
        if parameters:
            item["parameters"] = list(parameters)
        if body is not None:
            item["requestBody"] = {"required": True, "content": {"application/json": {"schema": refs[body]}}}
        content: dict[str, Any] = {"application/json": {"schema": refs[op.response] if op else {"type": "object"}}}
        if op and op.chunk:
            content["text/event-stream"] = {"schema": sse_event(refs[op.chunk], refs[s.Error])}
        item["responses"] = {"200": {"description": "OK", "content": content}}
        codes = BODY_ERRORS if body is not None or method != "GET" else PLAIN_ERRORS + ("404",) * bool(parameters)
        item["responses"].update(error_responses(codes, refs[s.Error], TEXTS))
        paths.setdefault(oa_path, {})[method.lower()] = item
    return wrap("ScaiGrid OpenAI-compatible API",
                "Point an OpenAI SDK at `<this server>/v1` with a ScaiGrid key (`Authorization: Bearer sg-…`). "
                "Bodies are validated as OpenAI validates them (a 400 names the `param`); fields ScaiGrid does not "
                "know pass to upstream models unchanged, and local models refuse the ones they cannot serve. "
                "Errors use OpenAI's error format.", paths, components)
