"""OpenAI request bodies, validated at the door (a 400 names the param), and the answers' shapes (for the /v1
OpenAPI document). Unknown fields are kept: upstream providers get them unchanged, local models refuse the ones they
cannot serve. Validation is strict, as OpenAI's is: the body is passed on as sent, not as pydantic would coerce it,
so a "5" accepted for max_tokens would reach the model as a string."""
from __future__ import annotations

from typing import Annotated, Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

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


def uncarried(body: Any) -> tuple[tuple, str] | None:
    """Where in a parsed body a value hides that the bus cannot carry, and why, else None: a string UTF-8 cannot
    encode (JSON's "\\ud800" escapes decode to lone surrogates) or an integer msgpack cannot hold (past 64 bits).
    Every hop after the door would fail on it, with a 503 that blames the bus, and an after-step event that cannot
    be sent would stay at the head of the spool. One msgpack pass (as the bus packs, in C) clears a sound body;
    only a refused one is walked, to name the field."""
    try:
        msgpack.packb(body, use_bin_type=True)
        return None
    except (ValueError, OverflowError):  # UnicodeEncodeError is a ValueError
        pass
    parents: list[tuple[int, Any]] = []  # per container met: its parent's index there and its key in the parent
    stack: list[tuple[int, Any, Any]] = [(-1, None, body)]
    while stack:  # not recursive: as deep as json.loads lets a body be
        parent, key, value = stack.pop()
        if isinstance(value, (dict, list)):
            parents.append((parent, key))
            here = len(parents) - 1
            for name, item in value.items() if isinstance(value, dict) else enumerate(value):
                if isinstance(name, str) and not _encodes(name):
                    return (_path(parents, here, name.encode("utf-8", "backslashreplace").decode()),
                            "a key with an unpaired surrogate: not valid UTF-8")
                stack.append((here, name, item))
        elif isinstance(value, str) and not _encodes(value):
            return _path(parents, parent, key), "a string with an unpaired surrogate: not valid UTF-8"
        elif isinstance(value, int) and not -2**63 <= value < 2**64:
            return _path(parents, parent, key), "an integer outside -2^63 to 2^64-1"
    return (), "a value the message bus cannot carry"


def _path(parents: list[tuple[int, Any]], index: int, key: Any) -> tuple:
    """The keys from the body down to `key` of the container met `index`-th (-1: the body itself, no key)."""
    keys = [key] if index >= 0 else []
    while index > 0:  # the body (index 0) has no key of its own
        index, key = parents[index]
        keys.append(key)
    return tuple(reversed(keys))


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    # no NUL: the id goes into the usage ledger, and PostgreSQL text cannot hold one
    model: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00]+$",
                       description="a model id of GET /v1/models")

    @model_validator(mode="before")
    @classmethod
    def _carried(cls, body: Any) -> Any:
        found = uncarried(body)
        if found is not None:  # a 400 that names the field, as pydantic's own errors do
            error = PydanticCustomError("uncarried_value", found[1])
            raise ValidationError.from_exception_data(cls.__name__, [InitErrorDetails(type=error, loc=found[0],
                                                                                      input="")])
        return body


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
