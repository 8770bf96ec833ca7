"""The inference function (the RawModelService): the one interface to every hosted model.

The model registry lives in graph.yaml (this function's `config.models`): id, kind, backend, path or upstream,
context length and prices. Serving backends arrive with the inference issue; the registry is served now.
"""
from __future__ import annotations

import time

from nameko.rpc import rpc

from scaigrid.runtime.dependencies import FunctionConfig

STARTED = int(time.time())


class Inference:
    name = "inference"
    config = FunctionConfig()

    @rpc
    def models(self, envelope: dict) -> dict:
        """GET /v1/models and /api/v1/models: the registry, narrowed to the key's allow-list."""
        allowed = (envelope.get("principal") or {}).get("models")
        envelope["response"] = {"object": "list", "data": [
            {"id": m["id"], "object": "model", "created": STARTED, "owned_by": m.get("owned_by", "scaigrid"),
             "kind": m.get("kind"), "backend": m.get("backend"), "context_length": m.get("context_length")}
            for m in self.config.get("models", []) if allowed is None or m["id"] in allowed]}
        return envelope
