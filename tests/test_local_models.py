"""The product's main job: graph.yaml as shipped, local ONNX models, driven with the official openai SDK.
Streams are shown to be real with the inference side's own clock; a client that leaves stops the generation."""
import asyncio
import base64
import concurrent.futures as cf
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import psycopg2
import pytest

from conftest import bootstrap_key, launch
from scaigrid.runtime.testing import SCAIGRID

REPO = Path(__file__).resolve().parents[1]
CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def product(database_url, tmp_path_factory):
    """The shipped graph with its default local models (prepared once: idempotent, verified by sha256)."""
    subprocess.run([*SCAIGRID, "models", "prepare"], check=True, timeout=3600)
    key = bootstrap_key(database_url)
    graph = launch(REPO / "graph.yaml", tmp_path_factory.mktemp("local"),
                   env={"SCAIGRID_DATABASE_URL": database_url, "SCAIGRID_LOG_LEVEL": "DEBUG"})
    graph.database_url = database_url
    admin = {"Authorization": f"Bearer {key}"}
    tenant = httpx.post(graph.base_url + "/api/v1/tenants", json={"name": "local"}, headers=admin).json()
    graph.key = httpx.post(f"{graph.base_url}/api/v1/tenants/{tenant['id']}/keys", json={"name": "sdk"},
                           headers=admin).json()
    graph.client = openai.OpenAI(base_url=graph.base_url + "/v1", api_key=graph.key["key"], max_retries=0,
                                 timeout=120)
    yield graph
    graph.stop()


ASK = [{"role": "user", "content": "Name three colours."}]


def test_models_report_their_provider(product):
    models = {m.id: m for m in product.client.models.list()}
    assert {CHAT, EMBED} <= set(models)
    assert models[CHAT].model_extra["provider"] == "CPUExecutionProvider"


def test_chat_greedy_is_deterministic_with_exact_usage(product):
    a = product.client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=12, temperature=0)
    b = product.client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=12, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content != ""
    assert a.usage.completion_tokens <= 12 and a.usage.prompt_tokens > 5
    assert a.choices[0].finish_reason in ("stop", "length")


def test_seed_repeats_sampling_and_stop_cuts(product):
    runs = [product.client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=16, temperature=0.9,
                                                   seed=7).choices[0].message.content for _ in range(2)]
    assert runs[0] == runs[1]
    full = product.client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    cut_at = text.split()[1] if len(text.split()) > 1 else text[:2]
    stopped = product.client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=16, temperature=0,
                                                     stop=[cut_at])
    assert stopped.choices[0].message.content == text[:text.index(cut_at)]
    assert stopped.choices[0].finish_reason == "stop"


def test_max_completion_tokens_is_the_one_limit_the_model_gets(product):
    """The door turns the client's fields into the one limit the inference step reads: the newer name wins."""
    answer = product.client.chat.completions.create(model=CHAT, messages=ASK, temperature=0, max_tokens=40,
                                                    max_completion_tokens=3)
    assert answer.usage.completion_tokens == 3 and answer.choices[0].finish_reason == "length"


def test_legacy_completions(product):
    answer = product.client.completions.create(model=CHAT, prompt="The sky is", max_tokens=5, temperature=0)
    assert answer.object == "text_completion" and answer.choices[0].text and answer.usage.completion_tokens <= 5


def test_stream_is_real(product):
    received = []
    stream = product.client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=24, temperature=0,
                                                    stream=True, stream_options={"include_usage": True})
    rid = None
    for chunk in stream:
        rid = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(time.time())
        usage = chunk.usage
    assert usage is not None and usage.completion_tokens >= len(received) >= 5
    sent = [d["at"] for d in product.log_lines() if d.get("msg") == "chunk sent" and d.get("request_id") == rid]
    assert len(sent) >= len(received)
    # the inference side's clock: tokens left one by one as each forward pass finished (several ms apart), not
    # as a finished answer cut up (which would leave within a millisecond or two)
    gaps = sorted(b - a for a, b in zip(sent[1:], sent[2:]))
    assert gaps[len(gaps) // 2] > 0.005
    # and the client had its first token well before the last one was even made
    assert received[0] < sent[-1] - 0.05


def test_disconnect_stops_generation_and_usage_is_recorded(product):
    with httpx.stream("POST", product.base_url + "/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {product.key['key']}"},
                      json={"model": CHAT, "messages": [{"role": "user", "content": "Write a long story."}],
                            "max_tokens": 400, "temperature": 0, "stream": True}) as r:
        rid = r.headers["x-request-id"]
        got = 0
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                got += 1
                if got == 5:
                    break
    deadline = time.monotonic() + 30
    row = None
    while row is None and time.monotonic() < deadline:
        with psycopg2.connect(product.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT completion_tokens FROM usage_ledger WHERE request_id = %s", (rid,))
            row = cur.fetchone()
        time.sleep(0.2)
    assert row is not None, "the stopped stream's usage never reached the ledger"
    assert 5 <= row[0] <= 15  # stopped within a few tokens, and billed for them, not for 400 nor for 0


def test_async_sdk_concurrently(product):
    async def main():
        client = openai.AsyncOpenAI(base_url=product.base_url + "/v1", api_key=product.key["key"], max_retries=0,
                                    timeout=120)
        out = await asyncio.gather(*[client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=4)
                                     for _ in range(3)])
        stream = await client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=4, stream=True)
        pieces = [c async for c in stream]
        await client.close()
        return out, pieces
    answers, pieces = asyncio.run(main())
    assert all(a.choices[0].message.content for a in answers) and pieces


def test_embeddings_float_and_base64_agree_and_make_sense(product):
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    floats = product.client.embeddings.create(model=EMBED, input=texts)
    vectors = np.array([d.embedding for d in floats.data])
    assert vectors.shape == (3, 384) and floats.usage.prompt_tokens > 10
    raw = httpx.post(product.base_url + "/v1/embeddings", headers={"Authorization": f"Bearer {product.key['key']}"},
                     json={"model": EMBED, "input": texts, "encoding_format": "base64"}, timeout=60).json()
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in raw["data"]])
    assert np.allclose(decoded, vectors, atol=1e-6)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # the two sentences about cats are the close ones
    single = product.client.embeddings.create(model=EMBED, input="hello")
    assert len(single.data) == 1


def test_concurrent_embeddings_are_batched(product):
    def metric():
        text = httpx.get(product.base_url + "/metrics").text
        line = next((x for x in text.splitlines() if x.startswith(f'scaigrid_batches_total{{name="embed:{EMBED}"')),
                    None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = metric()
    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: product.client.embeddings.create(model=EMBED, input=f"sentence {i}"),
                                range(32)))
    assert all(len(r.data[0].embedding) == 384 for r in results)
    assert metric() - before < 32  # 32 requests, fewer model calls


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"n": 2}, "n"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": -1}, "frequency_penalty"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
])
def test_local_models_refuse_what_they_cannot_serve(product, extra, param):
    r = httpx.post(product.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {product.key['key']}"},
                   json={"model": CHAT, "messages": ASK, "max_tokens": 2, **extra}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert param in r.json()["error"]["message"]


@pytest.mark.parametrize("route, body, param", [
    ("/v1/completions", {"model": CHAT, "prompt": "Hi", "max_tokens": 2, "echo": True}, "echo"),
    ("/v1/completions", {"model": CHAT, "prompt": "Hi", "max_tokens": 2, "suffix": " end"}, "suffix"),
    ("/v1/completions", {"model": CHAT, "prompt": "Hi", "max_tokens": 2, "best_of": 3}, "best_of"),
    ("/v1/embeddings", {"model": EMBED, "input": "Hi", "dimensions": 128}, "dimensions"),
])
def test_local_models_refuse_other_fields_they_cannot_honour(product, route, body, param):
    r = httpx.post(product.base_url + route, headers={"Authorization": f"Bearer {product.key['key']}"}, json=body,
                   timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_local_models_take_the_neutral_values_sdks_send(product):
    """What clients send by default (a penalty of 0, echo false, best_of 1, no tools, the model's own width) asks
    nothing of a local model: served, not refused."""
    chat = product.client.chat.completions.create(
        model=CHAT, messages=ASK, max_tokens=2, presence_penalty=0, frequency_penalty=0.0, tools=[],
        tool_choice="none", response_format={"type": "text"}, logprobs=False)
    assert chat.choices[0].message.content is not None
    text = product.client.completions.create(model=CHAT, prompt="Hi", max_tokens=2, echo=False, best_of=1,
                                             suffix="")
    assert text.usage.completion_tokens >= 1
    vectors = product.client.embeddings.create(model=EMBED, input="Hi", dimensions=384)
    assert len(vectors.data[0].embedding) == 384


def test_errors_in_openai_format(product):
    with pytest.raises(openai.NotFoundError):
        product.client.chat.completions.create(model="no-such-model", messages=ASK)
    with pytest.raises(openai.BadRequestError):
        product.client.chat.completions.create(model=CHAT, messages=ASK, temperature=7)
    with pytest.raises(openai.BadRequestError):
        product.client.embeddings.create(model=CHAT, input="x")  # a chat model is no embedding model
