"""The responses handler (POST /v1/responses): OpenAI's Responses API over the chat route's steps.

The body is validated (openai_responses_schemas.py) and handed to the steps as the chat completions body it asks
for; responses.recall puts a previous response's conversation in front, responses.keep turns the chat answer into
the response object (and stores it). A stream is the Responses API's typed events, each with its sequence_number:
response.created, response.in_progress, response.output_item.added, response.content_part.added,
response.output_text.delta ..., response.output_text.done, response.content_part.done,
response.output_item.done (and for a tool call: response.output_item.added with a function_call item,
response.function_call_arguments.delta ..., response.function_call_arguments.done, response.output_item.done),
then response.completed (or response.incomplete at max_output_tokens) with the whole response, usage included. Errors are OpenAI's shape; one mid-stream is an `error` event.
"""
from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Request

from scaigrid.runtime.errors import StepError

from ...shared.chunks import added_fields
from ...shared.params import params_of
from ...shared.response_objects import response_object
from ...shared.response_output import close, gather, item, item_id, items, new_output, text_part
from .json_route import JsonRoute, validated
from .openai_responses_schemas import ResponsesRequest, chat_body, meta_of


class ResponsesRoute(JsonRoute):
    """For routes that speak OpenAI's Responses API."""

    def parse(self, request: Request, route: str, path_values: dict[str, Any]) -> dict[str, Any]:
        parsed = self.read(request, path_values)
        asked = validated(ResponsesRequest, parsed["body"])
        parsed["body"] = body = chat_body(asked, parsed["body"])
        parsed["params"] = params_of(body)
        parsed["responses"] = meta_of(asked)
        return parsed

    def stream_renderer(self, envelope: dict) -> ResponseStream:
        return ResponseStream(envelope)


class ResponseStream:
    """One stream's chunks as the Responses API's events: their numbering, and the output items as they begin,
    grow and end (a message's text, a function call's arguments), gathered as the stored response gathers them."""

    def __init__(self, envelope: dict):
        self.request_id, self.meta = envelope["id"], envelope["context"]["responses"]
        self.seq, self.started, self.added, self.output = 0, False, {}, new_output()

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        self.seq += 1
        payload = json.dumps({"type": kind, **data, "sequence_number": self.seq - 1}, separators=(",", ":"))
        return f"event: {kind}\ndata: {payload}\n\n".encode()

    def _start(self, first: Any = None) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        self.added = added_fields(first)  # a stream's first chunk carries what steps added (rag's citations)
        response = {**response_object(self.request_id, self.meta, "in_progress"), **self.added}
        return [self._event("response.created", {"response": response}),
                self._event("response.in_progress", {"response": response})]

    def _events(self, changes: list[tuple]) -> list[bytes]:
        out = []
        for change in changes:
            index = change[1]
            kind = self.output["items"][index]["type"]
            where = {"item_id": item_id(self.request_id, self.output, index), "output_index": index}
            if change[0] == "added":
                out.append(self._event("response.output_item.added", {
                    "output_index": index, "item": item(self.request_id, self.output, index, "in_progress")}))
                if kind == "message":
                    out.append(self._event("response.content_part.added",
                                           {**where, "content_index": 0, "part": text_part("")}))
            elif change[0] == "delta" and kind == "message":
                out.append(self._event("response.output_text.delta",
                                       {**where, "content_index": 0, "delta": change[2], "logprobs": []}))
            elif change[0] == "delta":
                out.append(self._event("response.function_call_arguments.delta", {**where, "delta": change[2]}))
            else:
                done = item(self.request_id, self.output, index, "completed")
                if kind == "message":
                    text = done["content"][0]["text"]
                    out.append(self._event("response.output_text.done",
                                           {**where, "content_index": 0, "text": text, "logprobs": []}))
                    out.append(self._event("response.content_part.done",
                                           {**where, "content_index": 0, "part": text_part(text)}))
                else:
                    out.append(self._event("response.function_call_arguments.done",
                                           {**where, "name": done["name"], "arguments": done["arguments"]}))
                out.append(self._event("response.output_item.done", {"output_index": index, "item": done}))
        return out

    def render_chunk(self, data: Any) -> bytes:
        return b"".join(self._start(data) + self._events(gather(self.output, data)))

    def render_end(self, envelope: dict) -> bytes:
        out = self._start() + self._events(close(self.output))
        response = {**response_object(self.request_id, self.meta, "completed", items(self.request_id, self.output),
                                      self.output["finish"], envelope.get("usage")), **self.added}
        out.append(self._event(f"response.{response['status']}", {"response": response}))
        return b"".join(out)

    def render_stream_error(self, exc: StepError) -> bytes:
        return self._event("error", {"code": exc.code, "message": exc.message, "param": exc.param})
