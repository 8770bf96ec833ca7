"""The CUDA execution provider path, where a GPU and onnxruntime-gpu exist (`pip install -e '.[gpu]'`).
Skipped with the reason elsewhere: this machine has no GPU."""
import numpy as np
import onnxruntime as ort
import pytest

from scaigrid.adapters.backends import CHAT_MODEL, EMBED_MODEL, model_dir_for

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="no CUDA execution provider here (no GPU, or the cpu extra's onnxruntime)")]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_embeddings_on_cuda_agree_with_cpu():
    from scaigrid.adapters.backends.onnx_embed import OnnxEmbedModel

    texts = ["a cat on a mat", "stock markets fell", "a kitten on a rug"]
    gpu = OnnxEmbedModel(model_dir_for(EMBED_MODEL), "fp32", CUDA)
    cpu = OnnxEmbedModel(model_dir_for(EMBED_MODEL), "fp32", ["CPUExecutionProvider"])
    assert gpu.provider == "CUDAExecutionProvider"
    a, b = gpu.embed(texts).vectors, cpu.embed(texts).vectors
    assert np.min(np.sum(a * b, axis=1)) > 0.999


def test_chat_on_cuda_matches_cpu_greedy():
    from scaigrid.adapters.backends.onnx_chat import OnnxChatModel

    gpu = OnnxChatModel(model_dir_for(CHAT_MODEL), "auto", CUDA)
    cpu = OnnxChatModel(model_dir_for(CHAT_MODEL), "fp32", ["CPUExecutionProvider"])
    assert gpu.provider == "CUDAExecutionProvider" and gpu.variant == "fp32"
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    assert gpu.generate(ask, 12, temperature=0).run().text == cpu.generate(ask, 12, temperature=0).run().text
