"""The default route handler: a JSON body (and path and query values) in, the envelope's response out as JSON.

A body with `"stream": true` is answered as Server-Sent Events: one `data:` line per chunk, then `[DONE]`. The steps
get the body as sent and its effective values (`request.params`, functions/shared/params.py).
"""
from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Request, Response

from scaigrid.runtime.errors import BadRequest, StepError
from scaigrid.runtime.streams import with_answer_fields

from ...shared.params import params_of
from .carried import uncarried
from .responses import error_body, json_response


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def answer_of(envelope: dict) -> Any:
    response = envelope.get("response")
    return with_answer_fields(response, envelope) if isinstance(response, dict) else response


class JsonRoute:
    """request = {body, params, path, query, model}; the answer is `envelope.response` as JSON (or an SSE stream of
    chunks)."""

    max_body = 8 * 2**20  # a route's `max_body:` in graph.yaml overrides it

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

    def render_chunk(self, data: Any) -> bytes:
        return sse(data)

    def render_end(self, envelope: dict) -> bytes:
        return b"data: [DONE]\n\n"

    def render_stream_error(self, exc: StepError) -> bytes:
        return sse(error_body(exc))
