"""The OpenAI handler: bodies validated as OpenAI does (400 naming the param), answers and SSE chunks in OpenAI's
shapes, `stream_options.include_usage` honoured, `data: [DONE]` at the end."""
from __future__ import annotations

from typing import Any

from ...shared.params import READS, params_of
from .json_route import JsonRoute, sse, validated
from .openai_schemas import BODIES


class OpenAIRoute(JsonRoute):
    """For routes named chat, completions, embeddings (their bodies) and any other OpenAI-shaped route."""

    def params(self, route: str, body: Any) -> dict[str, Any]:
        """Validated as OpenAI validates (a 400 names the param); the steps get the model's values with every default
        applied (shared/params.py), and the body as the client sent it, for upstreams."""
        model = BODIES.get(route)
        if model is None:
            return super().params(route, body)
        return params_of(validated(model, body).model_dump(include=READS))

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


