"""A request's effective values, the gateway's defaults applied once, at the door: `envelope.request.params`, what
the steps read, while `request.body` keeps the fields as the client sent them (an OpenAI-compatible upstream gets
those unchanged, unknown fields included).

The OpenAI handler takes them from the validated model; the plain JSON handler (no schema) from the body itself,
where a value of the wrong type counts as not given. A plugin that rewrites the request keeps them in step
(HookContext.params, HookContext.replace_request)."""
from __future__ import annotations

from typing import Any

RAG_TOP_K = 5  # passages for a chat request that names collections and no top_k (the `rag` field's documented default)
ANSWER_SHAPE = ("stream", "include_usage")  # decided at the door: a plugin's rewrite of the request cannot change it
# the body fields params_of reads: the OpenAI handler dumps only these of the validated model, not the prompt
READS = frozenset({"stream", "stream_options", "max_completion_tokens", "max_tokens", "n", "temperature", "top_p",
                   "stop", "seed", "encoding_format", "rag"})


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return _integer(value) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def params_of(body: Any) -> dict[str, Any]:
    """Every value a step reads, none missing: `max_tokens` is the one output-token limit (max_completion_tokens,
    OpenAI's newer name, else max_tokens; None: the model's default), `rag` the chat request's `rag` field with its
    defaults (None: no retrieval)."""
    body = body if isinstance(body, dict) else {}
    get = body.get
    options, rag = get("stream_options"), get("rag")
    limits = [v for v in (get("max_completion_tokens"), get("max_tokens")) if _count(v)]
    return {"stream": get("stream") is True,
            "include_usage": isinstance(options, dict) and options.get("include_usage") is True,
            "max_tokens": limits[0] if limits else None,
            "n": get("n") if _count(get("n")) else 1,
            "temperature": get("temperature") if _number(get("temperature")) else 1.0,
            "top_p": get("top_p") if _number(get("top_p")) else 1.0,
            "stop": get("stop") if isinstance(get("stop"), (str, list)) else None,
            "seed": get("seed") if _integer(get("seed")) else None,
            "encoding_format": "base64" if get("encoding_format") == "base64" else "float",
            "rag": {"top_k": RAG_TOP_K, "mode": None, "filters": {}, **rag} if isinstance(rag, dict) else None}


def request_params(request: dict) -> dict[str, Any]:
    """`request.params`, set at the door. An envelope built by hand (a test, a direct call) gets them from its body
    on first use, with the same defaults, and keeps them: later steps see the same values."""
    if request.get("params") is None:
        request["params"] = params_of(request.get("body"))
    return request["params"]


def rewritten(params: dict, body: Any) -> None:
    """`params` after a plugin replaced the request with `body`: its values follow the new body, the answer's shape
    (streamed or not, with a usage chunk or not) stays as the door decided."""
    params.update({k: v for k, v in params_of(body).items() if k not in ANSWER_SHAPE})
