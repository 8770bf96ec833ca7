"""The OpenAI handler: bodies validated as OpenAI does (400 naming the param), answers and SSE chunks in OpenAI's
shapes, `stream_options.include_usage` honoured, `data: [DONE]` at the end."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from scaigrid.runtime.errors import BadRequest

from ...shared.params import READS, params_of
from .json_route import JsonRoute, sse
from .openai_schemas import BODIES


class OpenAIRoute(JsonRoute):
    """For routes named chat, completions, embeddings (their bodies) and any other OpenAI-shaped route."""

    def params(self, route: str, body: Any) -> dict[str, Any]:
        """Validated as OpenAI validates (a 400 names the param); the steps get the model's values with every default
        applied (shared/params.py), and the body as the client sent it, for upstreams."""
        model = BODIES.get(route)
        if model is None:
            return super().params(route, body)
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object", code="invalid_request_body")
        try:
            validated = model.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"])
            code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
            raise BadRequest(f"'{param}': {first['msg']}", code=code, param=param) from None
        return params_of(validated.model_dump(include=READS))

    def render_end(self, envelope: dict) -> bytes:
        request = envelope["request"]
        tail = b""
        if request["params"]["include_usage"]:
            usage = envelope.get("usage") or {}
            # the route's own chunk object: a completion stream's chunks are text_completion, chat's are not
            kind = "chat.completion.chunk" if "messages" in request["body"] else "text_completion"
            tail = sse({"id": envelope["id"], "object": kind, "model": request.get("model"),
                        "created": int(envelope["context"].get("created", 0)), "choices": [], "usage": usage})
        return tail + b"data: [DONE]\n\n"


