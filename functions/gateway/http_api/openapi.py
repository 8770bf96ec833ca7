"""The OpenAPI 3.1 documents, generated from graph.yaml's routes and the models their handlers validate with: the
native API's (here) and the OpenAI-compatible API's (openapi_v1.py), on the same pieces below."""
from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any, Callable, Iterable, Iterator

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import native_schemas as s
from .operations import OPERATIONS

PATH_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
# every error either API answers, in OpenAI's error shape; each document picks the codes its operations can give
ERRORS = {"400": "Malformed request (the message and `param` name the field)",
          "401": "Missing, unknown, expired or revoked key",
          "403": "The key's role or model allow-list forbids this", "404": "Not found (or not yours)",
          "409": "Conflicts with what exists",
          "413": "The request body is over this route's limit (graph.yaml `max_body`)",
          "429": "Rate limit or budget exceeded (`Retry-After` says when to try again)",
          "502": "The model's upstream failed, after its retries and fallbacks",
          "503": "This gateway replica is shutting down, or a function it needs is unavailable; retry",
          "504": "A step of the route did not answer in time"}
NATIVE_ERRORS = ("400", "401", "403", "404", "409", "429", "503", "504")
SECURITY_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer", "description": "a ScaiGrid API key (sg-…)"}}
RETRY_AFTER = {"Retry-After": {"description": "seconds until the limit lets a request through",
                               "schema": {"type": "integer", "minimum": 0}}}


UPLOAD = {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "contentMediaType": "application/octet-stream", "description": "the document"},
    "name": {"type": "string", "maxLength": 255, "description": "default: the file's name"},
    "content_type": {"type": "string", "maxLength": 100, "description": "default: the part's type, else the name's "
                                                                         "extension"},
    "metadata": {"type": "string", "description": "a JSON object, copied onto every chunk"}}}


def component_schemas(models: Iterable[type[BaseModel]]) -> tuple[dict[type[BaseModel], dict], dict]:
    """Each model's `$ref` and the components they need (nested models once, by name); the error model included."""
    pairs = [(m, "validation") for m in sorted({s.Error, *models}, key=lambda m: m.__name__)]
    refs, top = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    return {model: ref for (model, _), ref in refs.items()}, top.get("$defs", {})


def error_responses(codes: Iterable[str], error_ref: dict, texts: dict[str, str] | None = None) -> dict[str, dict]:
    """The documented errors, each in OpenAI's error shape; `texts` words some of them for one operation."""
    out = {}
    for code in codes:
        out[code] = {"description": (texts or {}).get(code, ERRORS[code]),
                     "content": {"application/json": {"schema": error_ref}}}
        if code == "429":
            out[code]["headers"] = RETRY_AFTER
    return out


def endpoints(graph, keep: Callable[[str, Any, str], bool]) -> Iterator[tuple[str, str, str, list[dict], bool]]:
    """(route name, method, OpenAPI path, path parameters, whether the route serves several methods) for every
    endpoint of every graph.yaml route that `keep(name, route, path)` selects."""
    for name, route in graph.routes.items():
        for endpoint in route.http:
            methods, _, path = endpoint.partition(" ")
            if not keep(name, route, path):
                continue
            parameters = [{"name": p, "in": "path", "required": True,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 64}}
                          for p in PATH_PARAM.findall(path)]
            for method in methods.split(","):
                yield name, method, PATH_PARAM.sub(r"{\1}", path), parameters, "," in methods


def wrap(title: str, description: str, paths: dict, components: dict) -> dict[str, Any]:
    """The document around `paths`: the version, the server, the schemas and the bearer scheme."""
    return {"openapi": "3.1.0", "info": {"title": title, "version": version("scaigrid"), "description": description},
            "servers": [{"url": "/"}], "paths": paths,
            "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES}}


def _query_parameters(model) -> list[dict]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop,
             **({"description": prop["description"]} if "description" in prop else {})}
            for name, prop in schema["properties"].items()]


def document(graph, prefix: str = "/api/v1") -> dict[str, Any]:
    """Every route under `prefix` with its methods, parameters, body, answers and errors."""
    refs, components = component_schemas(m for op in OPERATIONS.values() for m in (op.response, op.body) if m)
    paths: dict[str, dict] = {}
    for name, method, oa_path, parameters, several in endpoints(graph, lambda n, r, path: path.startswith(prefix)):
        op = OPERATIONS.get(name)
        item: dict[str, Any] = {
            "operationId": f"{name}_{method.lower()}" if several else name,
            "summary": op.summary if op else name.replace("_", " "),
            "tags": [op.tag if op else "other"],
            "parameters": list(parameters),
        }
        if op and op.query:
            item["parameters"] += _query_parameters(op.query)
        if op and op.body:
            item["requestBody"] = {"required": True, "content": {"application/json": {"schema": refs[op.body]}}}
        if op and op.upload:
            item["requestBody"]["content"]["multipart/form-data"] = {"schema": UPLOAD}
        ok = {"description": "OK", "content": {"application/json": {
            "schema": refs[op.response] if op and op.response else {"type": "object"}}}}
        item["responses"] = {str(op.status if op else 200): ok}
        codes = [c for c in NATIVE_ERRORS if not (c == "401" and op and op.public)]
        if op and op.body:
            codes.append("413")
        item["responses"].update(error_responses(sorted(codes), refs[s.Error],
                                                 {"413": "The upload is too large"} if op and op.upload else None))
        if op and op.query:  # eventlet's HTTP server refuses request lines over 8 KiB (empty body)
            item["responses"]["414"] = {"description": "The URL is over 8 KiB (percent-encoded); use the "
                                                       "POST form where there is one"}
        if not (op and op.public):
            item["security"] = [{"bearer": []}]
        paths.setdefault(oa_path, {})[method.lower()] = item
    return wrap("ScaiGrid native API", "Tenants, keys, usage, collections and more. Authenticate with "
                "`Authorization: Bearer sg-…`. Errors use OpenAI's error format.", paths, components)
