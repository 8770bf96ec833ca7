"""Model backends: the local ONNX models (chat and embeddings) and how `scaigrid models prepare` builds them.

Serving imports only onnxruntime, tokenizers and numpy (onnx_chat, onnx_embed); building (prepare, gguf_int4) needs
the `export` extra. See docs/models.md.
"""
from .manifest import ModelNotPrepared, model_dir_for, models_dir

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"

__all__ = ["CHAT_MODEL", "EMBED_MODEL", "ModelNotPrepared", "model_dir_for", "models_dir"]
