"""Accounting on the real stores: exact usage, a ledger that loses nothing, limits that hold across replicas."""
import concurrent.futures as cf
import math
import os
import re
import signal
import subprocess
import time

import httpx
import psycopg2
import pytest

from conftest import GRAPHS, bootstrap_key, launch
from scaigrid.functions.accounting.service import duration
from scaigrid.runtime.testing import SCAIGRID

PRICE = {"prompt": 1000, "completion": 2000}  # micro-units per 1K tokens (tests/graphs/accounting.yaml)


def cost(prompt: int, completion: int) -> int:
    return math.ceil((prompt * PRICE["prompt"] + completion * PRICE["completion"]) / 1000)


class Consumer:
    """The ledger consumer (`scaigrid run accounting`), started and killed by the test."""

    def __init__(self, graph):
        self.graph = graph
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([*SCAIGRID, "run", "accounting", "--graph", str(GRAPHS / "accounting.yaml")],
                                     env=self.graph.env, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def kill(self):
        """SIGKILL the supervisor and its replica together: nothing gets to finish cleanly."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def acct(database_url, tmp_path_factory):
    admin_key = bootstrap_key(database_url)
    graph = launch("accounting.yaml", tmp_path_factory.mktemp("accounting"),
                   env={"SCAIGRID_DATABASE_URL": database_url})
    graph.database_url = database_url
    graph.admin = {"Authorization": f"Bearer {admin_key}"}
    graph.consumer = Consumer(graph)
    graph.consumer.start()
    yield graph
    graph.consumer.kill()
    graph.stop()


def new_tenant(acct, name: str, role: str = "member") -> dict:
    tenant = httpx.post(acct.base_url + "/api/v1/tenants", json={"name": name}, headers=acct.admin).json()
    key = httpx.post(f"{acct.base_url}/api/v1/tenants/{tenant['id']}/keys", json={"name": "k", "role": role},
                     headers=acct.admin).json()
    return {"tenant": tenant, "key": key, "headers": {"Authorization": f"Bearer {key['key']}"}}


def meter(acct, who, prompt=5, completion=7, max_tokens=None, **extra):
    body = {"model": "metered", "prompt_tokens": prompt, "completion_tokens": completion,
            "max_tokens": max_tokens or completion, **extra}
    with httpx.Client() as client:  # a fresh connection: spread over both gateway replicas
        return client.post(acct.base_url + "/v1/meter", json=body, headers=who["headers"], timeout=30)


def ledger(acct, key_id: str) -> tuple[int, int, int]:
    """(rows, rows in the rollup, cost in the rollup) for one key."""
    with psycopg2.connect(acct.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM usage_ledger WHERE key_id = %s", (key_id,))
        rows = cur.fetchone()[0]
        cur.execute("SELECT coalesce(sum(requests), 0), coalesce(sum(cost_micros), 0) FROM usage_daily "
                    "WHERE key_id = %s", (key_id,))
        rolled, spent = cur.fetchone()
    return rows, int(rolled), int(spent)


def wait_for_rows(acct, key_id: str, expect: int, timeout: float = 30) -> tuple[int, int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = ledger(acct, key_id)
        if got[0] >= expect:
            return got
        time.sleep(0.1)
    return ledger(acct, key_id)


def test_usage_is_exact_and_reported(acct):
    who = new_tenant(acct, "exact")
    sizes = [(3, 4), (10, 1), (0, 9), (7, 7), (1, 0)]
    for prompt, completion in sizes:
        r = meter(acct, who, prompt, completion)
        assert r.status_code == 200, r.text
    rows, rolled, spent = wait_for_rows(acct, who["key"]["id"], len(sizes))
    assert rows == rolled == len(sizes)
    assert spent == sum(cost(p, c) for p, c in sizes)
    report = httpx.get(acct.base_url + "/api/v1/usage", params={"group_by": "model,day"}, headers=who["headers"])
    assert report.status_code == 200, report.text
    (row,) = report.json()["data"]
    assert row["model"] == "metered" and row["requests"] == len(sizes)
    assert row["prompt_tokens"] == sum(p for p, _ in sizes) and row["completion_tokens"] == sum(c for _, c in sizes)
    assert row["cost_micros"] == spent
    # reservations were reconciled to the real cost
    limits = httpx.get(f"{acct.base_url}/api/v1/keys/{who['key']['id']}/limits", headers=acct.admin).json()
    assert limits["spent_today_micros"] == spent


def test_reservation_is_reconciled_down_to_the_real_cost(acct):
    who = new_tenant(acct, "reconcile")
    r = meter(acct, who, prompt=2, completion=3, max_tokens=500)  # reserves 500 completion tokens' worth
    assert r.status_code == 200
    wait_for_rows(acct, who["key"]["id"], 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        limits = httpx.get(f"{acct.base_url}/api/v1/keys/{who['key']['id']}/limits", headers=acct.admin).json()
        if limits["spent_today_micros"] == cost(2, 3):
            break
        time.sleep(0.1)
    assert limits["spent_today_micros"] == cost(2, 3)


def test_streamed_usage_is_billed_even_when_the_client_leaves(acct):
    who = new_tenant(acct, "streamer")
    body = {"model": "metered", "stream": True, "prompt_tokens": 4, "completion_tokens": 200, "max_tokens": 200,
            "interval": 0.03}
    got = 0
    with httpx.stream("POST", acct.base_url + "/v1/meter", json=body, headers=who["headers"], timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                got += 1
                if got == 5:
                    break  # the client leaves
    wait_for_rows(acct, who["key"]["id"], 1)
    with psycopg2.connect(acct.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT prompt_tokens, completion_tokens, cost_micros FROM usage_ledger WHERE key_id = %s",
                    (who["key"]["id"],))
        prompt, completion, spent = cur.fetchone()
    assert prompt == 4 and 5 <= completion <= 12  # what was generated, not zero and not the 200 asked for
    assert spent == cost(prompt, completion)


def test_consumer_down_loses_nothing(acct):
    who = new_tenant(acct, "outage")
    acct.consumer.kill()
    try:
        for _ in range(40):  # admission is inline and needs only Redis: serving goes on
            assert meter(acct, who).status_code == 200
        time.sleep(1)
        assert ledger(acct, who["key"]["id"])[0] == 0
    finally:
        acct.consumer.start()
    rows, rolled, spent = wait_for_rows(acct, who["key"]["id"], 40)
    time.sleep(1)  # nothing more may trickle in
    assert ledger(acct, who["key"]["id"]) == (40, 40, 40 * cost(5, 7))


def test_consumer_killed_mid_batch_redelivers_without_doubles(acct):
    who = new_tenant(acct, "crash")
    acct.consumer.kill()
    with cf.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: meter(acct, who).status_code, range(1200)))
    assert statuses.count(200) == 1200
    acct.consumer.start()
    deadline = time.monotonic() + 30
    while ledger(acct, who["key"]["id"])[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    acct.consumer.kill()  # in the middle of ingesting
    partial = ledger(acct, who["key"]["id"])[0]
    assert 0 < partial < 1200, f"the kill should land mid-ingestion (had {partial})"
    acct.consumer.start()
    assert wait_for_rows(acct, who["key"]["id"], 1200)[0] == 1200
    time.sleep(1)
    assert ledger(acct, who["key"]["id"]) == (1200, 1200, 1200 * cost(5, 7))


def test_budget_holds_across_two_gateway_replicas(acct):
    who = new_tenant(acct, "budget")
    per_request = cost(0, 10)  # the meter route's prompt estimate is 0 bytes; max_tokens = completion = 10
    budget = 10 * per_request
    r = httpx.put(f"{acct.base_url}/api/v1/keys/{who['key']['id']}/limits",
                  json={"daily_budget_micros": budget}, headers=acct.admin)
    assert r.status_code == 200 and r.json()["daily_budget_micros"] == budget
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: meter(acct, who, prompt=0, completion=10, sleep=0.05), range(40)))
    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(admitted) + len(refused) == 40
    assert 10 <= len(admitted) <= 11  # never more than one request past the budget
    assert refused[0].json()["error"]["code"] == "daily_budget_exceeded"
    assert int(refused[0].headers["retry-after"]) > 0
    pids = {d["pid"] for d in acct.log_lines() if d.get("msg") == "request" and d.get("route") == "meter"}
    assert len(pids) == 2  # both gateway replicas took part


def test_the_reservation_is_sized_by_the_one_limit_the_door_derived(acct):
    """admit reads the request's effective max_tokens, set at the door: max_completion_tokens (OpenAI's newer name)
    when both are sent. With the consumer down nothing is reconciled, so the budget sees each reservation as made."""
    small, large = new_tenant(acct, "one-limit-small"), new_tenant(acct, "one-limit-large")
    for who in (small, large):
        r = httpx.put(f"{acct.base_url}/api/v1/keys/{who['key']['id']}/limits",
                      json={"daily_budget_micros": cost(0, 100)}, headers=acct.admin)
        assert r.status_code == 200
    acct.consumer.kill()
    try:
        # 50 tokens' worth each, not 500: two fit a budget of 100 tokens, the third finds it used up
        asks = [meter(acct, small, prompt=0, completion=1, max_tokens=500, max_completion_tokens=50) for _ in range(3)]
        assert [a.status_code for a in asks] == [200, 200, 429]
        # 500 tokens' worth, not 5: the first uses the whole budget up
        asks = [meter(acct, large, prompt=0, completion=1, max_tokens=5, max_completion_tokens=500) for _ in range(2)]
        assert [a.status_code for a in asks] == [200, 429]
        assert asks[1].json()["error"]["code"] == "daily_budget_exceeded"
    finally:
        acct.consumer.start()


def test_rpm_holds_across_replicas_with_headers(acct):
    who = new_tenant(acct, "rpm")
    r = httpx.put(f"{acct.base_url}/api/v1/tenants/{who['tenant']['id']}/limits", json={"rpm": 15},
                  headers=acct.admin)
    assert r.status_code == 200
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: meter(acct, who), range(40)))
    ok = [a for a in answers if a.status_code == 200]
    limited = [a for a in answers if a.status_code == 429]
    assert len(ok) == 15 and len(limited) == 25
    assert {a.headers["x-ratelimit-limit-requests"] for a in ok} == {"15"}
    assert sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in ok) == list(range(15))
    err = limited[0].json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rpm_exceeded" and "tenant" in err["message"]
    assert 0 < int(limited[0].headers["retry-after"]) <= 60
    # a 429 says the limit too: none left, whole again when the retry may come
    assert all(a.headers["x-ratelimit-limit-requests"] == "15" and a.headers["x-ratelimit-remaining-requests"] == "0"
               and a.headers["x-ratelimit-reset-requests"] == duration(int(a.headers["retry-after"]) * 1000)
               for a in limited)
    # an admitted answer's reset: when the window's oldest request leaves it, within the minute
    assert all(re.fullmatch(r"(1m0s|[1-5]?\d(\.\d+)?s|\d+ms)", a.headers["x-ratelimit-reset-requests"]) for a in ok)


def test_usage_api_is_tenant_scoped(acct):
    a = new_tenant(acct, "scope-a", role="tenant-admin")
    b = new_tenant(acct, "scope-b", role="tenant-admin")
    assert meter(acct, a).status_code == 200 and meter(acct, b).status_code == 200
    wait_for_rows(acct, a["key"]["id"], 1)
    wait_for_rows(acct, b["key"]["id"], 1)
    mine = httpx.get(acct.base_url + "/api/v1/usage", params={"group_by": "tenant"}, headers=a["headers"]).json()
    assert [row["tenant"] for row in mine["data"]] == [a["tenant"]["id"]]
    other = httpx.get(acct.base_url + "/api/v1/usage", params={"tenant_id": b["tenant"]["id"]},
                      headers=a["headers"])
    assert other.status_code == 404
    everyone = httpx.get(acct.base_url + "/api/v1/usage", params={"group_by": "tenant"}, headers=acct.admin).json()
    assert {a["tenant"]["id"], b["tenant"]["id"]} <= {row["tenant"] for row in everyone["data"]}
    bad = httpx.get(acct.base_url + "/api/v1/usage", params={"group_by": "planet"}, headers=acct.admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
    member_limits = httpx.put(f"{acct.base_url}/api/v1/tenants/{a['tenant']['id']}/limits", json={"rpm": 1},
                              headers=a["headers"])
    assert member_limits.status_code == 403  # tenants do not raise their own ceiling


def test_ledger_is_append_only_and_metrics_count_it(acct):
    with psycopg2.connect(acct.database_url) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.Error, match="append-only"):
            cur.execute("UPDATE usage_ledger SET cost_micros = 0")
    text = httpx.get(acct.base_url + "/metrics").text
    assert 'scaigrid_tokens_total{kind="completion",model="metered"' in text
    assert "scaigrid_spend_micros_total" in text


def test_a_poison_envelope_is_dead_lettered_and_the_rest_go_through(acct):
    """An envelope the ledger cannot take must not hold the queue, nor be dropped."""
    from kombu import Connection

    from scaigrid.runtime.batch import DEAD_LETTER
    from scaigrid.runtime.service import after_queue

    who = new_tenant(acct, "poison")
    queue = after_queue("accounting.record")
    poison = {"id": "req_poison_1", "route": "meter", "request": {"model": "metered"}, "context": {},
              "principal": {"key_id": who["key"]["id"], "tenant_id": who["tenant"]["id"]},
              "usage": {"prompt_tokens": "lots"}, "error": None}
    with Connection(acct.env["SCAIGRID_AMQP_URI"]) as conn:
        conn.Producer(serializer="msgpack").publish(poison, exchange=queue.exchange, routing_key=queue.routing_key,
                                                    delivery_mode=2, declare=[queue])
    for _ in range(5):
        assert meter(acct, who).status_code == 200
    assert wait_for_rows(acct, who["key"]["id"], 5)[0] == 5
    with Connection(acct.env["SCAIGRID_AMQP_URI"]) as conn:
        deadline = time.monotonic() + 10
        message = None
        while message is None and time.monotonic() < deadline:
            message = DEAD_LETTER(conn.channel()).get(no_ack=True, accept=["msgpack"])
            time.sleep(0.1)
    assert message is not None and message.payload["id"] == "req_poison_1"
    assert "lots" in message.headers["x-scaigrid-error"]
    assert message.headers["x-scaigrid-queue"] == queue.name
