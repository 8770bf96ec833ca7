"""The default route handler: a JSON body (and path and query values) in, the envelope's response out as JSON.

A body with `"stream": true` is answered as Server-Sent Events: one `data:` line per chunk, then `[DONE]`. The steps
get the body as sent and its effective values (`request.params`, functions/shared/params.py).
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError
from werkzeug.wrappers import Request, Response

from scaigrid.runtime.errors import BadRequest, StepError
from scaigrid.runtime.streams import with_answer_fields

from ...shared.params import params_of
from .carried import uncarried
from .responses import error_body, error_response, json_response


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def validated(model: type[BaseModel], body: Any, say=lambda param, msg: f"'{param}': {msg}") -> BaseModel:
    """`body` as `model`, or a 400 naming the first field at fault (`say(field, pydantic's message)` words it in
    the API's way)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_request_body")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        # a union's member shows in the location ('content.str', 'input.list[...]'): the field is what a client fixes
        param = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and (p in UNION_MEMBERS or "[" in p)))
        code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
        raise BadRequest(say(param, first["msg"]), code=code, param=param or None) from None


def answer_of(envelope: dict) -> Any:
    response = envelope.get("response")
    return with_answer_fields(response, envelope) if isinstance(response, dict) else response


class JsonRoute:
    """request = {body, params, path, query, model}; the answer is `envelope.response` as JSON (or an SSE stream of
    chunks)."""

    max_body = 8 * 2**20  # a route's `max_body:` in graph.yaml overrides it
    id_header: str | None = None  # a header that repeats x-request-id under the name an API's SDKs read

    def parse(self, request: Request, route: str, path_values: dict[str, Any]) -> dict[str, Any]:
        parsed = self.read(request, path_values)
        parsed["params"] = self.params(route, parsed["body"])
        return parsed

    def params(self, route: str, body: Any) -> dict[str, Any]:
        """The body's effective values (no schema here: a value of the wrong type counts as not given)."""
        return params_of(body)

    def read(self, request: Request, path_values: dict[str, Any]) -> dict[str, Any]:
        """{body, path, query, model}: the body parsed as JSON, and checked for what no step could carry."""
        body = None
        raw = request.get_data(cache=True)
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
            except RecursionError:  # '[' * 100000: deeper than any real body, and than Python's stack
                raise BadRequest("request body is nested too deeply", code="invalid_json") from None
            found = uncarried(body)
            if found is not None:
                field = ".".join(str(k) for k in found[0]) or "body"
                raise BadRequest(f"'{field}': {found[1]}", code="invalid_value", param=field)
        parsed = {"body": body, "path": path_values, "query": request.args.to_dict()}
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            parsed["model"] = body["model"]  # auth checks it against the key's allow-list
        return parsed

    def wants_stream(self, request: dict[str, Any]) -> bool:
        return request["params"]["stream"]

    def render(self, envelope: dict, headers: dict) -> Response:
        return json_response(answer_of(envelope), 200, headers)

    def render_error(self, exc: StepError, headers: dict) -> Response:
        return error_response(exc, headers)

    def stream_renderer(self, envelope: dict):
        """What renders one stream's chunks, end and error: an API whose events carry state across chunks gives an
        object per stream; chunks that stand alone are rendered by the handler itself."""
        return self

    def render_chunk(self, data: Any) -> bytes:
        return sse(data)

    def render_end(self, envelope: dict) -> bytes:
        return b"data: [DONE]\n\n"

    def render_stream_error(self, exc: StepError) -> bytes:
        return sse(error_body(exc))
