"""GenAI attributes on the span of an inference step (OpenTelemetry's GenAI semantic conventions): what was asked
of which model, what it answered with, how many tokens, and the time to the first chunk of a stream (the
generation metrics' clock's, generation_metrics.py: one measure for both).

Prompts and completions are the tenants' data: they go into a span only when
`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` (docs/observability.md).
"""
from __future__ import annotations

import json

from scaigrid.runtime import tracing

from ..shared.params import request_params

PROVIDERS = {"openai": "openai"}  # backend -> gen_ai.provider.name; a local model is ScaiGrid's own
CONTENT_LIMIT = 16_000  # characters of a captured prompt or completion: a span is no document store


def _content(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text[:CONTENT_LIMIT]


class GenAiSpan:
    """The current span, described as one generation (or embedding); does nothing while tracing is off."""

    def __init__(self, spec: dict, envelope: dict | None, operation: str):
        self.span = tracing.current_span()
        self.recording = self.span.is_recording()
        self.reasons: list = []  # from a stream's chunks
        if not self.recording:
            return
        self.span.update_name(f"{operation} {spec['id']}")
        attributes = {"gen_ai.operation.name": operation, "gen_ai.request.model": spec["id"],
                      "gen_ai.provider.name": PROVIDERS.get(spec.get("backend"), "scaigrid")}
        request = (envelope or {}).get("request") or {}
        if request.get("body"):
            params = request_params(request)
            attributes.update({"gen_ai.request.max_tokens": params.get("max_tokens"),
                               "gen_ai.request.temperature": params.get("temperature"),
                               "gen_ai.request.top_p": params.get("top_p"),
                               "gen_ai.request.seed": params.get("seed"),
                               "gen_ai.request.stream": bool(params.get("stream"))})
            if tracing.capture_content():
                body = request["body"]
                attributes["gen_ai.input.messages"] = _content(body.get("messages", body.get("prompt")))
        self.span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def chunk(self, chunk: dict) -> None:
        """An upstream's chunk went out: it may say why the generation stopped."""
        if self.recording:
            self.reasons += finish_reasons(chunk)

    def done(self, usage: dict | None, model: str | None = None, finish_reasons: list | None = None,
             output=None, first_s: float | None = None) -> None:
        """What came back: token counts, the model that answered, why it stopped, the seconds to a stream's first
        content (`first_s`, the generation metrics' clock), and the text if allowed."""
        if not self.recording:
            return
        usage = usage or {}
        attributes = {"gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
                      "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
                      "gen_ai.response.model": model, "gen_ai.response.time_to_first_chunk": first_s,
                      "gen_ai.response.finish_reasons": [str(r) for r in finish_reasons or self.reasons if r]}
        if output is not None and tracing.capture_content():
            attributes["gen_ai.output.messages"] = _content(output)
        self.span.set_attributes({k: v for k, v in attributes.items() if v not in (None, [])})


def finish_reasons(answer: dict) -> list:
    """The finish reasons of an OpenAI-shaped answer or chunk."""
    return [c.get("finish_reason") for c in answer.get("choices") or () if c.get("finish_reason")]
