"""Accounting's pure logic: OpenAI's x-ratelimit-* headers from a verdict, the 429 and 503 it raises, and the
pricing arithmetic (integer micro-units, rounded up once; the token estimate reserved before a request runs)."""
import json

import pytest

from scaigrid.adapters.cache.limiter import Verdict
from scaigrid.functions.accounting.pricing import DEFAULT_MAX_TOKENS, cost_of, estimate, registry
from scaigrid.functions.accounting.service import duration, ratelimit_headers, refusal, unavailable
from scaigrid.functions.gateway.http_api.responses import error_response

NO_LIMIT = -1


# x-ratelimit-* headers -----------------------------------------------------------------------------------------

def test_no_usage_or_no_limit_set_means_no_headers():
    assert ratelimit_headers(Verdict(True)) == {}
    usage = [[NO_LIMIT, 4, NO_LIMIT, 90, 60_000, 60_000], [NO_LIMIT, 9, NO_LIMIT, 900, 60_000, 60_000]]
    assert ratelimit_headers(Verdict(True, usage=usage)) == {}


def test_the_scope_with_less_left_is_the_one_reported():
    # key: 10 rpm, 3 used (7 left), its oldest leaves in 12 s; tenant: 100 rpm, 95 used (5 left), oldest in 870 ms
    headers = ratelimit_headers(Verdict(True, usage=[[10, 3, NO_LIMIT, 0, 12_000, 60_000],
                                                     [100, 95, NO_LIMIT, 0, 870, 60_000]]))
    assert headers == {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "4",
                       "x-ratelimit-reset-requests": "870ms"}


def test_requests_and_tokens_are_picked_apart():
    # the key is tighter on requests, the tenant on tokens
    headers = ratelimit_headers(Verdict(True, usage=[[5, 1, 1000, 10, 30_500, 59_000],
                                                     [50, 30, 2000, 1990, 1_000, 2_250]]))
    assert headers["x-ratelimit-limit-requests"] == "5" and headers["x-ratelimit-remaining-requests"] == "3"
    assert headers["x-ratelimit-reset-requests"] == "30.5s"
    assert headers["x-ratelimit-limit-tokens"] == "2000"  # remaining-tokens: see test_accounting_worker
    assert headers["x-ratelimit-reset-tokens"] == "2.25s"


def test_first_request_of_a_window_and_an_overdrawn_one():
    # the first request of a window is its oldest: the window is whole again a minute from now
    first = ratelimit_headers(Verdict(True, usage=[[3, 0, NO_LIMIT, 0, 60_000, 60_000],
                                                   [NO_LIMIT, 0, NO_LIMIT, 0, 60_000, 60_000]]))
    assert first["x-ratelimit-remaining-requests"] == "2" and first["x-ratelimit-reset-requests"] == "1m0s"
    # past the limit (a top-up ended past it): never a negative number
    over = ratelimit_headers(Verdict(True, usage=[[NO_LIMIT, 0, 100, 250, 60_000, 5_000],
                                                  [NO_LIMIT, 0, NO_LIMIT, 0, 60_000, 60_000]]))
    assert over["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize("name, kind", [("rpm", "requests"), ("tpm", "tokens")])
def test_a_rate_limit_refusal_says_that_limit_is_spent_and_when_it_frees(name, kind):
    headers = ratelimit_headers(Verdict(False, scope="key", limit_name=name, retry_after_s=17, limit=40))
    assert headers == {f"x-ratelimit-limit-{kind}": "40", f"x-ratelimit-remaining-{kind}": "0",
                       f"x-ratelimit-reset-{kind}": "17s"}


def test_a_budget_refusal_is_no_rate_limit():
    assert ratelimit_headers(Verdict(False, scope="tenant", limit_name="daily_budget", retry_after_s=3600)) == {}


@pytest.mark.parametrize("ms, text", [(0, "0ms"), (870, "870ms"), (1000, "1s"), (12_500, "12.5s"),
                                      (60_000, "1m0s"), (90_500, "1m30.5s"), (-5, "0ms")])
def test_durations_in_openais_form(ms, text):
    assert duration(ms) == text


# refusals -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, words", [("rpm", "requests per minute"), ("tpm", "tokens per minute"),
                                         ("daily_budget", "daily budget"), ("monthly_budget", "monthly budget")])
def test_refusal_names_whose_limit_which_and_when(name, words):
    exc = refusal(Verdict(False, scope="tenant", limit_name=name, retry_after_s=17, limit=40))
    assert exc.status == 429 and exc.code == f"{name}_exceeded"
    assert exc.message.startswith(f"the tenant's {words} (40) is used up") and "retry in 17s" in exc.message
    response = error_response(exc)
    assert response.headers["Retry-After"] == "17"
    assert json.loads(response.get_data())["error"]["type"] == "rate_limit_error"


def test_unavailable_says_why_and_asks_for_a_retry():
    down, reloading = unavailable("redis_down"), unavailable("not_loaded")
    assert down.status == reloading.status == 503
    assert down.code == reloading.code == "limits_unavailable" and down.details == {"retry_after": 1}
    assert "Redis is unreachable" in down.message and "being reloaded" in reloading.message


# pricing ------------------------------------------------------------------------------------------------------

PRICED = {"id": "m", "price": {"prompt": 150, "completion": 600}}


@pytest.mark.parametrize("prompt, completion, micros", [
    (0, 0, 0), (1, 0, 1), (1000, 0, 150), (1001, 0, 151), (0, 1, 1), (1000, 1000, 750), (7, 3, 3)])
def test_cost_is_rounded_up_once_per_request(prompt, completion, micros):
    # (7 * 150 + 3 * 600) / 1000 = 2.85 -> 3: one rounding, not one per kind (1.05 -> 2, 1.8 -> 2: 4)
    assert cost_of(PRICED, prompt, completion) == micros


def test_unpriced_models_cost_nothing_and_string_prices_count():
    assert cost_of(None, 10_000, 10_000) == 0
    assert cost_of({"id": "free"}, 10_000, 10_000) == 0
    assert cost_of({"price": {"prompt": "150"}}, 1000, 5) == 150


def test_estimate_bounds_the_prompt_by_its_utf8_bytes(envelope):
    messages = [{"role": "user", "content": "héé"}]
    request = envelope("chat", body={"model": "m", "messages": messages, "max_tokens": 10})["request"]
    tokens, cost = estimate(request, PRICED)
    prompt = len(json.dumps(messages, ensure_ascii=False).encode())
    assert prompt == len(json.dumps(messages)) - 2 * len("\\u00e9") + 2 * 2  # é: 2 bytes, not a 6-char escape
    assert (tokens, cost) == (prompt + 10, cost_of(PRICED, prompt, 10))


@pytest.mark.parametrize("route, body, model, completion", [
    ("completions", {"prompt": "x", "max_tokens": 7, "max_completion_tokens": 9}, {}, 9),  # the newer name wins
    ("completions", {"prompt": "x", "max_tokens": 7}, {"max_tokens": 50}, 7),
    ("completions", {"prompt": "x"}, {"max_tokens": 50, "context_length": 300}, 50),  # the model's default
    ("completions", {"prompt": "x"}, {"context_length": 300}, 300),
    ("completions", {"prompt": "x"}, None, DEFAULT_MAX_TOKENS),
    ("embeddings", {"input": ["a", "b"]}, {"kind": "embedding", "max_tokens": 9}, 0),  # generates nothing
])
def test_estimate_bounds_the_answer(envelope, route, body, model, completion):
    request = envelope(route, body={"model": "m", **body})["request"]
    tokens, _ = estimate(request, model)
    assert tokens == len(json.dumps(body.get("prompt", body.get("input"))).encode()) + completion


def test_estimate_of_a_body_that_is_not_an_object():
    assert estimate({"body": ["not", "an", "object"]}, PRICED) == (DEFAULT_MAX_TOKENS, 2458)  # 4096 * 0.6, up
    assert estimate({"body": {"messages": []}}, {"max_tokens": 5}) == (5, 0)


def test_registry_holds_every_function_s_models_with_an_id(priced_graph):
    models = registry(priced_graph)
    assert sorted(models) == ["free-chat", "priced-chat", "priced-embed"]
    assert models["priced-chat"]["price"] == {"prompt": 150, "completion": 600}
