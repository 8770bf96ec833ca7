"""The envelope: one plain dict that carries a request through every step of a route."""
from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field

ENVELOPE_VERSION = 1


class Envelope(BaseModel):
    """What a step receives and returns. Crosses RPC as a plain dict (msgpack): money is integer micro-units.

    Handed to an after-step while tracing is on, it also holds `traceparent`, the W3C id of the span it was handed
    in (runtime/after.py): a batched message carries envelopes of many requests, one header could name only one."""

    version: int = ENVELOPE_VERSION
    id: str = Field(default_factory=lambda: f"req_{uuid.uuid4().hex}",
                    description="minted by the gateway: the key of billing, limits, streams and cancellation")
    client_request_id: str | None = Field(None, description="the caller's own x-request-id: a reference, never a key")
    route: str
    tenant: str | None = None
    principal: dict[str, Any] | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    response: Any = None
    usage: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict, description="ms per step, keyed 'i:function.method'")
    error: dict[str, Any] | None = None
    done: bool = Field(False, description="a step set this to answer early: later steps are skipped")
    secrets: dict[str, Any] = Field(default_factory=dict,
                                    description="credentials for the step that consumes them; never sent to after-steps")


def new_envelope(route: str, request: dict[str, Any], request_id: str | None = None, **fields: Any) -> dict:
    """A fresh envelope as the dict that travels."""
    env = Envelope(route=route, request=request, **fields)
    if request_id:
        env.id = request_id
    return env.model_dump()


def answer(envelope: dict, response: Any) -> dict:
    """Helper for a step that answers early (cache hit, policy refusal): sets the response and ends the route."""
    envelope["response"] = response
    envelope["done"] = True
    return envelope
