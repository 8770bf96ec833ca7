"""The transformers (PyTorch) backend serves the same weights as the ONNX export, with identical greedy tokens."""
import subprocess
from pathlib import Path

import openai
import pytest

from conftest import bootstrap_key, launch
from scaigrid.runtime.settings import Settings
from scaigrid.runtime.testing import SCAIGRID

pytest.importorskip("transformers", reason="the transformers backend needs the export extra (./dev.sh installs it)")


@pytest.fixture(scope="module")
def both(database_url, tmp_path_factory):
    subprocess.run([*SCAIGRID, "models", "prepare"], check=True, timeout=3600)
    models = Path(Settings().models_dir)
    hf = models / ".sources" / "smollm2-135m-instruct-hf"  # the Hugging Face folder prepare converts the GGUF to
    graph = launch("backends.yaml", tmp_path_factory.mktemp("backends"), env={
        "SCAIGRID_DATABASE_URL": database_url, "SCAIGRID_TEST_ONNX_DIR": str(models / "smollm2-135m-instruct"),
        "SCAIGRID_TEST_HF_DIR": str(hf)})
    graph.client = openai.OpenAI(base_url=graph.base_url + "/v1", api_key=bootstrap_key(database_url),
                                 max_retries=0, timeout=120)
    yield graph
    graph.stop()


@pytest.mark.parametrize("question", ["What is the capital of France?", "Write a haiku about the sea."])
def test_identical_greedy_answers(both, question):
    answers = [both.client.chat.completions.create(model=m, messages=[{"role": "user", "content": question}],
                                                   max_tokens=16, temperature=0) for m in ("smollm2-onnx-fp32",
                                                                                           "smollm2-torch")]
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
    assert answers[0].usage.prompt_tokens == answers[1].usage.prompt_tokens


def test_torch_backend_streams_and_reports_itself(both):
    providers = {m.id: m.model_extra["provider"] for m in both.client.models.list()}
    assert providers["smollm2-torch"] == "torch:cpu" and providers["smollm2-onnx-fp32"] == "CPUExecutionProvider"
    chunks = list(both.client.chat.completions.create(model="smollm2-torch", stream=True, max_tokens=6,
                                                      messages=[{"role": "user", "content": "Hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
