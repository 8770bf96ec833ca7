"""The hot path as a hostile client tries it: replayed request ids, no key or a bad one, huge bodies, random model
names. Real gateway, real PostgreSQL ledger, real Redis limits (tests/graphs/trust.yaml)."""
import concurrent.futures as cf
import os
import re
import threading
import time
import uuid

import httpx
import psycopg2
import pytest

from conftest import bootstrap_key, launch

RID = re.compile(r"req_[0-9a-f]{32}")


@pytest.fixture(scope="module")
def trust(database_url, tmp_path_factory):
    admin = {"Authorization": f"Bearer {bootstrap_key(database_url)}"}
    graph = launch("trust.yaml", tmp_path_factory.mktemp("trust"), env={"SCAIGRID_DATABASE_URL": database_url})
    graph.database_url = database_url
    graph.admin = admin
    yield graph
    graph.stop()


def tenant_with_keys(graph, name: str) -> dict:
    tenant = httpx.post(graph.base_url + "/api/v1/tenants", json={"name": name}, headers=graph.admin).json()
    keys = {}
    for role in ("tenant-admin", "member"):
        r = httpx.post(f"{graph.base_url}/api/v1/tenants/{tenant['id']}/keys", json={"name": role, "role": role},
                       headers=graph.admin)
        assert r.status_code == 201, r.text
        keys[role] = r.json()
    return {"tenant": tenant, "keys": keys, "member": {"Authorization": f"Bearer {keys['member']['key']}"},
            "admin": {"Authorization": f"Bearer {keys['tenant-admin']['key']}"}}


def ledger_rows(graph, where: str = "TRUE", args: tuple = ()) -> list[tuple]:
    with psycopg2.connect(graph.database_url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT request_id, client_request_id, status, completion_tokens, cost_micros "
                    f"FROM usage_ledger WHERE {where}", args)
        return cur.fetchall()


def wait_rows(graph, expect: int, where: str, args: tuple = (), timeout: float = 20) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = ledger_rows(graph, where, args)
        if len(rows) >= expect:
            return rows
        time.sleep(0.1)
    return ledger_rows(graph, where, args)


def meter(graph, headers: dict, **body) -> httpx.Response:
    return httpx.post(graph.base_url + "/v1/meter", timeout=30, headers=headers,
                      json={"model": "metered", "prompt_tokens": 3, "completion_tokens": 4, **body})


def test_a_replayed_request_id_is_no_key_of_limits_or_billing(trust):
    who = tenant_with_keys(trust, "replay")
    key_id = who["keys"]["member"]["id"]
    r = httpx.put(f"{trust.base_url}/api/v1/keys/{key_id}/limits", json={"rpm": 5}, headers=who["admin"])
    assert r.status_code == 200, r.text  # the key's tenant admin sets it, as before
    replayed = f"replay-{uuid.uuid4().hex[:8]}"
    answers = [meter(trust, {**who["member"], "x-request-id": replayed}) for _ in range(20)]
    assert [a.status_code for a in answers].count(200) == 5
    assert [a.status_code for a in answers].count(429) == 15
    ids = [a.headers["x-request-id"] for a in answers]
    assert all(RID.fullmatch(i) for i in ids) and len(set(ids)) == 20  # ours, one per request
    assert all(a.headers["x-client-request-id"] == replayed for a in answers)
    rows = wait_rows(trust, 20, "key_id = %s", (key_id,))
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(r[1] == replayed for r in rows)  # the caller's id is kept beside ours
    billed = [r for r in rows if r[2] == 200]
    assert len(billed) == 5 and all(r[4] > 0 for r in billed)
    refused = [r for r in rows if r[2] != 200]
    assert len(refused) == 15 and all(r[2] == 429 and r[4] == 0 for r in refused)


def read_sse(response) -> list[dict]:
    import json
    return [json.loads(line[6:]) for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_streams_with_one_client_id_get_their_own_tokens_and_cannot_cancel_each_other(trust):
    who = tenant_with_keys(trust, "streams")
    shared = {**who["member"], "x-request-id": "same-id-for-both"}
    results: dict[str, object] = {}

    def full():
        with httpx.stream("POST", trust.base_url + "/v1/meter", headers=shared, timeout=30,
                          json={"model": "metered", "completion_tokens": 30, "interval": 0.02, "stream": True}) as r:
            results["full_id"] = r.headers["x-request-id"]
            results["full"] = read_sse(r)

    def leaver():
        with httpx.stream("POST", trust.base_url + "/v1/meter", headers=shared, timeout=30,
                          json={"model": "metered", "completion_tokens": 30, "interval": 0.02, "stream": True}) as r:
            results["left_id"] = r.headers["x-request-id"]
            got = 0
            for line in r.iter_lines():
                got += line.startswith("data: ")
                if got == 5:
                    break  # hangs up: cancels its own generation, nobody else's

    threads = [threading.Thread(target=full), threading.Thread(target=leaver)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [c["token"] for c in results["full"]] == list(range(30))  # all of its own, none of the other's
    rows = {r[0]: r for r in wait_rows(trust, 2, "key_id = %s", (who["keys"]["member"]["id"],))}
    assert rows[results["full_id"]][3] == 30
    assert 5 <= rows[results["left_id"]][3] < 30  # stopped early, billed for what was made


def series(graph) -> set[str]:
    """Every metric series on /metrics (name and labels, no value)."""
    text = httpx.get(graph.base_url + "/metrics").text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_unauthenticated_requests_write_nothing_and_add_no_series(trust):
    before_rows = len(ledger_rows(trust))
    for headers in ({}, {"Authorization": "Bearer sg-nope"}):  # the first of each kind may add its series
        assert meter(trust, headers).status_code == 401
    time.sleep(1)
    known = series(trust)

    def refused(i: int) -> int:
        headers = {"Authorization": f"Bearer sg-{uuid.uuid4().hex}"} if i % 2 else {}
        return meter(trust, headers, model=f"model-{uuid.uuid4().hex}").status_code

    with cf.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(refused, range(1000))) == {401}
    time.sleep(2)  # what would have been recorded travels by event
    assert len(ledger_rows(trust)) == before_rows
    assert series(trust) == known


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_bodies_are_unread_before_auth_and_never_buffered_past_the_limit(trust):
    who = tenant_with_keys(trust, "bodies")
    (gateway,) = trust.replica_pids("gateway")
    huge = b'{"model": "metered", "pad": "' + b"x" * (60 * 2**20) + b'"}'
    meter(trust, who["member"])  # warm: the first request of a process allocates what every request reuses
    before = rss_kib(gateway)

    def chunked():
        for i in range(0, len(huge), 2**20):
            yield huge[i:i + 2**20]

    bad = {"Authorization": "Bearer sg-bad", "Content-Type": "application/json"}
    good = {**who["member"], "Content-Type": "application/json"}
    for headers, content, status in ((bad, huge, 401), (good, huge, 413), (bad, chunked(), 401),
                                     (good, chunked(), 413)):
        r = httpx.post(trust.base_url + "/v1/meter", content=content, headers=headers, timeout=60)
        assert r.status_code == status, r.text
        assert r.json()["error"]["type"] in ("authentication_error", "invalid_request_error")
    grown_mib = (rss_kib(gateway) - before) / 1024
    assert grown_mib < 10, f"the gateway grew by {grown_mib:.1f} MiB"
    assert meter(trust, good).status_code == 200  # the connection handling is intact afterwards
    # the native API's default limit (1 MiB) holds too, also without Content-Length
    r = httpx.post(trust.base_url + "/api/v1/tenants", content=chunked(), headers={**trust.admin}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
