"""The accounting function alone (nameko's worker_factory) on the real stores: admit/top_up/record against the Redis
limiter's scripts and the PostgreSQL ledger, limits through the native operations, and the reload from the ledger
after Redis lost its counters."""
import time
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import eventlet
import pytest
from nameko.testing.services import worker_factory

from scaigrid.adapters.cache.health import health_for
from scaigrid.adapters.cache.limiter import EPOCH, RELOAD_LOCK, LimiterClient
from scaigrid.functions.accounting.pricing import cost_of, estimate
from scaigrid.functions.accounting.service import Accounting, duration, reload_limits
from scaigrid.runtime.errors import Forbidden, NotFound, RateLimited, Unavailable

PRICE = {"price": {"prompt": 150, "completion": 600}}  # priced-chat in the conftest's graph


def _this_month():
    today = datetime.now(timezone.utc).date()
    return today.replace(day=1), today


@pytest.fixture
def accounting(limiter, ledger, identity, priced_graph):
    return worker_factory(Accounting, limiter=limiter, ledger=ledger, identity=identity,
                          graph=SimpleNamespace(graph=priced_graph))  # Executor hands out a RouteRunner: .graph


@pytest.fixture
def who():
    """A principal of a fresh key and tenant (ids only: admission and the ledger need no identity rows)."""
    return lambda role="member": {"key_id": str(uuid.uuid4()), "tenant_id": str(uuid.uuid4()), "role": role}


@pytest.fixture
def chat(envelope):
    def make(principal, content="hello", max_tokens=10, model="priced-chat"):
        return envelope("chat", principal, body={"model": model, "max_tokens": max_tokens,
                                                 "messages": [{"role": "user", "content": content}]})
    return make


def test_nothing_is_checked_without_a_principal(accounting, chat):
    env = chat(None)
    assert accounting.admit(env) is env and "accounting" not in env["context"]


def test_admit_reserves_the_estimate_for_the_key_and_its_tenant(accounting, limiter, redis_client, who, chat):
    caller = who()
    env = accounting.admit(chat(caller, max_tokens=10))
    tokens, cost = estimate(env["request"], PRICE)
    reservation = env["context"]["accounting"]
    assert (reservation["tokens"], reservation["cost"]) == (tokens, cost) and cost > 0
    assert reservation["epoch"] == redis_client.get(EPOCH).decode()
    assert limiter.spent("key", caller["key_id"]) == limiter.spent("tenant", caller["tenant_id"]) == cost
    assert env["context"]["headers"] == {}  # no limit is set


def test_the_key_s_rpm_refuses_with_a_retry_after(accounting, limiter, who, chat):
    caller = who()
    limiter.set_limits("key", caller["key_id"], {"rpm": 2})
    remaining = [accounting.admit(chat(caller))["context"]["headers"]["x-ratelimit-remaining-requests"]
                 for _ in range(2)]
    assert remaining == ["1", "0"]
    refused_envelope = chat(caller)
    with pytest.raises(RateLimited) as refused:
        accounting.admit(refused_envelope)
    assert refused.value.code == "rpm_exceeded" and "the key's requests per minute (2)" in refused.value.message
    assert 1 <= refused.value.details["retry_after"] <= 60
    headers = refused_envelope["context"]["headers"]  # what the 429 carries
    assert headers == {"x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "0",
                       "x-ratelimit-reset-requests": duration(refused.value.details["retry_after"] * 1000)}


def test_the_reset_is_when_the_window_s_oldest_request_leaves_it(accounting, limiter, who, chat):
    caller = who()
    limiter.set_limits("key", caller["key_id"], {"rpm": 10, "tpm": 100_000})
    first = accounting.admit(chat(caller))["context"]["headers"]
    assert first["x-ratelimit-reset-requests"] == first["x-ratelimit-reset-tokens"] == "1m0s"  # it is the oldest
    time.sleep(0.5)
    second = accounting.admit(chat(caller))["context"]["headers"]
    for kind in ("requests", "tokens"):  # the first one leaves the window ~59.5 s from now
        assert 58.0 <= seconds(second[f"x-ratelimit-reset-{kind}"]) <= 59.6, second


def seconds(duration: str) -> float:
    """OpenAI's `1m0s`, `59.5s`, `870ms` as seconds."""
    minutes, _, rest = duration.rpartition("m") if not duration.endswith("ms") else ("", "", duration)
    if rest.endswith("ms"):
        return float(rest[:-2]) / 1000
    return float(minutes or 0) * 60 + float(rest.rstrip("s") or 0)


@pytest.mark.parametrize("field, code", [("daily_budget_micros", "daily_budget_exceeded"),
                                         ("monthly_budget_micros", "monthly_budget_exceeded")])
def test_a_tenant_budget_stops_every_key_of_the_tenant(accounting, limiter, who, chat, field, code):
    first = who()
    second = {**who(), "tenant_id": first["tenant_id"]}
    _, one_request = estimate(chat(first)["request"], PRICE)
    limiter.set_limits("tenant", first["tenant_id"], {field: one_request})
    accounting.admit(chat(first))  # spent 0 < budget: admitted, and now the budget is used up
    with pytest.raises(RateLimited) as refused:
        accounting.admit(chat(second))
    assert refused.value.code == code and "the tenant's" in refused.value.message
    assert 1 <= refused.value.details["retry_after"] <= 31 * 86400


def test_tpm_counts_reserved_tokens(accounting, limiter, who, chat):
    caller = who()
    limiter.set_limits("key", caller["key_id"], {"tpm": 1})
    accounting.admit(chat(caller))
    with pytest.raises(RateLimited) as refused:
        accounting.admit(chat(caller))
    assert refused.value.code == "tpm_exceeded"


def test_remaining_tokens_count_what_this_request_reserved(accounting, limiter, who, chat):
    caller = who()
    limiter.set_limits("key", caller["key_id"], {"tpm": 10_000})
    env = accounting.admit(chat(caller))
    reserved = env["context"]["accounting"]["tokens"]
    assert env["context"]["headers"]["x-ratelimit-remaining-tokens"] == str(10_000 - reserved)


def test_limits_not_loaded_open_serves_and_reloads(accounting, limiter, redis_client, who, chat):
    redis_client.delete(EPOCH)  # Redis restarted empty
    env = accounting.admit(chat(who()))
    assert env["context"]["accounting"]["epoch"] is None  # served, reserved nowhere
    for _ in range(200):  # the reload runs in a greenthread of its own
        if not limiter.reloading:
            break
        eventlet.sleep(0.02)
    assert limiter.loaded()


def test_limits_not_loaded_closed_refuses_with_503(ledger, identity, priced_graph, redis_url, redis_client, who,
                                                   chat):
    closed = LimiterClient(redis_client, health_for(redis_url), "closed")
    closed.reloading = True  # this process "runs a reload already": the test looks at the refusal alone
    accounting = worker_factory(Accounting, limiter=closed, ledger=ledger, identity=identity,
                                graph=SimpleNamespace(graph=priced_graph))
    redis_client.delete(EPOCH)
    with pytest.raises(Unavailable) as refused:
        accounting.admit(chat(who()))
    assert refused.value.code == "limits_unavailable" and "being reloaded" in refused.value.message


def test_top_up_grows_the_reservation_to_the_prompt_the_model_sees(accounting, limiter, who, chat):
    caller = who()
    env = accounting.admit(chat(caller, content="short"))
    before = dict(env["context"]["accounting"])
    assert accounting.top_up(env)["context"]["accounting"] == before  # the prompt did not grow: no change
    env["request"]["body"]["messages"].insert(0, {"role": "system", "content": "sources " * 200})
    grown = accounting.top_up(env)["context"]["accounting"]
    tokens, cost = estimate(env["request"], PRICE)
    assert (grown["tokens"], grown["cost"]) == (tokens, cost) and cost > before["cost"]
    assert limiter.spent("key", caller["key_id"]) == cost


def test_top_up_is_refused_when_the_limit_was_used_up_meanwhile(accounting, limiter, who, chat):
    caller = who()
    tokens, _ = estimate(chat(caller)["request"], PRICE)
    limiter.set_limits("key", caller["key_id"], {"tpm": 2 * tokens - 1})
    first = accounting.admit(chat(caller))
    accounting.admit(chat(caller))  # used < tpm: admitted, and now past it
    first["request"]["body"]["messages"][0]["content"] = "a much longer prompt " * 20
    with pytest.raises(RateLimited) as refused:
        accounting.top_up(first)
    assert refused.value.code == "tpm_exceeded"


def test_top_up_leaves_a_request_admitted_without_redis_alone(accounting, who, chat):
    env = chat(who())
    env["context"]["accounting"] = {"tokens": 1, "cost": 1, "epoch": None}
    env["request"]["body"]["messages"][0]["content"] = "grown " * 100
    assert accounting.top_up(env)["context"]["accounting"] == {"tokens": 1, "cost": 1, "epoch": None}


def test_record_bills_the_real_usage_once(accounting, limiter, ledger, who, chat):
    caller = who()
    env = accounting.admit(chat(caller, max_tokens=100))
    assert limiter.spent("key", caller["key_id"]) == env["context"]["accounting"]["cost"]
    env["usage"] = {"prompt_tokens": 10, "completion_tokens": 5}
    real = cost_of(PRICE, 10, 5)
    accounting.record([env])
    accounting.record([env])  # redelivered: nothing written or reconciled twice
    assert limiter.spent("key", caller["key_id"]) == limiter.spent("tenant", caller["tenant_id"]) == real
    rows = ledger.report(["key"], *_this_month(), key_id=caller["key_id"])
    assert [(r["requests"], r["prompt_tokens"], r["completion_tokens"], r["cost_micros"]) for r in rows] == \
        [(1, 10, 5, real)]


def test_record_keeps_no_poison_model_id_and_counts_errors(accounting, ledger, who, envelope):
    caller = who()  # a route of a graph's own, with the plain JSON handler: no schema checked the model id
    env = envelope("my_route", caller, body={"model": "bad\x00" + "x" * 300})
    env["error"] = {"status": 429, "code": "rpm_exceeded"}
    accounting.record([env])
    [row] = ledger.report(["model"], *_this_month(), key_id=caller["key_id"])
    assert row["model"] == ("bad" + "x" * 300)[:128] and row["errors"] == 1 and row["cost_micros"] == 0


def test_record_of_a_request_admitted_without_redis_touches_no_counter(accounting, limiter, ledger, who, chat):
    caller = who()
    env = chat(caller)
    env["context"]["accounting"] = {"tokens": 99, "cost": 99, "epoch": None}
    env["usage"] = {"prompt_tokens": 1000, "completion_tokens": 0}
    accounting.record([env])
    assert limiter.spent("key", caller["key_id"]) == 0
    assert ledger.report([], *_this_month(), key_id=caller["key_id"])[0]["cost_micros"] == 150


def test_usage_is_scoped_to_what_the_caller_may_see(accounting, envelope, who, chat):
    member = who()
    colleague = {**who(), "tenant_id": member["tenant_id"]}
    for caller in (member, colleague):
        env = chat(caller)
        env["usage"] = {"prompt_tokens": 1000, "completion_tokens": 0}
        accounting.record([env])
    mine = accounting.usage(envelope("usage", member, query={"group_by": "key", "tenant_id": member["tenant_id"]}))
    assert [r["key"] for r in mine["response"]["data"]] == [member["key_id"]]
    platform = accounting.usage(envelope("usage", who("platform-admin"),
                                         query={"group_by": "key", "tenant_id": member["tenant_id"]}))
    assert sorted(r["key"] for r in platform["response"]["data"]) == sorted([member["key_id"], colleague["key_id"]])
    with pytest.raises(NotFound):
        accounting.usage(envelope("usage", who("tenant-admin"), query={"tenant_id": member["tenant_id"]}))


def test_only_a_platform_admin_sets_a_tenant_s_limits(accounting, caller, envelope, chat, ledger):
    admin = caller("tenant-admin")
    path = {"tenant_id": admin["tenant_id"]}
    with pytest.raises(Forbidden) as refused:
        accounting.set_limits(envelope("tenant_limits_set", admin, body={"rpm": 100}, path=path))
    assert refused.value.code == "platform_admin_only"
    answer = accounting.set_limits(envelope("tenant_limits_set", caller("platform-admin"), body={"rpm": 1}, path=path))
    assert answer["response"]["rpm"] == 1 and answer["response"]["spent_today_micros"] == 0
    assert ledger.get_limits("tenant", admin["tenant_id"])["rpm"] == 1
    accounting.admit(chat(admin))  # Redis holds it as well: the tenant's second request is refused
    with pytest.raises(RateLimited):
        accounting.admit(chat(admin))
    shown = accounting.get_limits(envelope("tenant_limits_get", admin, path=path))["response"]
    assert shown["rpm"] == 1 and shown["spent_today_micros"] > 0


def test_key_limits_are_the_key_s_tenant_admins_to_set(accounting, caller, make_key, identity, envelope):
    admin = caller("tenant-admin")
    _, key = make_key(identity.get_tenant(admin["tenant_id"]))
    answer = accounting.set_limits(envelope("key_limits_set", admin, body={"tpm": 5}, path={"key_id": key["id"]}))
    assert (answer["response"]["scope"], answer["response"]["tpm"]) == ("key", 5)
    with pytest.raises(NotFound) as hidden:  # another tenant's key looks like no key at all
        accounting.get_limits(envelope("key_limits_get", caller("tenant-admin"), path={"key_id": key["id"]}))
    assert hidden.value.code == "key_not_found"


def test_reload_rebuilds_limits_and_spend_from_the_ledger(accounting, limiter, ledger, redis_client, who, chat):
    caller = who()
    ledger.set_limits("tenant", caller["tenant_id"], {"daily_budget_micros": 1_000_000})
    env = chat(caller)
    env["usage"] = {"prompt_tokens": 2000, "completion_tokens": 0}
    accounting.record([env])
    for key in redis_client.scan_iter(f"scaigrid:*:{caller['tenant_id']}*"):
        redis_client.delete(key)  # Redis restarted empty
    redis_client.delete(EPOCH)
    assert reload_limits(ledger, limiter) >= 1
    assert limiter.loaded() and limiter.spent("tenant", caller["tenant_id"]) == 300
    assert redis_client.hget(f"scaigrid:limits:t:{caller['tenant_id']}", "daily_budget_micros") == b"1000000"


def test_one_reload_at_a_time(ledger, limiter, redis_client):
    redis_client.set(RELOAD_LOCK, "another process", ex=60)
    try:
        assert reload_limits(ledger, limiter) == 0
    finally:
        redis_client.delete(RELOAD_LOCK)


def test_sync_copies_every_limit_into_redis(accounting, ledger, redis_client, who):
    caller = who()
    ledger.set_limits("key", caller["key_id"], {"rpm": 7, "tpm": None})
    assert accounting.sync_limits() >= 1
    assert redis_client.hgetall(f"scaigrid:limits:k:{caller['key_id']}") == {b"rpm": b"7"}
