"""Sentence embeddings on onnxruntime: all-MiniLM-L6-v2, mean pooling + L2 normalisation (as sentence-transformers).

    model = OnnxEmbedModel(model_dir_for("all-minilm-l6-v2"))            # int8 on CPU, fp32 on CUDA
    result = model.embed(["first text", "second text"])
    result.vectors          # float32 [n, 384], unit length: cosine similarity is a dot product
    result.token_counts     # tokens each input was billed for (with [CLS]/[SEP], after truncation)

Plain synchronous code: in an eventlet process call `embed` through `eventlet.tpool.execute` (tokenising a big batch
and the onnxruntime run are long C calls that would stop the hub). Serving needs onnxruntime, tokenizers and numpy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from . import manifest as manifest_file
from .ort_session import open_variant


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [n, dimensions], L2-normalised
    token_counts: list[int]

    @property
    def prompt_tokens(self) -> int:
        return sum(self.token_counts)


class InputTooLong(ValueError):
    """An input is longer than the model's window and truncate=False was asked for."""


class OnnxEmbedModel:
    """A prepared embedding model folder (see prepare.py) on onnxruntime.

    variant: 'auto' (the manifest's pick for the provider in use: int8 on CPU, fp32 on CUDA), 'fp32' or 'int8'.
    providers / threads: as for OnnxChatModel.
    """

    def __init__(self, model_dir: str | os.PathLike, variant: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None, manifest_data: dict | None = None):
        data = manifest_data or manifest_file.read(model_dir)
        self.model_dir, self.id = str(model_dir), data.get("id", os.path.basename(str(model_dir)))
        info = data["embedding"]
        self.dimensions, self.max_length = int(info["dimensions"]), int(info["max_length"])
        if info.get("pooling", "mean") != "mean":
            raise ValueError(f"{model_dir}: pooling {info['pooling']!r} is not supported")
        self.normalize = bool(info.get("normalize", True))
        self.session, self.provider, self.variant = open_variant(model_dir, data, variant, providers, threads)
        self._inputs = {i.name for i in self.session.get_inputs()}
        path = os.path.join(model_dir, "tokenizer.json")
        # two tokenizers: one that truncates to the window (keeping [SEP] last, as sentence-transformers does) and
        # one that does not (to refuse long inputs when asked); both unpadded: we pad per batch
        self.tokenizer, self._truncating = Tokenizer.from_file(path), Tokenizer.from_file(path)
        for tokenizer in (self.tokenizer, self._truncating):
            tokenizer.no_padding()
            tokenizer.no_truncation()
        self._truncating.enable_truncation(self.max_length)

    def __repr__(self) -> str:
        return f"OnnxEmbedModel({self.id!r}, variant={self.variant!r}, provider={self.provider!r})"

    def _encode(self, texts: list[str], truncate: bool):
        if truncate:
            return self._truncating.encode_batch(list(texts))
        encodings = self.tokenizer.encode_batch(list(texts))
        for index, enc in enumerate(encodings):
            if len(enc.ids) > self.max_length:
                raise InputTooLong(f"input {index} is {len(enc.ids)} tokens; the model reads at most "
                                   f"{self.max_length}")
        return encodings

    def count_tokens(self, texts: list[str], truncate: bool = True) -> list[int]:
        return [len(enc.ids) for enc in self._encode(texts, truncate)]

    def embed(self, texts: list[str] | str, batch_size: int = 32, truncate: bool = True) -> Embeddings:
        """Embed `texts` (order kept). Inputs are sorted by length into batches so that padding stays small."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return Embeddings(np.zeros((0, self.dimensions), np.float32), [])
        encodings = self._encode(texts, truncate)
        counts = [len(enc.ids) for enc in encodings]
        order = np.argsort([-c for c in counts], kind="stable")
        vectors = np.empty((len(texts), self.dimensions), np.float32)
        for start in range(0, len(texts), batch_size):
            chosen = order[start:start + batch_size]
            vectors[chosen] = self._run([encodings[i] for i in chosen])
        return Embeddings(vectors, counts)

    def _run(self, batch) -> np.ndarray:
        width = max(len(enc.ids) for enc in batch)
        ids = np.zeros((len(batch), width), np.int64)
        mask = np.zeros((len(batch), width), np.int64)
        for row, enc in enumerate(batch):
            ids[row, :len(enc.ids)] = enc.ids
            mask[row, :len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]  # [batch, width, dimensions]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self.normalize:
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled
