"""The OpenAPI 3.1 document of the native API, generated from graph.yaml's routes and the operations' models."""
from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

from pydantic.json_schema import models_json_schema

from . import native_schemas as s
from .operations import OPERATIONS

PATH_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
ERRORS = {"400": "Malformed request (the message names the field)", "401": "Missing, unknown, expired or revoked key",
          "403": "The key's role or model allow-list forbids this", "404": "Not found (or not yours)",
          "409": "Conflicts with what exists", "429": "Rate limit or budget exceeded"}


UPLOAD = {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "contentMediaType": "application/octet-stream", "description": "the document"},
    "name": {"type": "string", "maxLength": 255, "description": "default: the file's name"},
    "content_type": {"type": "string", "maxLength": 100, "description": "default: the part's type, else the name's "
                                                                         "extension"},
    "metadata": {"type": "string", "description": "a JSON object, copied onto every chunk"}}}


def _schemas() -> tuple[dict[tuple, dict], dict]:
    models = {s.Error}
    for op in OPERATIONS.values():
        models.update(m for m in (op.response, op.body) if m is not None)
    pairs = [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)]
    refs, top = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    return refs, top.get("$defs", {})


def _query_parameters(model) -> list[dict]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop,
             **({"description": prop["description"]} if "description" in prop else {})}
            for name, prop in schema["properties"].items()]


def document(graph, prefix: str = "/api/v1") -> dict[str, Any]:
    """Every route under `prefix` with its methods, parameters, body, answers and errors."""
    refs, components = _schemas()
    paths: dict[str, dict] = {}
    for name, route in graph.routes.items():
        op = OPERATIONS.get(name)
        for endpoint in route.http:
            methods, _, path = endpoint.partition(" ")
            if not path.startswith(prefix):
                continue
            oa_path = PATH_PARAM.sub(r"{\1}", path)
            for method in methods.split(","):
                item: dict[str, Any] = {
                    "operationId": name if "," not in methods else f"{name}_{method.lower()}",
                    "summary": op.summary if op else name.replace("_", " "),
                    "tags": [op.tag if op else "other"],
                    "parameters": [{"name": p, "in": "path", "required": True,
                                    "schema": {"type": "string", "minLength": 1, "maxLength": 64}}
                                   for p in PATH_PARAM.findall(path)],
                }
                if op and op.query:
                    item["parameters"] += _query_parameters(op.query)
                if op and op.body:
                    item["requestBody"] = {"required": True, "content": {"application/json": {
                        "schema": refs[(op.body, "validation")]}}}
                if op and op.upload:
                    item["requestBody"]["content"]["multipart/form-data"] = {"schema": UPLOAD}
                ok = {"description": "OK", "content": {"application/json": {
                    "schema": refs[(op.response, "validation")] if op and op.response else {"type": "object"}}}}
                item["responses"] = {str(op.status if op else 200): ok}
                error = {"content": {"application/json": {"schema": refs[(s.Error, "validation")]}}}
                if op and op.upload:
                    item["responses"]["413"] = {"description": "The upload is too large", **error}
                if op and op.query:  # eventlet's HTTP server refuses request lines over 8 KiB (empty body)
                    item["responses"]["414"] = {"description": "The URL is over 8 KiB (percent-encoded); use the "
                                                               "POST form where there is one"}
                for code, text in ERRORS.items():
                    if code == "401" and op and op.public:
                        continue
                    item["responses"][code] = {"description": text, **error}
                if not (op and op.public):
                    item["security"] = [{"bearer": []}]
                paths.setdefault(oa_path, {})[method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "ScaiGrid native API", "version": version("scaigrid"),
                 "description": "Tenants, keys, usage, collections and more. Authenticate with "
                                "`Authorization: Bearer sg-…`. Errors use OpenAI's error format."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "a ScaiGrid API key (sg-…)"}}},
    }
