"""Model prices and cost arithmetic, in integer micro-units (msgpack has no Decimal; money is never a float).

A model's price lives in the model registry (graph.yaml, the inference function's `config.models`):
`price: {prompt: 150, completion: 600}` = micro-units per 1,000 tokens.
"""
from __future__ import annotations

import json
from typing import Any

from cachetools import LRUCache

from ..shared.params import request_params

DEFAULT_MAX_TOKENS = 4096
# graph.yaml is read once per process: its registry is built once per graph, not per admitted request (1.4 % of the
# gateway's CPU under load, py-spy). Keyed by id() with the graph kept in the value, so an id is never reused.
_registries: LRUCache = LRUCache(maxsize=8)


def registry(graph) -> dict[str, dict[str, Any]]:
    """Every model any function's config declares, by id."""
    found = _registries.get(id(graph))
    if found is None or found[0] is not graph:
        models = {m["id"]: m for fn in graph.functions.values() for m in fn.config.get("models", ()) if "id" in m}
        found = _registries[id(graph)] = (graph, models)
    return found[1]


def cost_of(model: dict | None, prompt_tokens: int, completion_tokens: int) -> int:
    """Micro-units, rounded up once per request (never in the customer's favour by more than one micro-unit)."""
    price = (model or {}).get("price") or {}
    nano = prompt_tokens * int(price.get("prompt", 0)) + completion_tokens * int(price.get("completion", 0))
    return -(-nano // 1000)


def estimate(request: dict, model: dict | None) -> tuple[int, int]:
    """An upper bound of a request's tokens and cost, reserved before it runs.

    A token is at least one byte of the prompt's UTF-8, so the prompt's byte length bounds its tokens; the answer is
    bounded by the request's effective max_tokens (`request.params`, set at the door; else the model's default
    `max_tokens` from the registry, else its context).
    """
    body = request.get("body") if isinstance(request.get("body"), dict) else {}
    prompt = body.get("messages", body.get("prompt", body.get("input", "")))
    prompt_tokens = len(json.dumps(prompt, ensure_ascii=False).encode()) if prompt else 0
    completion = int(request_params(request)["max_tokens"] or (model or {}).get("max_tokens")
                     or (model or {}).get("context_length") or DEFAULT_MAX_TOKENS)
    if (model or {}).get("kind") == "embedding":
        completion = 0
    return prompt_tokens + completion, cost_of(model, prompt_tokens, completion)
