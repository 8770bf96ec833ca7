"""The inference function (the RawModelService): the one interface to every hosted model.

The model registry lives in graph.yaml (this function's `config.models`): id, kind (chat, embedding), backend
(`openai` for OpenAI-compatible upstreams; local ONNX models arrive with their backend), context length, prices.
"""
from __future__ import annotations

import time

from nameko.rpc import rpc

from scaigrid.adapters.upstream.openai_compatible import Upstream, estimated_usage, usage_of
from scaigrid.runtime.dependencies import FunctionConfig
from scaigrid.runtime.errors import BadRequest, NotFound
from scaigrid.runtime.streams import ChunkSender, StreamClosed

STARTED = int(time.time())
LOCAL_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logprobs",
                     "top_logprobs", "logit_bias")


class Inference:
    name = "inference"
    config = FunctionConfig()
    stream = ChunkSender()
    _upstreams: dict = {}

    def _spec(self, envelope: dict, kind: str) -> dict:
        model_id = envelope["request"].get("model")
        spec = next((m for m in self.config.get("models", []) if m["id"] == model_id), None)
        if spec is None:
            raise NotFound(f"the model '{model_id}' does not exist", code="model_not_found", param="model")
        if spec.get("kind", "chat") != kind:
            raise BadRequest(f"the model '{model_id}' is a {spec.get('kind')} model, not a {kind} model",
                             code="wrong_model_kind", param="model")
        return spec

    def _upstream(self, spec: dict) -> Upstream:
        up = Inference._upstreams.get(spec["id"])
        if up is None:
            up = Inference._upstreams[spec["id"]] = Upstream.from_registry(spec)
        return up

    def _refuse_unsupported(self, spec: dict, body: dict) -> None:
        """Local models say clearly what they cannot do; upstreams get every field unchanged."""
        for name in LOCAL_UNSUPPORTED:
            if body.get(name) not in (None, False):
                raise BadRequest(f"'{name}' is not supported by the local model '{spec['id']}'",
                                 code="unsupported_parameter", param=name)
        if (body.get("n") or 1) > 1:
            raise BadRequest(f"n > 1 is not supported by the local model '{spec['id']}'",
                             code="unsupported_parameter", param="n")

    @rpc
    def models(self, envelope: dict) -> dict:
        """GET /v1/models and /api/v1/models: the registry, narrowed to the key's allow-list."""
        allowed = (envelope.get("principal") or {}).get("models")
        envelope["response"] = {"object": "list", "data": [
            {"id": m["id"], "object": "model", "created": STARTED, "owned_by": m.get("owned_by", "scaigrid"),
             "kind": m.get("kind"), "backend": m.get("backend"), "context_length": m.get("context_length")}
            for m in self.config.get("models", []) if allowed is None or m["id"] in allowed]}
        return envelope

    @rpc
    def chat(self, envelope: dict) -> dict:
        """POST /v1/chat/completions."""
        return self._generate(envelope, "/chat/completions")

    @rpc
    def completions(self, envelope: dict) -> dict:
        """POST /v1/completions."""
        return self._generate(envelope, "/completions")

    def _generate(self, envelope: dict, path: str) -> dict:
        spec = self._spec(envelope, "chat")
        body = envelope["request"]["body"]
        envelope["context"]["created"] = int(time.time())
        if spec.get("backend") != "openai":
            self._refuse_unsupported(spec, body)
            raise BadRequest(f"the model '{spec['id']}' has backend '{spec.get('backend')}', which this build "
                             f"cannot serve yet", code="backend_unavailable", param="model")
        upstream = self._upstream(spec)
        writer = self.stream.open(envelope)
        if writer is None:
            answer = upstream.call(path, body)
            envelope["response"], envelope["usage"] = answer, usage_of(answer)
            return envelope
        usage, pieces = None, 0
        try:
            for chunk in upstream.stream(path, body):
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if chunk.get("choices"):
                    pieces += any((c.get("delta") or {}).get("content") or c.get("text") for c in chunk["choices"])
                    writer.send(chunk)
        except StreamClosed:
            pass  # the client left: bill what was generated so far
        envelope["usage"] = usage_of({"usage": usage}) if usage else estimated_usage(body, pieces)
        return writer.finish()

    @rpc
    def embeddings(self, envelope: dict) -> dict:
        """POST /v1/embeddings."""
        spec = self._spec(envelope, "embedding")
        body = envelope["request"]["body"]
        if spec.get("backend") != "openai":
            raise BadRequest(f"the model '{spec['id']}' has backend '{spec.get('backend')}', which this build "
                             f"cannot serve yet", code="backend_unavailable", param="model")
        answer = self._upstream(spec).call("/embeddings", body)
        envelope["response"], envelope["usage"] = answer, usage_of(answer)
        return envelope
