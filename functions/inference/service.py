"""The inference function (the RawModelService): the one interface to every hosted model.

The model registry lives in graph.yaml (this function's `config.models`): id, kind (chat, embedding), backend
(`onnx`: a local model prepared by `scaigrid models prepare`; `openai`: an OpenAI-compatible upstream), context
length, prices. Answers are in OpenAI's shapes whatever the backend.
"""
from __future__ import annotations

import base64
import json
import time

import numpy as np
from eventlet import tpool
from nameko.rpc import rpc

from scaigrid.adapters.local_models import LOCAL_BACKENDS, LocalModelProvider
from scaigrid.adapters.upstream.openai_compatible import estimated_usage, usage_of
from scaigrid.runtime.dependencies import FunctionConfig, OwnReplicas
from scaigrid.runtime.errors import BadRequest, NotFound
from scaigrid.runtime.streams import ChunkSender, StreamClosed

from ..shared.params import request_params
from .dependencies import UpstreamProvider
from .generation_metrics import GENERATIONS, GenerationClock
from .telemetry import GenAiSpan, finish_reasons

STARTED = int(time.time())
# what a local model cannot honour, with the values that ask nothing of it: any other value is a 400 naming the field,
# never silently ignored (a client that set a penalty or tools would get an answer it did not ask for)
LOCAL_NEUTRAL = {"tools": (None, []), "tool_choice": (None, "none", "auto"), "functions": (None, []),
                 "function_call": (None, "none", "auto"), "parallel_tool_calls": (None, True, False),
                 "response_format": (None, {"type": "text"}), "logprobs": (None, False), "top_logprobs": (None, 0),
                 "logit_bias": (None, {}), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
                 "echo": (None, False), "suffix": (None, ""), "best_of": (None, 1),
                 "top_k": (None, 0)}  # top_k: /v1/messages passes Anthropic's on; 0 is "off" where servers take it


def neutral(value, values: tuple) -> bool:
    """`value` is one of `values`, a bool only as a bool (False is not 0 here, 0.0 is)."""
    return any(value is v or (value == v and isinstance(value, bool) == isinstance(v, bool)) for v in values)


class Inference:
    """Placed inline (graph.yaml), a copy in each caller answers upstream models in-process, with no broker hop,
    and hands local models to the function's replicas, which hold them (`replicas.forward`); a remote-only
    inference function serves both itself."""

    name = "inference"
    config = FunctionConfig()
    stream = ChunkSender()
    local = LocalModelProvider()
    upstreams = UpstreamProvider()
    replicas = OwnReplicas()

    def _handed_on(self, spec: dict | None) -> bool:
        """A local model, asked of a copy that holds none: its replicas answer."""
        return self.replicas.forward and (spec is None or spec.get("backend") in LOCAL_BACKENDS)

    def _find(self, model_id: str | None) -> dict | None:
        return next((m for m in self.config.get("models", []) if m["id"] == model_id), None)

    def _spec(self, model_id: str | None, kind: str) -> dict:
        spec = self._find(model_id)
        if spec is None:
            raise NotFound(f"the model '{model_id}' does not exist", code="model_not_found", param="model")
        if spec.get("kind", "chat") != kind:
            raise BadRequest(f"the model '{model_id}' is a {spec.get('kind')} model, not a {kind} model",
                             code="wrong_model_kind", param="model")
        return spec

    def _refuse_unsupported(self, spec: dict, request: dict) -> None:
        """Local models say clearly what they cannot do; upstreams get every field unchanged."""
        for name, values in LOCAL_NEUTRAL.items():
            if not neutral(request["body"].get(name), values):
                raise BadRequest(f"'{name}' is not supported by the local model '{spec['id']}' (only "
                                 f"{' or '.join(json.dumps(v) for v in values[1:])}, or leave it out)",
                                 code="unsupported_parameter", param=name)
        if request_params(request)["n"] > 1:
            raise BadRequest(f"n > 1 is not supported by the local model '{spec['id']}'",
                             code="unsupported_parameter", param="n")

    @rpc
    def models(self, envelope: dict) -> dict:
        """GET /v1/models and /api/v1/models: the registry, narrowed to the key's allow-list."""
        if self._handed_on(None):  # the replicas know which device each local model runs on
            return self.replicas.call("models", envelope, request_id=envelope["id"])
        allowed = (envelope.get("principal") or {}).get("models")
        envelope["response"] = {"object": "list", "data": [
            self._card(m) for m in self.config.get("models", []) if allowed is None or m["id"] in allowed]}
        return envelope

    @rpc
    def model(self, envelope: dict) -> dict:
        """GET /v1/models/{model}: one model of the registry. One the key may not use is as unknown as one that
        does not exist: a key cannot probe what the others may use."""
        if self._handed_on(None):
            return self.replicas.call("model", envelope, request_id=envelope["id"])
        model_id = envelope["request"]["path"]["model_id"]
        allowed = (envelope.get("principal") or {}).get("models")
        spec = self._find(model_id)
        if spec is None or (allowed is not None and model_id not in allowed):
            raise NotFound(f"the model '{model_id}' does not exist", code="model_not_found", param="model")
        envelope["response"] = self._card(spec)
        return envelope

    def _card(self, spec: dict) -> dict:
        """A model as OpenAI's model object says it, and what ScaiGrid adds (kind, backend, where it runs)."""
        return {"id": spec["id"], "object": "model", "created": STARTED, "owned_by": spec.get("owned_by", "scaigrid"),
                "kind": spec.get("kind"), "backend": spec.get("backend"),
                "context_length": spec.get("context_length"), "provider": self.local.provider(spec["id"]),
                # chat models: how /v1/responses and /v1/messages reach them (their body as chat completions)
                **({"responses": "translated", "messages": "translated"} if spec.get("kind") == "chat" else {})}

    @rpc
    def chat(self, envelope: dict) -> dict:
        """POST /v1/chat/completions."""
        return self._generate(envelope, "/chat/completions")

    @rpc
    def completions(self, envelope: dict) -> dict:
        """POST /v1/completions."""
        return self._generate(envelope, "/completions")

    def _generate(self, envelope: dict, path: str) -> dict:
        spec = self._spec(envelope["request"].get("model"), "chat")
        if self._handed_on(spec):
            return self.replicas.call("chat" if path == "/chat/completions" else "completions", envelope,
                                      request_id=envelope["id"])
        clock = GenerationClock(spec["id"])
        with GENERATIONS.labels(spec["id"]).track_inprogress():
            envelope = self._generate_with(spec, envelope, path, clock)
        clock.done(int((envelope.get("usage") or {}).get("completion_tokens") or 0))
        return envelope

    def _generate_with(self, spec: dict, envelope: dict, path: str, clock: GenerationClock) -> dict:
        body = envelope["request"]["body"]
        envelope["context"]["created"] = int(time.time())
        genai = GenAiSpan(spec, envelope, "chat" if path == "/chat/completions" else "text_completion")
        if spec.get("backend") in LOCAL_BACKENDS:
            self._refuse_unsupported(spec, envelope["request"])
            return self._local(envelope, spec, path == "/chat/completions", clock, genai)
        writer = self.stream.open(envelope)
        if writer is None:
            answer = self.upstreams.call(spec, path, body)
            envelope["response"], envelope["usage"] = answer, usage_of(answer)
            genai.done(envelope["usage"], answer.get("model"), finish_reasons(answer), answer.get("choices"))
            return envelope
        usage, pieces = None, 0
        try:
            for chunk in self.upstreams.stream(spec, path, body):
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if chunk.get("choices"):
                    if any(_generated(c) for c in chunk["choices"]):
                        clock.first_token()
                        pieces += 1
                    writer.send(chunk)
                    genai.chunk(chunk)
        except StreamClosed:
            pass  # the client left: bill what was generated so far
        envelope["usage"] = usage_of({"usage": usage}) if usage else estimated_usage(body, pieces)
        genai.done(envelope["usage"], spec["id"], first_s=clock.first_s)
        return writer.finish()

    @rpc
    def count_tokens(self, envelope: dict) -> dict:
        """POST /v1/messages/count_tokens: the prompt tokens a chat request would be billed for, nothing generated.
        Exact for a local model (its own template and tokenizer); for an upstream ScaiGrid's estimate (~4 bytes a
        token, the tools included), since OpenAI-compatible servers have no counting endpoint to ask."""
        spec = self._spec(envelope["request"].get("model"), "chat")
        if self._handed_on(spec):
            return self.replicas.call("count_tokens", envelope, request_id=envelope["id"])
        body = envelope["request"]["body"]
        if spec.get("backend") in LOCAL_BACKENDS:
            model = self.local.load(spec["id"])
            count = tpool.execute(model.count_tokens, body["messages"])
        else:
            count = estimated_usage(body, 0)["prompt_tokens"]
        envelope["response"] = {"input_tokens": count}
        return envelope

    @rpc
    def embeddings(self, envelope: dict) -> dict:
        """POST /v1/embeddings."""
        spec = self._spec(envelope["request"].get("model"), "embedding")
        if self._handed_on(spec):
            return self.replicas.call("embeddings", envelope, request_id=envelope["id"])
        body = envelope["request"]["body"]
        genai = GenAiSpan(spec, None, "embeddings")
        if spec.get("backend") == "onnx":
            width = self.local.load(spec["id"]).dimensions
            if body.get("dimensions") not in (None, width):  # its vectors have one width: no truncation asked of it
                raise BadRequest(f"'dimensions' must be {width} (or left out) for the local model '{spec['id']}'",
                                 code="unsupported_parameter", param="dimensions")
            texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
            vectors, counts = self.local.embed(spec["id"], texts)
            b64 = request_params(envelope["request"])["encoding_format"] == "base64"
            envelope["response"] = {"object": "list", "model": spec["id"], "data": [
                {"object": "embedding", "index": i,
                 "embedding": base64.b64encode(np.asarray(v, "<f4").tobytes()).decode() if b64 else
                 [float(x) for x in v]} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}}
            envelope["usage"] = {"prompt_tokens": sum(counts), "completion_tokens": 0, "total_tokens": sum(counts)}
            genai.done(envelope["usage"], spec["id"])
            return envelope
        answer = self.upstreams.call(spec, "/embeddings", body)
        envelope["response"], envelope["usage"] = answer, usage_of(answer)
        genai.done(envelope["usage"], answer.get("model"))
        return envelope

    # for other functions (graph.yaml `calls:`), not routes: plain arguments, compact answers -----------------
    @rpc
    def embed(self, model: str, texts: list[str]) -> dict:
        """Vectors for `texts` as one little-endian float32 buffer (n x dimensions): msgpack carries bytes as
        they are, where a list of 384 floats per text costs more to encode than the model takes to run."""
        spec = self._spec(model, "embedding")
        if not texts:
            raise BadRequest("nothing to embed", param="input")
        if self._handed_on(spec):
            return self.replicas.call("embed", model, texts)
        genai = GenAiSpan(spec, None, "embeddings")
        if spec.get("backend") in LOCAL_BACKENDS:
            vectors, counts = self.local.embed(spec["id"], list(texts))
            matrix, tokens = np.asarray(vectors, "<f4"), sum(counts)
        else:
            answer = self.upstreams.call(spec, "/embeddings", {"model": model, "input": list(texts)})
            rows = sorted(answer["data"], key=lambda d: d["index"])
            matrix, tokens = np.asarray([r["embedding"] for r in rows], "<f4"), usage_of(answer)["total_tokens"]
        genai.done({"prompt_tokens": tokens}, spec["id"])
        return {"model": spec["id"], "count": matrix.shape[0], "dimensions": matrix.shape[1],
                "vectors": matrix.tobytes(), "tokens": tokens}

    @rpc
    def embedding_model(self, model: str) -> dict:
        """What a caller needs to chunk for this embedding model: its width, its window and, for a local model,
        its tokenizer (tokenizer.json's text; None for an upstream, whose tokenizer is not ours to know)."""
        spec = self._spec(model, "embedding")
        if self._handed_on(spec):
            return self.replicas.call("embedding_model", model)
        if spec.get("backend") in LOCAL_BACKENDS:
            loaded = self.local.load(spec["id"])
            return {"model": spec["id"], "dimensions": loaded.dimensions, "max_tokens": loaded.max_length,
                    "tokenizer": loaded.tokenizer.to_str()}
        dimensions = spec.get("dimensions") or self.embed(model, ["dimensions probe"])["dimensions"]
        return {"model": spec["id"], "dimensions": int(dimensions),
                "max_tokens": int(spec.get("context_length") or 8191), "tokenizer": None}

    def _local(self, envelope: dict, spec: dict, chat: bool, clock: GenerationClock, genai: GenAiSpan) -> dict:
        """A local model: OpenAI's answer or chunks, exact token counts, generation stopped when the client leaves."""
        body, params = envelope["request"]["body"], request_params(envelope["request"])
        prompt = body["messages"] if chat else body["prompt"]
        if not chat and isinstance(prompt, list):
            if len(prompt) != 1:
                raise BadRequest("a local model takes one prompt per request", code="unsupported_parameter",
                                 param="prompt")
            prompt = prompt[0]
        # a request that names no limit gets the model's default (graph.yaml), not its whole context
        try:
            deltas = self.local.generate(
                spec["id"], prompt, max_tokens=params["max_tokens"] or spec.get("max_tokens"),
                temperature=params["temperature"], top_p=params["top_p"], stop=params["stop"], seed=params["seed"])
        except ValueError as exc:  # the prompt does not fit the context, and the like
            raise BadRequest(f"model '{spec['id']}': {exc}", code="context_length_exceeded",
                             param="messages" if chat else "prompt") from None
        rid, created = envelope["id"], envelope["context"]["created"]
        kind = "chat.completion" if chat else "text_completion"
        writer = self.stream.open(envelope)
        if writer is None:
            text = self._collect(rid, deltas)
        else:
            text = None
            try:
                if chat:
                    writer.send(_chunk(rid, created, spec["id"], {"role": "assistant", "content": ""}, None, chat))
                for delta in deltas:
                    clock.first_token()
                    writer.send(_chunk(rid, created, spec["id"], {"content": delta} if chat else delta, None, chat))
                writer.send(_chunk(rid, created, spec["id"], {} if chat else "", deltas.generation.finish_reason,
                                   chat, deltas.generation.stop_sequence))
            except StreamClosed:
                deltas.close()  # the client left: stop generating now; what was made is still billed
        generation = deltas.generation
        usage = {"prompt_tokens": generation.usage.prompt_tokens,
                 "completion_tokens": generation.usage.completion_tokens,
                 "total_tokens": generation.usage.total_tokens}
        envelope["usage"] = usage
        genai.done(usage, spec["id"], [generation.finish_reason], text, clock.first_s)
        if writer is not None:
            return writer.finish()
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "finish_reason": generation.finish_reason} if chat else
                  {"index": 0, "text": text, "finish_reason": generation.finish_reason, "logprobs": None})
        choice["stop_reason"] = generation.stop_sequence
        envelope["response"] = {"id": rid, "object": kind, "created": created, "model": spec["id"],
                                "choices": [choice], "usage": usage}
        return envelope


    def _collect(self, request_id: str, deltas) -> str:
        """A non-streamed answer's text; generation stops as soon as the request is cancelled (its client hung
        up, or its gateway stopped waiting): nobody will read the rest, and what was made is what gets billed."""
        parts = []
        for delta in deltas:
            parts.append(delta)
            if self.stream.is_cancelled(request_id):
                deltas.close()
                break
        return "".join(parts)


def _generated(choice: dict) -> bool:
    """The choice of a streamed chunk carries generated output: text, or a piece of a tool call."""
    delta = choice.get("delta") or {}
    return bool(delta.get("content") or choice.get("text") or delta.get("tool_calls") or delta.get("function_call"))


def _chunk(rid: str, created: int, model: str, delta, finish_reason, chat: bool, stop: str | None = None) -> dict:
    """One streamed chunk; the last one (a finish_reason) says which stop string ended the text, as vLLM's
    `stop_reason` does (/v1/messages answers it as stop_sequence)."""
    choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": delta, "logprobs": None}
    choice["finish_reason"] = finish_reason
    if finish_reason is not None:
        choice["stop_reason"] = stop
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice]}
