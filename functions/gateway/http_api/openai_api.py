"""The OpenAI handler: bodies validated as OpenAI does (400 naming the param), answers and SSE chunks in OpenAI's
shapes, `stream_options.include_usage` honoured, `data: [DONE]` at the end."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from werkzeug.wrappers import Request

from scaigrid.runtime.errors import BadRequest

from .json_route import JsonRoute, sse
from .openai_schemas import BODIES


class OpenAIRoute(JsonRoute):
    """For routes named chat, completions, embeddings (their bodies) and any other OpenAI-shaped route."""

    def parse(self, request: Request, route: str, path_values: dict[str, Any]) -> dict[str, Any]:
        parsed = super().parse(request, route, path_values)
        model = BODIES.get(route)
        if model is not None:
            if not isinstance(parsed["body"], dict):
                raise BadRequest("the request body must be a JSON object", code="invalid_request_body")
            try:
                model.model_validate(parsed["body"])
            except ValidationError as exc:
                first = exc.errors()[0]
                param = ".".join(str(p) for p in first["loc"])
                code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
                raise BadRequest(f"'{param}': {first['msg']}", code=code, param=param) from None
        return parsed  # JsonRoute.parse already put the (now validated) model where auth reads it

    def render_end(self, envelope: dict) -> bytes:
        body = envelope["request"].get("body") or {}
        tail = b""
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = envelope.get("usage") or {}
            # the route's own chunk object: a completion stream's chunks are text_completion, chat's are not
            kind = "chat.completion.chunk" if "messages" in body else "text_completion"
            tail = sse({"id": envelope["id"], "object": kind, "model": body.get("model"),
                        "created": int(envelope["context"].get("created", 0)), "choices": [], "usage": usage})
        return tail + b"data: [DONE]\n\n"


