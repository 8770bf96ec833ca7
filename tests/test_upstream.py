"""The `openai` backend against an independent OpenAI-compatible server (llama-cpp-python's, on SmolLM2's GGUF),
through a fault-injecting proxy: retries, timeouts, fallback, a stream cut mid-answer. Driven with the official
openai SDK (sync and async, streamed and not) and raw HTTP for malformed input."""
import asyncio
import json
import os
import socket
import threading
import time
from http.server import ThreadingHTTPServer

import httpx
import openai
import pytest

from receivers import JsonHandler
from conftest import bootstrap_key, launch
from llama_upstream import llama_server

llama_cpp = pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is installed by ./dev.sh")
UPSTREAM_KEY = "sk-upstream-" + "7" * 24


class Faults:
    mode = "pass"       # pass | fail (503) | slow | cut
    fail_times = 0
    slow_s = 0.0
    cut_after = 3
    hits = 0
    seen_auth: list = []
    seen_bodies: list = []


def make_proxy(target: str):
    class Proxy(JsonHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            Faults.hits += 1
            body = self.rfile.read(int(self.headers["Content-Length"]))
            Faults.seen_auth.append(self.headers.get("Authorization"))
            Faults.seen_bodies.append(json.loads(body))
            if Faults.mode == "fail" and Faults.fail_times > 0:
                Faults.fail_times -= 1
                return self._send(503, b'{"error": {"message": "overloaded"}}')
            if Faults.mode == "slow":
                time.sleep(Faults.slow_s)
            with httpx.stream("POST", target + self.path, content=body, timeout=60,
                              headers={"Content-Type": "application/json"}) as r:
                if not json.loads(body).get("stream"):
                    return self._send(r.status_code, r.read())
                self.send_response(r.status_code)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                events = 0
                for line in r.iter_lines():
                    self.wfile.write(line.encode() + b"\n")
                    self.wfile.flush()
                    events += line.startswith("data:")
                    if Faults.mode == "cut" and events >= Faults.cut_after:
                        self.connection.shutdown(socket.SHUT_RDWR)  # mid-answer, no [DONE]
                        return

        def _send(self, status, payload):
            self.send_json(status, payload)

    return Proxy


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstream")
    proxy = graph = None
    with llama_server(tmp) as llama:
        try:
            proxy = ThreadingHTTPServer(("127.0.0.1", 0), make_proxy(llama))
            threading.Thread(target=proxy.serve_forever, daemon=True).start()
            admin = bootstrap_key(database_url)
            graph = launch("upstream.yaml", tmp, env={
                "SCAIGRID_DATABASE_URL": database_url, "SCAIGRID_TEST_LLAMA_URL": llama,
                "SCAIGRID_TEST_PROXY_URL": f"http://127.0.0.1:{proxy.server_port}",
                "SCAIGRID_TEST_UPSTREAM_KEY": UPSTREAM_KEY})
            headers = {"Authorization": f"Bearer {admin}"}
            tenant = httpx.post(graph.base_url + "/api/v1/tenants", json={"name": "llm"}, headers=headers).json()
            graph.key = httpx.post(f"{graph.base_url}/api/v1/tenants/{tenant['id']}/keys", json={"name": "sdk"},
                                   headers=headers).json()["key"]
            graph.client = openai.OpenAI(base_url=graph.base_url + "/v1", api_key=graph.key, max_retries=0,
                                         timeout=60)
            yield graph
        finally:
            if graph is not None:
                graph.stop()
            if proxy is not None:
                proxy.shutdown()


@pytest.fixture(autouse=True)
def reset_faults():
    Faults.mode, Faults.fail_times, Faults.hits = "pass", 0, 0
    Faults.seen_auth, Faults.seen_bodies = [], []


HELLO = [{"role": "user", "content": "Say hello."}]


def test_chat_through_the_upstream(stack):
    answer = stack.client.chat.completions.create(model="llama-direct", messages=HELLO, max_tokens=8,
                                                  temperature=0)
    assert answer.model == "llama-direct" and answer.choices[0].message.content
    assert answer.usage.prompt_tokens > 0 and 0 < answer.usage.completion_tokens <= 8


def test_streamed_with_usage(stack):
    stream = stack.client.chat.completions.create(model="llama-direct", messages=HELLO, max_tokens=8, stream=True,
                                                  temperature=0, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_async_sdk(stack):
    async def main():
        client = openai.AsyncOpenAI(base_url=stack.base_url + "/v1", api_key=stack.key, max_retries=0)
        answers = await asyncio.gather(*[client.chat.completions.create(
            model="llama-direct", messages=HELLO, max_tokens=4) for _ in range(3)])
        await client.close()
        return answers
    assert all(a.choices[0].message.content for a in asyncio.run(main()))


def test_retries_then_succeeds(stack):
    Faults.mode, Faults.fail_times = "fail", 2
    answer = stack.client.chat.completions.create(model="llama-flaky", messages=HELLO, max_tokens=4)
    assert answer.choices[0].message.content and Faults.hits == 3


def test_timeout_falls_back_to_the_next_deployment(stack):
    Faults.mode, Faults.slow_s = "slow", 5
    started = time.monotonic()
    answer = stack.client.chat.completions.create(model="llama-flaky", messages=HELLO, max_tokens=4)
    assert answer.choices[0].message.content
    assert Faults.hits == 3 and time.monotonic() - started < 15  # 3 tries of 1.5 s, then the fallback


def test_stream_cut_mid_answer_is_an_error_event(stack):
    Faults.mode, Faults.cut_after = "cut", 3
    got = []
    with pytest.raises(openai.APIError, match="stream broke"):
        for chunk in stack.client.chat.completions.create(model="llama-cut", messages=HELLO, max_tokens=64,
                                                          stream=True):
            got.append(chunk)
    assert 1 <= len(got) <= 3


def test_upstream_key_is_sent_but_never_logged(stack):
    stack.client.chat.completions.create(model="llama-flaky", messages=HELLO, max_tokens=2)
    assert Faults.seen_auth == [f"Bearer {UPSTREAM_KEY}"]
    assert UPSTREAM_KEY not in stack.log_path.read_text()


def test_fields_pass_through_to_upstreams(stack):
    stack.client.chat.completions.create(model="llama-flaky", messages=HELLO, max_tokens=2, logprobs=True,
                                         extra_body={"repeat_penalty": 1.1})
    sent = Faults.seen_bodies[-1]
    assert sent["logprobs"] is True and sent["repeat_penalty"] == 1.1 and sent["model"] == "llama-flaky"


def test_upstreams_get_the_body_as_sent_not_the_doors_defaults(stack):
    """The door's effective values (one max_tokens, n 1, temperature 1.0, ...) are for the steps: an upstream gets the
    client's fields under the client's names, and none of the gateway's defaults."""
    sent = {"model": "llama-flaky", "messages": HELLO, "max_completion_tokens": 2, "max_tokens": 2, "temperature": 0,
            "stop": ["\n\n"], "repeat_penalty": 1.1}
    r = httpx.post(stack.base_url + "/v1/chat/completions", json=sent, timeout=60,
                   headers={"Authorization": f"Bearer {stack.key}"})
    assert r.status_code == 200, r.text
    assert Faults.seen_bodies[-1] == sent


@pytest.mark.parametrize("body, status, param", [
    ({"model": "llama-direct"}, 400, "messages"),
    ({"model": "llama-direct", "messages": HELLO, "temperature": 5}, 400, "temperature"),
    ({"model": "llama-direct", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ({"model": "nope", "messages": HELLO}, 404, "model"),
])
def test_malformed_bodies(stack, body, status, param):
    r = httpx.post(stack.base_url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {stack.key}"})
    assert r.status_code == status and r.json()["error"]["param"] == param


def test_bad_key_is_401_for_the_sdk(stack):
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="sg-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="llama-direct", messages=HELLO)
    assert os.environ.get("SCAIGRID_TEST_UPSTREAM_KEY") is None


def test_gateway_overhead_header(stack):
    r = httpx.post(stack.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {stack.key}"},
                   json={"model": "llama-direct", "messages": HELLO, "max_tokens": 2}, timeout=60)
    overhead = float(r.headers["x-scaigrid-overhead-ms"])
    model = float(r.headers["server-timing"].split("dur=")[-1].split(";")[0])
    assert 0 < overhead < model  # the model's time is not counted as the gateway's
