"""Put a GGUF's own 4-bit weights, bit for bit, into the int4 ONNX decoder that onnxruntime-genai's builder writes.

Why: the builder re-quantizes the (already dequantized) weights with round-to-nearest, which on SmolLM2 changed the
greedy next token at 15-30% of positions against fp32 (KL ~0.3 nats). The GGUF *is* 4-bit already, so we keep its
exact blocks instead; then the int4 model and llama.cpp compute with the very same weights, and the only difference
left against fp32 is int8 activations (next-token agreement 96-98%, KL ~0.003).

GGUF Q4_1 stores per block of 32 weights a scale d and a minimum m: w = d*q + m, q in 0..15. MatMulNBits (4 bits,
no zero-point input) computes w = d*(q - 8); the remaining m + 8d per block is added as a small correction,
y += blocksum(x) @ (m + 8d)^T: a [K/32 x N] fp32 MatMul, ~2% of the layer's multiply-adds. (MatMulNBits takes a
float zero point, which would be exact too, but onnxruntime runs that 50x slower: no packed kernel.) The tied
lm_head/embedding is Q8_0 (w = d*q, q int8), which is MatMulNBits with bits=8 and its default zero point 128.
Needs numpy, onnx and gguf (the export extra); used by prepare only.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

_PROJ = re.compile(r"/model/layers\.(\d+)/(?:attn|mlp)/(qkv|o|gate|up|down)_proj/")
_GGUF_NAME = {"o": "attn_output", "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}


def _f16(block: np.ndarray, offset: int) -> np.ndarray:
    return np.ascontiguousarray(block[..., offset:offset + 2]).view(np.float16)[..., 0].astype(np.float32)


def q4_1_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GGUF Q4_1 rows ([N, K/32*20] bytes) -> q [N, K/32, 32] in 0..15, d and m [N, K/32]."""
    blocks = raw.reshape(raw.shape[0], -1, 20)
    qs = blocks[..., 4:]
    # ggml packs weight j in the low nibble and weight j+16 in the high nibble of byte j
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    return q, _f16(blocks, 0), _f16(blocks, 2)


def q8_0_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GGUF Q8_0 rows ([N, K/32*34] bytes) -> q [N, K/32, 32] as uint8 (q + 128), d [N, K/32]."""
    blocks = raw.reshape(raw.shape[0], -1, 34)
    q = (np.ascontiguousarray(blocks[..., 2:]).view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return q, _f16(blocks, 0)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """MatMulNBits packs elements 2i (low nibble) and 2i+1 (high nibble) into byte i."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def rope_row_order(rows: int, heads: int) -> np.ndarray:
    """Row order that turns GGUF's q/k rows back into Hugging Face's (what transformers' GGUF loader does)."""
    interleaved = np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)
    return np.argsort(interleaved)


class GgufWeights:
    def __init__(self, path: str | Path, heads: int, kv_heads: int):
        from gguf import GGUFReader

        self.tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
        self.heads, self.kv_heads = heads, kv_heads

    def q4_1(self, name: str, heads: int | None = None):
        tensor = self.tensors[name]
        if tensor.tensor_type.name != "Q4_1":
            raise ValueError(f"{name} is {tensor.tensor_type.name}, expected Q4_1")
        q, d, m = q4_1_blocks(np.asarray(tensor.data))
        if heads:
            order = rope_row_order(q.shape[0], heads)
            q, d, m = q[order], d[order], m[order]
        return q, d, m

    def projection(self, layer: int, kind: str):
        if kind == "qkv":  # the builder fuses q, k and v into one MatMul: rows q, then k, then v
            parts = [self.q4_1(f"blk.{layer}.attn_q.weight", self.heads),
                     self.q4_1(f"blk.{layer}.attn_k.weight", self.kv_heads),
                     self.q4_1(f"blk.{layer}.attn_v.weight")]
            return tuple(np.concatenate(x) for x in zip(*parts))
        return self.q4_1(f"blk.{layer}.{_GGUF_NAME[kind]}.weight")

    def dequantized(self, layer: int, kind: str) -> np.ndarray:
        """The fp32 weight [N, K] (for checks against the Hugging Face checkpoint)."""
        q, d, m = self.projection(layer, kind)
        return (q * d[..., None] + m[..., None]).reshape(q.shape[0], -1)


def apply(model_path: str | Path, gguf_path: str | Path, heads: int, kv_heads: int, edit=None) -> dict:
    """Rewrite the builder's int4 model in place with the GGUF's exact blocks; returns counts for the manifest.

    `edit(model)` runs on the graph before it is saved (one load and save of the ~200 MB model instead of two).
    """
    import onnx
    from onnx import helper, numpy_helper

    model_path = Path(model_path)
    model = onnx.load(str(model_path))
    weights = GgufWeights(gguf_path, heads, kv_heads)
    inits = {init.name: init for init in model.graph.initializer}
    extra, nodes, block_sums = [], [], {}
    counts = {"q4_1": 0, "q8_0": 0}

    def put(name: str, array: np.ndarray) -> None:
        if tuple(inits[name].dims) != array.shape:
            raise ValueError(f"{name}: builder shape {tuple(inits[name].dims)} != GGUF shape {array.shape}")
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), name))

    for node in list(model.graph.node):
        nodes.append(node)
        if node.op_type != "MatMulNBits":
            continue
        if node.name.startswith("/lm_head/"):
            q, d = q8_0_blocks(np.asarray(weights.tensors["token_embd.weight"].data))
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(q, node.input[1]))
            put(node.input[2], d)
            next(a for a in node.attribute if a.name == "bits").i = 8
            counts["q8_0"] += 1
            continue
        match = _PROJ.match(node.name)
        if not match:
            raise ValueError(f"unexpected MatMulNBits node {node.name}")
        q, d, m = weights.projection(int(match.group(1)), match.group(2))
        put(node.input[1], pack_nibbles(q))
        put(node.input[2], d)
        correction = node.input[1] + "_min"
        extra.append(numpy_helper.from_array(np.ascontiguousarray((m + 8 * d).T), correction))
        x = node.input[0]
        if x not in block_sums:  # gate and up read the same input: one block sum serves both
            extra.append(numpy_helper.from_array(np.array([0, 0, q.shape[1], 32], np.int64), x + "_blocks_shape"))
            extra.append(numpy_helper.from_array(np.array([-1], np.int64), x + "_blocks_axis"))
            nodes.append(helper.make_node("Reshape", [x, x + "_blocks_shape"], [x + "_blocks"],
                                          name=node.name + "/BlockReshape"))
            nodes.append(helper.make_node("ReduceSum", [x + "_blocks", x + "_blocks_axis"], [x + "_block_sums"],
                                          name=node.name + "/BlockSum", keepdims=0))
            block_sums[x] = x + "_block_sums"
        y = node.output[0]
        node.output[0] = y + "_q"
        nodes.append(helper.make_node("MatMul", [block_sums[x], correction], [y + "_min"],
                                      name=node.name + "/MinMatMul"))
        nodes.append(helper.make_node("Add", [y + "_q", y + "_min"], [y], name=node.name + "/MinAdd"))
        counts["q4_1"] += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(extra)
    if edit:
        edit(model)
    data = model_path.name + ".data"
    (model_path.parent / data).unlink(missing_ok=True)
    onnx.save(model, str(model_path), save_as_external_data=True, location=data, all_tensors_to_one_file=True)
    return counts
