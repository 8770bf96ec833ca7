"""The local models a function serves (ONNX, from `scaigrid models prepare`), loaded once per process.

Every onnxruntime call goes to a real thread (eventlet.tpool): called directly, one 30 ms forward pass would freeze
every other greenthread of the process. Embedding requests that arrive together share one batch.
"""
from __future__ import annotations

import logging
from typing import Iterator

from eventlet import tpool
from nameko.extensions import DependencyProvider

from scaigrid.runtime.coalesce import DynamicBatcher
from scaigrid.runtime.dependencies import hands_on
from scaigrid.runtime.logs import log

_log = logging.getLogger("scaigrid.local_models")
LOCAL_BACKENDS = ("onnx", "transformers")


class LocalModels:
    def __init__(self, specs: list[dict], models_root: str, batch: dict):
        self.specs = {s["id"]: s for s in specs if s.get("backend") in LOCAL_BACKENDS}
        self.root = models_root
        self.batch = batch
        # both keyed by registry ids only (load() looks the spec up before storing anything): bounded by the
        # registry, never by what requests name
        self.loaded: dict = {}
        self.batchers: dict[str, DynamicBatcher] = {}

    def load(self, model_id: str):
        """The model object, loaded on first use (ModelNotPrepared names the command that fixes it)."""
        model = self.loaded.get(model_id)
        if model is None:
            from scaigrid.adapters.backends import model_dir_for
            from scaigrid.adapters.backends.onnx_chat import OnnxChatModel
            from scaigrid.adapters.backends.onnx_embed import OnnxEmbedModel

            spec = self.specs[model_id]
            path = spec.get("path") or model_dir_for(model_id, self.root)
            if spec["backend"] == "transformers":
                from scaigrid.adapters.backends.torch_chat import TorchChatModel

                model = tpool.execute(TorchChatModel, path, spec.get("threads"))
            else:
                cls = OnnxEmbedModel if spec.get("kind") == "embedding" else OnnxChatModel
                model = tpool.execute(cls, path, spec.get("variant", "auto"), None, spec.get("threads"))
            self.loaded[model_id] = model
            log(_log, logging.INFO, "model loaded", model=model_id, provider=model.provider, variant=model.variant)
        return model

    def provider(self, model_id: str) -> str | None:
        model = self.loaded.get(model_id)
        return model.provider if model is not None else None

    def generate(self, model_id: str, prompt, **params) -> Iterator[str]:
        """Text deltas, each produced in a real thread; `.generation` holds usage and finish_reason."""
        generation = tpool.execute(self.load(model_id).generate, prompt, **params)
        return _Deltas(generation)

    def embed(self, model_id: str, texts: list[str]) -> tuple[list, list[int]]:
        """(vectors, token counts), batched with the other requests that are waiting for this model."""
        batcher = self.batchers.get(model_id)
        if batcher is None:
            model = self.load(model_id)

            def run(batch: list[str]):
                out = model.embed(batch)
                return list(zip(out.vectors, out.token_counts))

            batcher = self.batchers[model_id] = DynamicBatcher(run, int(self.batch.get("max_batch", 32)),
                                                               float(self.batch.get("max_delay_ms", 5)) / 1000,
                                                               name=f"embed:{model_id}")
        pairs = batcher.submit(texts)
        return [v for v, _ in pairs], [c for _, c in pairs]


class _Deltas:
    def __init__(self, generation):
        self.generation = generation

    def __iter__(self):
        return self

    def __next__(self) -> str:
        delta = tpool.execute(_step, self.generation)
        if delta is None:
            raise StopIteration
        return delta

    def close(self) -> None:
        self.generation.close()


def _step(generation) -> str | None:
    try:
        return next(generation)
    except StopIteration:
        return None


class LocalModelProvider(DependencyProvider):
    """Function config: `models` (the registry; entries with backend onnx or transformers are served here),
    `preload` (load them
    at start, default true), `batching: {max_batch, max_delay_ms}` for embeddings."""

    def setup(self):
        config = self.container.config
        fn = config.get("SCAIGRID_FUNCTION_CONFIG", {})
        # a copy that hands work on to its replicas serves no local model itself: it loads none
        specs = [] if hands_on(config) else fn.get("models", [])
        self.models = LocalModels(specs, config["MODELS_DIR"], fn.get("batching", {}))
        # in setup, not start: nameko starts entrypoints only after every setup, so no request (and no readiness
        # probe) finds this replica consuming before its models are in memory
        if fn.get("preload", True):
            for model_id in self.models.specs:
                try:
                    self.models.load(model_id)
                except Exception as exc:  # serving the others beats refusing to start; the error says what to do
                    log(_log, logging.ERROR, "local model not loaded", model=model_id, error=str(exc)[:300])

    def get_dependency(self, worker_ctx):
        return self.models
