"""x-ratelimit-* on every answer of a limited key, on every surface (embeddings and streams included), with real
values: the remaining requests count down by one per request, the limits are the key's; the usage report counts
every surface."""
import time

import httpx
import pytest

from surfaces import ASK, LOCAL

NAMES = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
         "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
CALLS = [("/v1/chat/completions", {"model": LOCAL, "max_tokens": 2, "messages": ASK}),
         ("/v1/completions", {"model": LOCAL, "max_tokens": 2, "prompt": "The sky is"}),
         ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": ["hello"]}),
         ("/v1/messages", {"model": LOCAL, "max_tokens": 2, "messages": ASK}),
         ("/v1/responses", {"model": LOCAL, "max_output_tokens": 2, "input": "Hi"})]


@pytest.fixture(scope="module")
def stack(surfaces):
    return surfaces


def test_every_surface_says_the_keys_limits_streamed_or_not(stack):
    key = stack.new_key("headers")
    assert httpx.put(f"{stack.base_url}/api/v1/keys/{key['id']}/limits", json={"rpm": 100, "tpm": 1_000_000},
                     headers=stack.admin).status_code == 200
    headers = {"Authorization": f"Bearer {key['key']}"}
    remaining = []
    for path, body in CALLS:
        for stream in (False, True) if path != "/v1/embeddings" else (False,):
            sent = {**body, "stream": True} if stream else body
            with httpx.stream("POST", stack.base_url + path, json=sent, headers=headers, timeout=120) as r:
                r.read()
                assert r.status_code == 200, (path, stream, r.text)
                missing = [n for n in NAMES if n not in r.headers]
                assert not missing, (path, stream, missing)
                assert r.headers["x-ratelimit-limit-requests"] == "100"
                assert r.headers["x-ratelimit-limit-tokens"] == "1000000"
                assert r.headers["x-ratelimit-reset-requests"].endswith("s")
                remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
    assert remaining == list(range(99, 99 - len(remaining), -1))  # one request each, in the order sent
    # the usage report counts them all, every surface, in its shape (data[].requests), grouped by key
    deadline, row = time.monotonic() + 20, None
    while time.monotonic() < deadline and (row is None or row["requests"] < len(remaining)):
        report = httpx.get(stack.base_url + "/api/v1/usage", params={"group_by": "key"}, headers=stack.admin)
        assert report.status_code == 200, report.text
        row = next((r for r in report.json()["data"] if r["key"] == key["id"]), None)
        time.sleep(0.2)
    assert row is not None and row["requests"] == len(remaining) and row["prompt_tokens"] > 0
