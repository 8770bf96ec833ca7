"""The `transformers` backend: a Hugging Face causal LM on PyTorch, for architectures that do not export to ONNX.

It plugs into the same Generation loop as the ONNX model (sampling, stop strings, exact counts, streaming): only
`forward` and `new_cache` differ. Needs the `export` extra (torch, transformers) where it serves.
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
from tokenizers import Tokenizer

from .chat_template import ChatTemplate
from .onnx_chat import OnnxChatModel


class TorchChatModel(OnnxChatModel):
    """A Hugging Face model folder (config.json, weights, tokenizer.json) on PyTorch, fp32."""

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None):
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise RuntimeError("the transformers backend needs PyTorch and transformers: "
                               "pip install 'scaigrid[export]'") from None
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model_dir, self.id = str(model_dir), os.path.basename(str(model_dir))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).to(device).eval()
        self.device, self.provider, self.variant = device, f"torch:{device}", "fp32"
        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.chat_template = ChatTemplate.from_folder(model_dir, self.tokenizer)
        config = self.model.config
        self.context_length = int(getattr(config, "max_position_embeddings", 2048))
        eos = _generation_eos(model_dir) or config.eos_token_id
        self.eos_token_ids = frozenset(eos if isinstance(eos, list) else [eos])

    def __repr__(self) -> str:
        return f"TorchChatModel({self.id!r}, device={self.device!r})"

    def new_cache(self, capacity: int = 256) -> SimpleNamespace:
        return SimpleNamespace(past=None, length=0)

    def forward(self, cache: SimpleNamespace, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(input_ids=self.torch.tensor([ids], device=self.device), past_key_values=cache.past,
                             use_cache=True)
        cache.past, cache.length = out.past_key_values, cache.length + len(ids)
        return out.logits[0, -1].float().cpu().numpy()


def _generation_eos(model_dir) -> int | list[int] | None:
    path = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f).get("eos_token_id")
    return None
