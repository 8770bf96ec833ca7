"""Anthropic Messages request bodies (POST /v1/messages), validated at the door as Anthropic validates them, and
their translation into the chat completions request the route's steps serve.

The steps (auth, admission, plugins, RAG, inference, ledger) are the chat route's: they read an OpenAI chat body, so
a Messages body becomes one here. What is translated: `system` (a string or text blocks) -> a system message; each
message's text blocks -> its content; `max_tokens`, `temperature`, `top_p`, `top_k`, `stop_sequences` -> `stop`,
`metadata.user_id` -> `user`, `stream` (with the usage chunk asked for: message_delta carries the exact counts).
ScaiGrid's own `rag` field passes through. Unknown fields are ignored, as new API fields appear faster than
gateways follow; the blocks and features not served here (images, documents, tools, extended thinking) are a 400
that names them, not dropped in silence.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .openai_schemas import RagRequest


class Block(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # cache_control, citations: accepted, not used

    type: Literal["text"] = Field(description="text blocks only: images, documents and tools are not served yet")
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["user", "assistant"]
    content: str | list[Block] = Field(min_length=1)


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    user_id: str | None = Field(None, max_length=256)


class Thinking(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["disabled"] = Field(description="extended thinking is not served: only {type: disabled}")


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00]+$",
                       description="a model id of GET /v1/models")
    max_tokens: int = Field(ge=1, le=1_000_000)
    messages: list[Message] = Field(min_length=1)
    system: str | list[Block] | None = None
    stop_sequences: list[str] | None = Field(None, max_length=16)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    metadata: Metadata | None = None
    thinking: Thinking | None = None
    tools: list[Any] | None = Field(None, max_length=0, description="tools are not served on /v1/messages yet")
    tool_choice: Any = Field(None, description="tools are not served on /v1/messages yet")
    rag: RagRequest | None = Field(None, description="ScaiGrid: answer from these collections, with citations")

    @model_validator(mode="after")
    def _stop_sequences_are_text(self) -> MessagesRequest:
        if self.stop_sequences and not all(self.stop_sequences):
            raise ValueError("stop_sequences: each must be a non-empty string")
        if self.tool_choice is not None:
            raise ValueError("tool_choice: tools are not served on /v1/messages yet")
        return self


def _text(content: str | list[Block]) -> str:
    return content if isinstance(content, str) else "".join(block.text for block in content)


def chat_body(request: MessagesRequest, sent: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body that asks for what `request` (validated from `sent`) asks."""
    messages = [{"role": "system", "content": _text(request.system)}] if request.system else []
    messages += [{"role": m.role, "content": _text(m.content)} for m in request.messages]
    body: dict[str, Any] = {"model": request.model, "messages": messages, "max_tokens": request.max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    if request.stop_sequences:
        body["stop"] = list(request.stop_sequences)
    if request.metadata and request.metadata.user_id:
        body["user"] = request.metadata.user_id
    if request.stream:
        body["stream"], body["stream_options"] = True, {"include_usage": True}
    if request.rag is not None:
        body["rag"] = sent["rag"]  # as sent, as the chat route passes it
    return body
