"""OpenAI's Responses API objects, made from what the chat steps answered: the response and its usage (its output
items: response_output.py). The responses function builds and stores them; the gateway's responses handler
streams their events. Both derive the ids from the request's own id, so a stream's events and the stored object
name the same response.

`meta` is what the request asked (context.responses, set by responses.recall): model, instructions,
max_output_tokens, previous_response_id, store, temperature, top_p, metadata, user, created_at.
"""
from __future__ import annotations

from typing import Any


def response_id(request_id: str) -> str:
    return "resp_" + request_id.removeprefix("req_")


def usage_of(usage: dict | None) -> dict[str, Any]:
    usage = usage or {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def response_object(request_id: str, meta: dict, status: str, output: list[dict] | None = None,
                    finish_reason: str | None = None, usage: dict | None = None) -> dict[str, Any]:
    """The response as GET /v1/responses/{id} answers it. status: in_progress (no output yet), completed, or
    incomplete (the text stopped at max_output_tokens). `output`: its items (response_output.items)."""
    if status != "in_progress" and finish_reason == "length":
        status = "incomplete"
    done = status != "in_progress"
    return {
        "id": response_id(request_id), "object": "response", "created_at": meta["created_at"], "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": meta.get("instructions"), "max_output_tokens": meta.get("max_output_tokens"),
        "model": meta["model"],
        "output": list(output or []) if done else [],
        "parallel_tool_calls": meta.get("parallel_tool_calls", True),
        "previous_response_id": meta.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "store": meta.get("store", True),
        "temperature": meta.get("temperature"), "text": {"format": {"type": "text"}},
        "tool_choice": meta.get("tool_choice") or "auto", "tools": meta.get("tools") or [], "top_p": meta.get("top_p"),
        "truncation": "disabled",
        "usage": usage_of(usage) if done else None, "user": meta.get("user"), "metadata": meta.get("metadata") or {},
    }
