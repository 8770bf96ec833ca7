"""The Anthropic handler (POST /v1/messages): Anthropic's Messages API over the chat route's steps.

The body is validated as Anthropic's (anthropic_schemas.py) and handed to the steps as the chat completions body
that asks the same; the answer (a chat completion, or its chunks) goes back as a Message, or as Anthropic's typed
events: message_start, then per content block (the text; a tool_use block per tool call) content_block_start,
content_block_delta (text_delta or input_json_delta) and content_block_stop, then message_delta (stop_reason,
exact usage) and message_stop. POST /v1/messages/count_tokens (COUNTING_ROUTES) takes the same body without
max_tokens and answers the step's {"input_tokens": n}. Errors, the 401 included, are in Anthropic's shape
({"type": "error", "error": {"type", "message"}}) with the `request-id` header its SDK reads.
"""
from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Request, Response

from scaigrid.runtime.errors import StepError

from ...shared.chunks import added_fields, choices
from ...shared.params import params_of
from .anthropic_schemas import CountTokensRequest, MessagesRequest, chat_body
from .json_route import JsonRoute, answer_of, validated
from .responses import error_response, json_response

# Anthropic's error `type` for each status
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}
COUNTING_ROUTES = frozenset({"messages_count_tokens"})  # graph.yaml's route for POST /v1/messages/count_tokens
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}


def _say(where: str, message: str) -> str:
    """A validation error as Anthropic words it: 'max_tokens: Field required'."""
    message = message.removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def error_body(exc: StepError) -> dict[str, Any]:
    kind = ERROR_TYPES.get(exc.status) or ("invalid_request_error" if 400 <= exc.status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **data}, separators=(",", ":")).encode() \
        + b"\n\n"


def message_id(envelope: dict) -> str:
    return "msg_" + envelope["id"].removeprefix("req_")


def stop_of(choice: dict, stops: list[str] | None) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) of a chat choice. A server that says which stop string ended the text (vLLM's
    `stop_reason`, ScaiGrid's local models) gets "stop_sequence"; one that does not, "end_turn"."""
    finish = choice.get("finish_reason")
    said = choice.get("stop_reason")
    if finish == "stop" and isinstance(said, str) and said in (stops or ()):
        return "stop_sequence", said
    return (STOP_REASONS.get(finish, "end_turn") if finish else None), None


def tool_input(arguments: str | None) -> dict:
    """A tool call's JSON arguments as the object Anthropic's `input` is; arguments that are not one (a model can
    emit broken JSON) are kept as text under "arguments", not dropped."""
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


def usage_of(usage: dict | None) -> dict[str, int]:
    usage = usage or {}
    return {"input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0)}


class AnthropicRoute(JsonRoute):
    """For routes that speak Anthropic's Messages API."""

    id_header = "request-id"  # what Anthropic's SDKs read as the request's id

    def parse(self, request: Request, route: str, path_values: dict[str, Any]) -> dict[str, Any]:
        parsed = self.read(request, path_values)
        sent, counting = parsed["body"], route in COUNTING_ROUTES
        asked = validated(CountTokensRequest if counting else MessagesRequest, sent, _say)
        parsed["body"] = body = chat_body(asked, sent)
        parsed["params"] = {**params_of(body), **({"stream": False} if counting else {})}  # a count is one answer
        parsed["anthropic"] = {"stop_sequences": asked.stop_sequences, "counting": counting}
        return parsed

    def render(self, envelope: dict, headers: dict) -> Response:
        answer = answer_of(envelope)
        if envelope["request"]["anthropic"]["counting"]:  # {"input_tokens": n}, as the step answered
            return json_response(answer, 200, headers)
        choice = (answer.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        reason, sequence = stop_of(choice, envelope["request"]["anthropic"]["stop_sequences"])
        content = [{"type": "text", "text": message["content"]}] if message.get("content") else []
        content += [{"type": "tool_use", "id": call.get("id") or f"toolu_{i}", "name": call["function"]["name"],
                     "input": tool_input(call["function"].get("arguments"))}
                    for i, call in enumerate(message.get("tool_calls") or [])]
        return json_response({"id": message_id(envelope), "type": "message", "role": "assistant",
                              "model": envelope["request"].get("model"), "content": content,
                              "stop_reason": reason, "stop_sequence": sequence,
                              "usage": usage_of(envelope.get("usage") or answer.get("usage")),
                              **added_fields(answer)}, 200, headers)

    def render_error(self, exc: StepError, headers: dict) -> Response:
        return error_response(exc, headers, error_body(exc))

    def stream_renderer(self, envelope: dict) -> MessageStream:
        return MessageStream(envelope)


class MessageStream:
    """One stream's chunks as Anthropic's events: the content blocks (a text block, a tool_use block per tool
    call, each opened, filled and stopped in turn), and how the message ended, which the chunks say only once."""

    def __init__(self, envelope: dict):
        self.envelope, self.started = envelope, False
        self.block: tuple | None = None  # ("text",) or ("tool", the chat tool call's index), open at self.index
        self.index = -1
        self.stops = envelope["request"]["anthropic"]["stop_sequences"]
        self.reason: tuple[str | None, str | None] = (None, None)
        self.usage: dict | None = None

    def _start(self, first: Any = None) -> bytes:
        if self.started:
            return b""
        self.started = True
        envelope = self.envelope
        return event("message_start", {"message": {
            "id": message_id(envelope), "type": "message", "role": "assistant",
            "model": envelope["request"].get("model"), "content": [], "stop_reason": None, "stop_sequence": None,
            # the prompt is counted where the model runs: message_delta carries the exact counts
            "usage": {"input_tokens": 0, "output_tokens": 0}, **added_fields(first)}})

    def _close(self) -> list[bytes]:
        if self.block is None:
            return []
        self.block = None
        return [event("content_block_stop", {"index": self.index})]

    def _open(self, block: tuple, content_block: dict) -> list[bytes]:
        out = self._close()
        self.block, self.index = block, self.index + 1
        return out + [event("content_block_start", {"index": self.index, "content_block": content_block})]

    def _tool_calls(self, calls: list[dict]) -> list[bytes]:
        out: list[bytes] = []
        for position, call in enumerate(calls):
            key = ("tool", call.get("index", position))
            function = call.get("function") or {}
            if self.block != key:
                out += self._open(key, {"type": "tool_use", "id": call.get("id") or f"toolu_{self.index + 1}",
                                        "name": function.get("name") or "", "input": {}})
            if function.get("arguments"):
                out.append(event("content_block_delta", {"index": self.index, "delta": {
                    "type": "input_json_delta", "partial_json": function["arguments"]}}))
        return out

    def render_chunk(self, data: Any) -> bytes:
        out = [self._start(data)]  # a stream's first chunk carries what steps added (rag's citations)
        for text, choice in choices(data):
            if text:
                if self.block != ("text",):
                    out += self._open(("text",), {"type": "text", "text": ""})
                out.append(event("content_block_delta", {"index": self.index,
                                                         "delta": {"type": "text_delta", "text": text}}))
            calls = (choice.get("delta") or choice.get("message") or {}).get("tool_calls")
            if calls:
                out += self._tool_calls(calls)
            if choice.get("finish_reason"):
                self.reason = stop_of(choice, self.stops)
        if isinstance(data, dict) and data.get("usage"):
            self.usage = data["usage"]
        return b"".join(out)

    def render_end(self, envelope: dict) -> bytes:
        out = [self._start(), *self._close()]
        reason, sequence = self.reason
        out.append(event("message_delta", {"delta": {"stop_reason": reason or "end_turn", "stop_sequence": sequence},
                                           "usage": usage_of(envelope.get("usage") or self.usage)}))
        out.append(event("message_stop", {}))
        return b"".join(out)

    def render_stream_error(self, exc: StepError) -> bytes:
        return event("error", {"error": error_body(exc)["error"]})
