"""Chat generation on onnxruntime with a KV cache: SmolLM2, prompted with its own chat template, greedy or sampled, streamed token by token.

    model = OnnxChatModel(model_dir_for("smollm2-135m-instruct"))        # int4 on CPU, fp32 on CUDA
    gen = model.generate(messages, max_tokens=64, temperature=0, stop=["\n\n"])
    for delta in gen:                   # text deltas, as the tokens come
        ...
    gen.finish_reason, gen.usage        # 'stop' | 'length'; exact prompt / completion token counts

Plain synchronous code: every `next(gen)` runs one model step (a long C call). In an eventlet process call it through
`eventlet.tpool.execute(next, gen, None)` so the hub keeps running; onnxruntime releases the GIL while it runs, and
one session serves concurrent generations (each has its own cache). Serving needs onnxruntime, tokenizers and numpy.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from . import manifest as manifest_file
from .chat_template import ChatTemplate
from .ort_session import device_of, open_variant


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _text(content) -> str:
    """OpenAI message content: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if part.get("type", "text") == "text")


class _Detokenizer:
    """Token ids -> text deltas. A token can end inside a UTF-8 character (emoji, CJK: the byte-level BPE splits
    them), so a delta is released only once the decoded text no longer ends in U+FFFD."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            # decode a short window, not the whole completion: O(1) per token
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        return self._decode(self.ids[self.prefix:])[len(self._decode(self.ids[self.prefix:self.read])):]


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string (not yet safe to send)."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def pick(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Next token: argmax at temperature 0, else a sample from softmax(logits / T) cut to the top_p mass."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    probs = np.exp(z)
    probs /= probs.sum()
    if top_p < 1.0:
        # the nucleus is almost always among a few hundred tokens: partition (O(V)) instead of sorting 49k
        k = min(len(probs), 512)
        top = np.argpartition(-probs, k - 1)[:k]
        top = top[np.argsort(-probs[top])]
        mass = np.cumsum(probs[top])
        if mass[-1] < top_p:  # flat distribution: sort everything
            top = np.argsort(-probs)
            mass = np.cumsum(probs[top])
        keep = int(np.searchsorted(mass, top_p)) + 1
        top, mass = top[:keep], mass[:keep]
        return int(top[np.searchsorted(mass, rng.random() * mass[-1], side="right").clip(max=keep - 1)])
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(probs) - 1))


class _Cache:
    """The KV cache of one generation, as onnxruntime values that stay on the provider's device between steps.

    Two layouts. 'grow' (optimum's graph): present = past + new, a fresh buffer every step. 'shared' (the fused
    GroupQueryAttention graph, on CPU): one buffer per layer of `capacity` positions, bound as both past and present,
    which the attention op appends to in place: ~11% faster decoding at 128 tokens, and no per-step copy that grows
    with the context. The buffers double (one copy) when a generation outgrows them.
    """

    def __init__(self, layers: int, shape: tuple[int, ...], device: str, shared: bool, capacity: int):
        self.length, self.shared, self.capacity, self._shape = 0, shared, 0, shape
        if shared:
            self.arrays = [np.zeros(0, np.float32)] * layers
            self.grow(capacity)
        else:
            empty = np.zeros(shape, np.float32)
            self.past = [ort.OrtValue.ortvalue_from_numpy(empty, device, 0) for _ in range(layers)]

    def grow(self, capacity: int) -> None:
        old, kept = self.arrays, self.capacity
        self.arrays = [np.zeros((*self._shape[:2], capacity, self._shape[3]), np.float32) for _ in old]
        for new, previous in zip(self.arrays, old if kept else []):
            new[:, :, :kept] = previous[:, :, :kept]
        # an OrtValue made from a CPU numpy array shares its memory: the attention op writes into self.arrays
        self.past = [ort.OrtValue.ortvalue_from_numpy(array) for array in self.arrays]
        self.capacity = capacity


class Generation:
    """One completion, iterated as text deltas. Attributes after the end: finish_reason ('stop' when an end token or
    a stop string ended it, 'length' when max_tokens or the context did), stop_sequence (which stop string, if one
    did), token_ids, text, usage."""

    def __init__(self, model: OnnxChatModel, prompt_ids: list[int], max_tokens: int | None,
                 temperature: float, top_p: float, stop: list[str] | None, seed: int | None):
        room = model.context_length - len(prompt_ids)
        if not prompt_ids:
            raise ValueError("empty prompt")
        if room < 1:
            raise ValueError(f"prompt is {len(prompt_ids)} tokens; the context holds {model.context_length}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        self.model, self.prompt_ids = model, list(prompt_ids)
        self.max_tokens = min(max_tokens or room, room)
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.stop = [s for s in ([stop] if isinstance(stop, str) else stop or []) if s]
        self.rng = np.random.default_rng(seed)
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.stop_sequence: str | None = None  # the stop string that ended it, if one did
        self._steps = self._run()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._steps)

    def close(self) -> None:
        """Stop early (the client left); finish_reason stays None, usage counts what was made."""
        self._steps.close()

    def run(self) -> Generation:
        """Generate to the end (no streaming); returns self."""
        for _ in self:
            pass
        return self

    @property
    def usage(self) -> Usage:
        return Usage(len(self.prompt_ids), len(self.token_ids))

    def _emit(self, delta: str) -> str:
        self.text += delta
        return delta

    def _run(self) -> Iterator[str]:
        model, detok, held = self.model, _Detokenizer(self.model.tokenizer), ""
        cache = model.new_cache(len(self.prompt_ids) + min(self.max_tokens, 512))
        logits = model.forward(cache, self.prompt_ids)
        while True:
            token = pick(logits, self.temperature, self.top_p, self.rng)
            self.token_ids.append(token)
            if token in model.eos_token_ids:
                self.finish_reason = "stop"
                held += detok.flush()  # bytes of a character the end token cut short, if any
                break
            held += detok.add(token)
            if self.stop:
                hits = [(i, s) for s, i in ((s, held.find(s)) for s in self.stop) if i >= 0]
                if hits:
                    at, self.stop_sequence = min(hits)
                    held = held[:at]
                    self.finish_reason = "stop"
                    break
                safe = len(held) - _held_back(held, self.stop)
                if safe > 0:
                    delta, held = held[:safe], held[safe:]
                    yield self._emit(delta)
            elif held:
                delta, held = held, ""
                yield self._emit(delta)
            if len(self.token_ids) >= self.max_tokens:
                self.finish_reason = "length"
                held += detok.flush()
                break
            logits = model.forward(cache, [token])
        if held:
            yield self._emit(held)


class OnnxChatModel:
    """A prepared chat model folder (see prepare.py) on onnxruntime.

    variant: 'auto' (the manifest's pick for the provider in use: int4 on CPU, fp32 on CUDA), 'fp32' or 'int4'.
    providers: onnxruntime providers to try in order (default: CUDA when available, then CPU).
    threads: intra-op threads (default: onnxruntime's, one per physical core).
    """

    def __init__(self, model_dir: str | os.PathLike, variant: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None, manifest_data: dict | None = None):
        data = manifest_data or manifest_file.read(model_dir)
        self.model_dir, self.id = str(model_dir), data.get("id", os.path.basename(str(model_dir)))
        info = data["chat"]
        self.session, self.provider, self.variant = open_variant(model_dir, data, variant, providers, threads)
        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.chat_template = ChatTemplate.from_folder(model_dir, self.tokenizer)
        self.context_length = int(info["context_length"])
        self.eos_token_ids = frozenset(info["eos_token_ids"])
        names = [i.name for i in self.session.get_inputs()]
        self._past_names = [n for n in names if n.startswith("past_key_values.")]
        self._present_names = [n.replace("past_key_values.", "present.") for n in self._past_names]
        self._has_positions = "position_ids" in names
        self._kv_shape = (1, int(info["num_kv_heads"]), 0, int(info["head_dim"]))
        self._device = device_of(self.provider)
        # the fused graph's GroupQueryAttention appends to a shared buffer in place (CPU only: on CUDA that op
        # wants fp16, and the manifest's CUDA pick is the fp32 optimum graph anyway)
        self._shared_kv = (data["variants"][self.variant].get("kv_cache") == "shared-buffer"
                           and self._device == "cpu")

    def __repr__(self) -> str:
        return f"OnnxChatModel({self.id!r}, variant={self.variant!r}, provider={self.provider!r})"

    # --- text -> ids ------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of a raw prompt (/v1/completions): the client writes the whole prompt, special tokens included,
        so they are read as such; no BOS is added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """The model's own template over `messages`; special-token text inside a message stays text."""
        return self.chat_template.encode([{**m, "content": _text(m.get("content"))} for m in messages])

    def count_tokens(self, messages: list[dict]) -> int:
        """Prompt tokens a chat request will be billed for."""
        return len(self.encode_chat(messages))

    # --- generation -------------------------------------------------------------------------------------------
    def generate(self, prompt: list[dict] | str | list[int], max_tokens: int | None = None,
                 temperature: float = 1.0, top_p: float = 1.0, stop: str | list[str] | None = None,
                 seed: int | None = None) -> Generation:
        """A Generation for chat messages (OpenAI shape), a raw prompt string, or prompt token ids.

        Defaults follow OpenAI's: temperature 1, top_p 1, up to the end of the context. temperature 0 is greedy
        (deterministic); a seed makes sampling repeatable.
        """
        if isinstance(prompt, str):
            ids = self.encode(prompt)
        elif prompt and isinstance(prompt[0], dict):
            ids = self.encode_chat(prompt)
        else:
            ids = [int(i) for i in prompt]
        return Generation(self, ids, max_tokens, temperature, top_p, stop, seed)

    def new_cache(self, capacity: int = 256) -> _Cache:
        """An empty KV cache; `capacity` (positions) sizes the shared buffers, which grow when outgrown."""
        return _Cache(len(self._past_names), self._kv_shape, self._device, self._shared_kv,
                      min(self.context_length, max(capacity, 16)))

    def forward(self, cache: _Cache, ids: list[int]) -> np.ndarray:
        """Run `ids` after what `cache` holds; returns the last position's logits and extends the cache.

        io_binding keeps the cache as onnxruntime values (on the GPU with CUDA): no copy to numpy and back per step.
        """
        total = cache.length + len(ids)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
        if cache.shared:
            if total > cache.capacity:
                cache.grow(min(self.context_length, max(total, 2 * cache.capacity)))
            # the mask spans the whole buffer; its ones say how much of it is filled
            mask = np.zeros((1, cache.capacity), np.int64)
            mask[0, :total] = 1
        else:
            mask = np.ones((1, total), np.int64)
        binding.bind_cpu_input("attention_mask", mask)
        if self._has_positions:
            binding.bind_cpu_input("position_ids", np.arange(cache.length, total, dtype=np.int64)[None])
        for name, value in zip(self._past_names, cache.past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name, value in zip(self._present_names, cache.past):
            if cache.shared:
                binding.bind_ortvalue_output(name, value)
            else:
                binding.bind_output(name, self._device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if not cache.shared:
            cache.past = outputs[1:]
        cache.length = total
        return outputs[0].numpy()[0, -1]

    def next_token_agreement(self, other: OnnxChatModel, ids: list[int], start: int) -> float:
        """Share of positions in ids[start:] where both models' greedy next token is the same (teacher forced)."""
        mine, theirs = self.new_cache(len(ids)), other.new_cache(len(ids))
        a, b = self.forward(mine, ids[:start]), other.forward(theirs, ids[:start])
        same = 0
        for token in ids[start:]:
            same += int(np.argmax(a) == np.argmax(b))
            a, b = self.forward(mine, [token]), other.forward(theirs, [token])
        return same / max(1, len(ids) - start)
