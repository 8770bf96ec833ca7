"""Anthropic Messages request bodies (POST /v1/messages), validated at the door as Anthropic validates them, and
their translation into the chat completions request the route's steps serve.

The steps (auth, admission, plugins, RAG, inference, ledger) are the chat route's: they read an OpenAI chat body, so
a Messages body becomes one here. What is translated: `system` (a string or text blocks) -> a system message; each
message's text blocks -> its content; `max_tokens`, `temperature`, `top_p`, `top_k`, `stop_sequences` -> `stop`,
`metadata.user_id` -> `user`, `stream` (with the usage chunk asked for: message_delta carries the exact counts).
ScaiGrid's own `rag` field passes through. Tools: `tools` -> function tools, `tool_choice` (auto, any ->
required, tool -> that function, none; disable_parallel_tool_use -> parallel_tool_calls false), an assistant's
tool_use blocks -> its tool_calls, tool_result blocks -> `tool` messages. Unknown fields are ignored, as new API
fields appear faster than gateways follow; the blocks and features not served here (images, documents, server
tools, extended thinking) are a 400 that names them, not dropped in silence.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .openai_schemas import RagRequest, chat_options


class Block(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # cache_control, citations: accepted, not used

    type: Literal["text"]
    text: str


class ToolUse(BaseModel):
    """An assistant's call of a tool (a turn of the conversation sent back)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    input: dict[str, Any]


class ToolResult(BaseModel):
    """What a tool answered, in the user turn after the call."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | list[Block] = ""
    is_error: bool = False


Content = Annotated[Block | ToolUse | ToolResult, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["user", "assistant"]
    content: str | list[Content] = Field(min_length=1)


class Tool(BaseModel):
    """A client tool (Anthropic's server tools, web search and the like, run at Anthropic: not here)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


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
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    rag: RagRequest | None = Field(None, description="ScaiGrid: answer from these collections, with citations")

    @model_validator(mode="after")
    def _stop_sequences_are_text(self) -> MessagesRequest:
        if self.stop_sequences and not all(self.stop_sequences):
            raise ValueError("stop_sequences: each must be a non-empty string")
        if self.tool_choice and self.tool_choice.type == "tool" and not self.tool_choice.name:
            raise ValueError("tool_choice.name: required when tool_choice.type is 'tool'")
        return self


class CountTokensRequest(MessagesRequest):
    """POST /v1/messages/count_tokens: a Messages body without max_tokens (nothing is generated)."""

    max_tokens: int | None = Field(None, ge=1, le=1_000_000)


def _text(content: str | list) -> str:
    return content if isinstance(content, str) else "".join(b.text for b in content if isinstance(b, Block))


def _chat_messages(message: Message) -> list[dict[str, Any]]:
    """One Anthropic turn as chat messages: an assistant's tool_use blocks become its tool_calls, a user's
    tool_result blocks each a `tool` message (first: chat wants them right after the calls), then its text."""
    blocks = [] if isinstance(message.content, str) else message.content
    text = _text(message.content)
    if message.role == "assistant":
        calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
                 for b in blocks if isinstance(b, ToolUse)]
        # "" rather than null beside tool_calls: OpenAI takes both, llama.cpp's server only a string
        return [{"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}]
    results = [{"role": "tool", "tool_call_id": b.tool_use_id,
                "content": ("[error] " if b.is_error else "") + _text(b.content)}
               for b in blocks if isinstance(b, ToolResult)]
    return results + ([{"role": "user", "content": text}] if text or not results else [])


def _tools(request: MessagesRequest) -> dict[str, Any]:
    if not request.tools:
        return {}
    body: dict[str, Any] = {"tools": [{"type": "function", "function": {
        "name": t.name, **({"description": t.description} if t.description else {}),
        "parameters": t.input_schema}} for t in request.tools]}
    choice = request.tool_choice
    if choice is not None:
        body["tool_choice"] = ({"type": "function", "function": {"name": choice.name}} if choice.type == "tool"
                               else {"any": "required"}.get(choice.type, choice.type))
        if choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    return body


def chat_body(request: MessagesRequest, sent: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body that asks for what `request` (validated from `sent`) asks."""
    messages = [{"role": "system", "content": _text(request.system)}] if request.system else []
    messages += [chat for m in request.messages for chat in _chat_messages(m)]
    body: dict[str, Any] = {"model": request.model, "messages": messages, **_tools(request),
                            **chat_options(request, sent, ("max_tokens", "temperature", "top_p", "top_k"))}
    if request.stop_sequences:
        body["stop"] = list(request.stop_sequences)
    if request.metadata and request.metadata.user_id:
        body["user"] = request.metadata.user_id
    return body
