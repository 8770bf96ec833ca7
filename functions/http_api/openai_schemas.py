"""OpenAI request bodies, validated at the door (a 400 names the param). Unknown fields are kept: upstream
providers get them unchanged, local models refuse the ones they cannot serve."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .rag_schemas import RagRequest


class OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class Sampling(OpenAIBody):
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else v
        if stops is not None and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("up to 4 non-empty stop sequences")
        return v


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    rag: RagRequest | None = Field(None, description="ScaiGrid: answer from these collections, with citations")


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(min_length=1)


class EmbeddingRequest(OpenAIBody):
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _inputs(cls, v):
        if isinstance(v, list) and (len(v) > 2048 or any(not isinstance(x, str) or not x for x in v)):
            raise ValueError("a string, or a list of up to 2048 non-empty strings")
        return v


BODIES = {"chat": ChatRequest, "completions": CompletionRequest, "embeddings": EmbeddingRequest}
