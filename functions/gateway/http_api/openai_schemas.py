"""OpenAI request bodies, validated at the door (a 400 names the param), and the answers' shapes (for the /v1
OpenAPI document). Unknown fields are kept: upstream providers get them unchanged, local models refuse the ones they
cannot serve. Validation is strict, as OpenAI's is: the body is passed on as sent, not as pydantic would coerce it,
so a "5" accepted for max_tokens would reach the model as a string."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from . import rag_schemas


def one_or_many(what: str, min_items: int, max_items: int, nonempty_items: bool, nullable: bool = False) -> Any:
    """A string or a list of strings (OpenAI's `stop`, `prompt`, `input`) as one type: its error names the field
    itself (a union's would name a member, 'stop.str'), and the document says every limit."""
    def check(value: Any) -> Any:
        if value is None and nullable:
            return value
        if isinstance(value, str):
            ok = value != ""
        else:
            ok = (isinstance(value, list) and min_items <= len(value) <= max_items
                  and all(isinstance(x, str) and (x or not nonempty_items) for x in value))
        if not ok:
            raise ValueError(what)
        return value

    item = {"type": "string", "minLength": 1} if nonempty_items else {"type": "string"}
    schema = {"anyOf": [{"type": "string", "minLength": 1},
                        {"type": "array", "items": item, "minItems": min_items, "maxItems": max_items}]
              + ([{"type": "null"}] if nullable else [])}
    return Annotated[Any, PlainValidator(check), WithJsonSchema(schema)]


Stop = one_or_many("up to 4 non-empty stop sequences: a string or a list of strings", 0, 4, True, nullable=True)
Prompt = one_or_many("a non-empty string, or a non-empty list of strings", 1, 2048, False)
Inputs = one_or_many("a non-empty string, or a list of 1 to 2048 non-empty strings", 1, 2048, True)


class OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    # no NUL: the id goes into the usage ledger, and PostgreSQL text cannot hold one
    model: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00]+$",
                       description="a model id of GET /v1/models")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


class Sampling(OpenAIBody):
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Stop = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=128)
    stream: bool = Field(False, description="answer as Server-Sent Events (text/event-stream), then `data: [DONE]`")
    stream_options: StreamOptions | None = None


class RagRequest(rag_schemas.RagRequest):
    """The `rag` field of a chat request (OpenAI SDKs send it through `extra_body`), as strict as the rest: rag.augment
    reads the body as sent, and a top_k of "5" is not a number there."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    rag: RagRequest | None = Field(None, description="ScaiGrid: answer from these collections, with citations")


class CompletionRequest(Sampling):
    prompt: Prompt


class EmbeddingRequest(OpenAIBody):
    input: Inputs
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


BODIES = {"chat": ChatRequest, "completions": CompletionRequest, "embeddings": EmbeddingRequest}


def chat_options(request: BaseModel, sent: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """What another API's body (Anthropic's, the Responses API's) carries into the chat body it is translated to,
    beside its messages: `fields` that are set, `stream` with the usage chunk asked for (the answer's exact
    counts), ScaiGrid's `rag` as sent (as the chat route passes it)."""
    options = {name: getattr(request, name) for name in fields if getattr(request, name) is not None}
    if getattr(request, "stream", False):
        options["stream"], options["stream_options"] = True, {"include_usage": True}
    if getattr(request, "rag", None) is not None:
        options["rag"] = sent["rag"]
    return options


# --- answers (documented, not validated: an upstream's extra fields pass through) ------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class Answer(BaseModel):
    id: str
    created: int
    model: str = Field(description="the id the request named (an upstream's own name for it is not shown)")
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None


class ChatCompletion(Answer):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]


class Delta(BaseModel):
    role: str | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(Answer):
    object: Literal["chat.completion.chunk"]
    choices: list[ChunkChoice] = Field(description="empty in the last chunk, which has the usage, when "
                                                   "stream_options.include_usage asks for it")


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: Any = None


class Completion(Answer):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32 "
                                                     "(encoding_format: base64)")


class EmbeddingList(BaseModel):
    object: Literal["list"]
    model: str
    data: list[Embedding]
    usage: Usage


# --- the Responses API's answers (openai_responses.py; documented, not validated) ------------------------------
class ResponseObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(description="resp_…: GET and DELETE /v1/responses/{id}, previous_response_id")
    object: Literal["response"]
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    model: str
    output: list[dict[str, Any]] = Field(description="message and function_call items")
    usage: dict[str, Any] | None = None


class ResponseEvent(BaseModel):
    """One event of a streamed response: its `type` (response.created, response.output_text.delta, ...,
    response.completed) and its number; the rest as the Responses API defines for that type."""

    model_config = ConfigDict(extra="allow")

    type: str
    sequence_number: int


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"]
    deleted: Literal[True]
