"""A response's output items gathered from chat chunks, or from a whole chat answer: a message item for the text,
a function_call item for each tool call, in the order they began. The state is a plain dict (it rides in the
envelope's context, which is serialized), `gather` says what changed, for a stream's events:
("added", index), ("delta", index, text), ("done", index).

    state = new_output()
    for chunk in chunks:
        changes = gather(state, chunk)
    changes = close(state)
    items(state, request_id)           # the response's `output`
"""
from __future__ import annotations

from typing import Any

from .chunks import choices


def new_output() -> dict[str, Any]:
    return {"items": [], "current": None, "calls": {}, "finish": None}


def _begin(state: dict, item: dict) -> list[tuple]:
    changes = close(state)
    state["items"].append(item)
    state["current"] = len(state["items"]) - 1
    return changes + [("added", state["current"])]


def close(state: dict) -> list[tuple]:
    """The item being written is done (the next one begins, or the output ends)."""
    if state["current"] is None:
        return []
    index, state["current"] = state["current"], None
    return [("done", index)]


def gather(state: dict, data: Any) -> list[tuple]:
    changes: list[tuple] = []
    for text, choice in choices(data):
        current = state["current"]
        if text:
            if current is None or state["items"][current]["type"] != "message":
                changes += _begin(state, {"type": "message", "pieces": []})
            state["items"][state["current"]]["pieces"].append(text)
            changes.append(("delta", state["current"], text))
        calls = (choice.get("delta") or choice.get("message") or {}).get("tool_calls") or ()
        for position, call in enumerate(calls):
            key, function = str(call.get("index", position)), call.get("function") or {}
            if key not in state["calls"] or state["calls"][key] != state["current"]:
                changes += _begin(state, {"type": "function_call", "call_id": call.get("id") or f"call_{key}",
                                          "name": function.get("name") or "", "pieces": []})
                state["calls"][key] = state["current"]
            if function.get("arguments"):
                state["items"][state["current"]]["pieces"].append(function["arguments"])
                changes.append(("delta", state["current"], function["arguments"]))
        state["finish"] = choice.get("finish_reason") or state["finish"]
    return changes


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def item_id(request_id: str, state: dict, index: int) -> str:
    """msg_<hex> for the first message (most answers have only it), else <prefix>_<hex>_<index>."""
    hex_id = request_id.removeprefix("req_")
    kind = state["items"][index]["type"]
    if kind == "message" and index == next(i for i, it in enumerate(state["items"]) if it["type"] == "message"):
        return f"msg_{hex_id}"
    return f"{'msg' if kind == 'message' else 'fc'}_{hex_id}_{index}"


def item(request_id: str, state: dict, index: int, status: str) -> dict[str, Any]:
    """The API's item; while in progress a message has no content yet and a call no arguments."""
    raw, done = state["items"][index], status == "completed"
    text = "".join(raw["pieces"])
    if raw["type"] == "message":
        return {"type": "message", "id": item_id(request_id, state, index), "status": status, "role": "assistant",
                "content": [text_part(text)] if done else []}
    return {"type": "function_call", "id": item_id(request_id, state, index), "call_id": raw["call_id"],
            "name": raw["name"], "arguments": text if done else "", "status": status}


def items(request_id: str, state: dict) -> list[dict[str, Any]]:
    return [item(request_id, state, i, "completed") for i in range(len(state["items"]))]


def as_chat(output: list[dict]) -> list[dict[str, Any]]:
    """A stored response's output as the chat messages that continue the conversation after it."""
    text = "".join(part.get("text", "") for it in output if it.get("type") == "message"
                   for part in it.get("content", []))
    calls = [{"id": it["call_id"], "type": "function", "function": {"name": it["name"], "arguments": it["arguments"]}}
             for it in output if it.get("type") == "function_call"]
    return [{"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}]
