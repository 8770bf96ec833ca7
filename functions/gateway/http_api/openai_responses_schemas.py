"""OpenAI Responses request bodies (POST /v1/responses), validated at the door, and their translation into the chat
completions body the route's steps serve (for local models and upstreams alike: no upstream is asked to speak the
Responses API, which few OpenAI-compatible servers do; /v1/models says `responses: translated`).

Translated: `input` (a string, or message items whose content is a string or input_text/output_text parts) ->
messages (`developer` as `system`, which every chat template knows); `instructions` -> a system message first (not
carried over to a follow-up, as OpenAI's are not); `max_output_tokens` -> `max_tokens`; `temperature`, `top_p`,
`user`, `stream` (with the usage chunk asked for), ScaiGrid's `rag`. `previous_response_id` and `store` are the
responses function's (the history is prepended by responses.recall). What would change the answer and is not
served is a 400 naming it: built-in tools, non-text formats, reasoning effort, image and file parts. Function
tools become chat's tools, `tool_choice` and `parallel_tool_calls` chat's, function_call and function_call_output
items the assistant's tool_calls and `tool` messages.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from .openai_schemas import RagRequest, chat_options


class Part(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["input_text", "output_text", "text"] = Field(description="text parts only: no images or files")
    text: str


class Item(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]


class FunctionCall(BaseModel):
    """A call the model made earlier (sent back with its output, when the client keeps the conversation)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    arguments: str


class FunctionCallOutput(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str


def _item_type(value: Any) -> str | None:
    return value.get("type", "message") if isinstance(value, dict) else None


InputItem = Annotated[Annotated[Item, Tag("message")] | Annotated[FunctionCall, Tag("function_call")]
                      | Annotated[FunctionCallOutput, Tag("function_call_output")], Discriminator(_item_type)]


class FunctionTool(BaseModel):
    """A function the model may call (built-in tools, web and file search and the like, run at OpenAI: not here)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)


class Format(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["text"] = Field(description="plain text only: no json_schema yet")


class Text(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    format: Format | None = None


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    effort: None = Field(None, description="no reasoning models are served")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00]+$",
                       description="a model id of GET /v1/models")
    input: str | list[InputItem] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = Field(None, min_length=1, max_length=64)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    user: str | None = Field(None, max_length=256)
    text: Text | None = None
    reasoning: Reasoning | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["disabled", "auto"] | None = None
    rag: RagRequest | None = Field(None, description="ScaiGrid: answer from these collections, with citations")


def _text(content: str | list[Part]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


def input_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The input as chat messages: a message item each (developer as system), function_call items as the
    assistant turn that made the calls (consecutive ones in one turn), function_call_output items as tool
    messages."""
    if isinstance(request.input, str):
        return [{"role": "user", "content": request.input}]
    messages: list[dict[str, Any]] = []
    for item in request.input:
        if isinstance(item, FunctionCall):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name,
                                                                         "arguments": item.arguments}}
            if messages and messages[-1].get("tool_calls") is not None:
                messages[-1]["tool_calls"].append(call)
            else:  # "" rather than null beside tool_calls: OpenAI takes both, llama.cpp's server only a string
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutput):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
        else:
            messages.append({"role": "system" if item.role == "developer" else item.role,
                             "content": _text(item.content)})
    return messages


def _tools(request: ResponsesRequest) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if request.tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, **({"description": t.description} if t.description else {}),
            "parameters": t.parameters or {"type": "object", "properties": {}},
            **({"strict": t.strict} if t.strict is not None else {})}} for t in request.tools]
    choice = request.tool_choice
    if choice is not None:
        body["tool_choice"] = choice if isinstance(choice, str) else {"type": "function",
                                                                        "function": {"name": choice.name}}
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    return body


def chat_body(request: ResponsesRequest, sent: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body for this request alone (responses.recall puts the history in front)."""
    system = [{"role": "system", "content": request.instructions}] if request.instructions is not None else []
    body: dict[str, Any] = {"model": request.model, "messages": system + input_messages(request), **_tools(request),
                            **chat_options(request, sent, ("temperature", "top_p", "user"))}
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    return body


def meta_of(request: ResponsesRequest) -> dict[str, Any]:
    """What the response object echoes, and what the responses function needs (context.responses)."""
    return {"model": request.model, "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens, "previous_response_id": request.previous_response_id,
            "store": request.store, "temperature": 1.0 if request.temperature is None else request.temperature,
            "top_p": 1.0 if request.top_p is None else request.top_p,
            "metadata": request.metadata or {}, "user": request.user, "input_messages": input_messages(request),
            "tools": [t.model_dump(exclude_none=True) for t in request.tools or []],
            "tool_choice": (request.tool_choice if isinstance(request.tool_choice, str) or request.tool_choice is None
                            else request.tool_choice.model_dump()),
            "parallel_tool_calls": request.parallel_tool_calls is not False}
