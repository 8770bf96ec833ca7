"""onnxruntime sessions for the backends: CUDA when this onnxruntime build has it, else CPU; the provider in use.

onnxruntime-gpu imports and runs without a GPU, falling back to the CPU provider; the provider that a session
really uses is `session.get_providers()[0]`, and that (not what we asked for) is what we report and what picks the
variant: the int4/int8 graphs are built for the CPU kernels, fp32 is the one the CUDA provider runs whole.
"""
from __future__ import annotations

import os

import onnxruntime as ort

from . import manifest as manifest_file

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [CUDA, CPU] if CUDA in available else [CPU]


def open_session(path: str | os.PathLike, providers: list[str] | None = None,
                 threads: int | None = None) -> tuple[ort.InferenceSession, str]:
    """A session on `path` and the provider it runs on. threads: intra-op threads (None: onnxruntime's default,
    one per physical core)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=providers or default_providers())
    return session, session.get_providers()[0]


def open_variant(model_dir: str | os.PathLike, data: dict, variant: str, providers: list[str] | None,
                 threads: int | None) -> tuple[ort.InferenceSession, str, str]:
    """Open the model's `variant` ('auto': the manifest's default for the provider in use) -> session, provider,
    variant."""
    providers = providers or default_providers()
    defaults = data.get("default_variant", {})
    wanted = variant
    if variant == "auto":
        wanted = defaults.get("cuda" if providers[0] == CUDA else "cpu") or next(iter(data["variants"]))
    session, provider = open_session(manifest_file.variant_path(model_dir, data, wanted), providers, threads)
    if variant == "auto" and provider == CPU and providers[0] == CUDA and defaults.get("cpu", wanted) != wanted:
        # CUDA was offered but not taken (onnxruntime-gpu without a GPU): use the CPU's variant instead
        wanted = defaults["cpu"]
        session, provider = open_session(manifest_file.variant_path(model_dir, data, wanted), [CPU], threads)
    return session, provider, wanted


def device_of(provider: str) -> str:
    """The device name io_binding wants for tensors that stay with the provider (the KV cache)."""
    return "cuda" if provider == CUDA else "cpu"

