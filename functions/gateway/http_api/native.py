"""The native API handler: bodies and query strings validated by the operation's pydantic models (errors name the
field), answers with the operation's status code. The steps get the validated model as a plain dict, every default
applied (no `request.params`: the body is the effective values)."""
from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import BaseModel, ValidationError
from werkzeug.wrappers import Request, Response

from scaigrid.runtime.errors import BadRequest

from .json_route import JsonRoute, answer_of
from .operations import OPERATIONS
from .responses import json_response


def validation_error(exc: ValidationError, where: str) -> BadRequest:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or where
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return BadRequest(f"{where} field '{field}': {first['msg']}{more}", code="invalid_" + where, param=field)


def validate(model: type[BaseModel], data: Any, where: str) -> dict:
    try:
        return model.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        raise validation_error(exc, where) from None


def multipart_body(request: Request) -> dict[str, Any]:
    """A file upload as the JSON body it stands for: the `file` part base64-encoded, `metadata` parsed as JSON,
    every other part a string field (name, content_type)."""
    body: dict[str, Any] = dict(request.form.items())
    upload = request.files.get("file")
    if upload is None:
        raise BadRequest("a multipart upload needs a 'file' part", code="invalid_body", param="file")
    body["content_base64"] = base64.b64encode(upload.read()).decode()
    body.setdefault("name", upload.filename or "upload")
    if upload.mimetype and upload.mimetype != "application/octet-stream":
        body.setdefault("content_type", upload.mimetype)
    if "metadata" in body:
        try:
            body["metadata"] = json.loads(body["metadata"])
        except ValueError as exc:
            raise BadRequest(f"the 'metadata' part is not valid JSON: {exc}", code="invalid_body",
                             param="metadata") from None
    return body


def nul_path(value: Any, path: str = "") -> str | None:
    """Where a NUL character hides in a parsed body (PostgreSQL text and jsonb cannot hold one), else None."""
    if isinstance(value, str):
        return path or "body" if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return f"{path}.{key!r}".lstrip(".")
        found = nul_path(item, f"{path}.{key}".lstrip("."))
        if found:
            return found
    return None


class NativeRoute(JsonRoute):
    """JSON in and out, shaped by OPERATIONS[route]; a multipart/form-data upload is read as its JSON body."""

    max_body = 1 * 2**20  # tenants, keys, limits, plugins: small; document uploads set their own (graph.yaml)

    def parse(self, request: Request, route: str, path_values: dict[str, Any]) -> dict[str, Any]:
        op = OPERATIONS.get(route)
        if request.mimetype == "multipart/form-data":
            parsed = {"body": multipart_body(request), "path": path_values, "query": request.args.to_dict()}
        else:
            parsed = self.read(request, path_values)
        for where in ("body", "query"):
            found = nul_path(parsed.get(where))
            if found:
                raise BadRequest(f"{where} field '{found}' contains a NUL character (\\u0000), which cannot be "
                                 "stored", code="invalid_" + where, param=found)
        if op is None:
            return parsed
        if op.body is not None:
            parsed["body"] = validate(op.body, parsed["body"] if parsed["body"] is not None else {}, "body")
        if op.query is not None:
            parsed["query"] = validate(op.query, parsed["query"], "query")
        return parsed

    def wants_stream(self, request: dict[str, Any]) -> bool:
        return False

    def render(self, envelope: dict, headers: dict) -> Response:
        op = OPERATIONS.get(envelope["route"])
        return json_response(answer_of(envelope), op.status if op else 200, headers)


